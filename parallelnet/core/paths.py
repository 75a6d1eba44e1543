"""Path I/O on workdirs and outputs: local folders or any URL etils.epath
understands (gs://...), with atomic writes.

An atomic write goes to a temporary name in the same folder and is then
renamed into place, so a reader never sees half a file; where a store has no
rename, epath's rename copies and deletes, which is still all-or-nothing for
a reader of the final name.
"""

import contextlib
import hashlib
import io
import json
import os
import re

from etils import epath


def path(p) -> epath.Path:
  """An epath.Path for a local path or a URL."""
  return epath.Path(p)


def is_url(p) -> bool:
  return '://' in str(p)


def join(*parts) -> str:
  return os.fspath(epath.Path(parts[0]).joinpath(*parts[1:]))


def tmp_name(p) -> str:
  """A temporary name beside `p`, unique to this process."""
  p = epath.Path(p)
  return os.fspath(p.parent / f'.{p.name}.tmp{os.getpid()}')


@contextlib.contextmanager
def atomic_open(p, mode='w'):
  """open(p, mode) that moves a temporary file into place on success and
  removes it on failure. Text mode writes UTF-8 with '\n' line ends."""
  p = epath.Path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  tmp = epath.Path(tmp_name(p))
  try:
    with tmp.open(mode if 'b' in mode else mode + 'b') as raw:
      if 'b' in mode:
        yield raw
      else:  # epath's open takes no encoding/newline arguments.
        with io.TextIOWrapper(raw, encoding='utf-8', newline='') as f:
          yield f
    tmp.replace(p)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text_atomic(p, text: str):
  with atomic_open(p) as f:
    f.write(text)


def write_bytes_atomic(p, data: bytes):
  with atomic_open(p, 'wb') as f:
    f.write(data)


def write_json_atomic(p, obj, **kwargs):
  """JSON with a trailing newline (indent=2 unless given)."""
  kwargs.setdefault('indent', 2)
  write_text_atomic(p, json.dumps(obj, **kwargs) + '\n')


def safe_name(text, *, max_len=60) -> str:
  """A file name for an id: the id itself when it is plain, else a
  sanitised form with a hash suffix, so two distinct ids never share a name."""
  text = str(text)
  if re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9_-]{0,99}', text):
    return text
  clean = re.sub(r'[^A-Za-z0-9_-]+', '_', text)[:max_len].strip('_') or 'id'
  return f'{clean}_{hashlib.sha256(text.encode()).hexdigest()[:10]}'
