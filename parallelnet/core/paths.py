"""Path I/O on workdirs and outputs: local folders or any URL etils.epath
understands (gs://...), with atomic writes.

An atomic write goes to a temporary name in the same folder and is then
renamed into place, so a reader never sees half a file; where a store has no
rename, epath's rename copies and deletes, which is still all-or-nothing for
a reader of the final name.
"""

import contextlib
import datetime
import importlib.util
import io
import hashlib
import json
import os
import re
import shutil

from etils import epath
from etils.epath import backend as epath_backend
import fsspec
import numpy as np

from parallelnet.core import errors

# Schemes etils.epath handles (besides local paths).
URL_SCHEMES = ('gs', 's3', 'az', 'hf')


def path(p) -> epath.Path:
  """An epath.Path for a local path or a URL."""
  return epath.Path(p)


def is_url(p) -> bool:
  return '://' in str(p)


def join(*parts) -> str:
  return os.fspath(epath.Path(parts[0]).joinpath(*parts[1:]))


def use_fsspec_for_gcs():
  """Makes etils.epath read and write gs:// through gcsfs (fsspec), not TF.

  Called by entry points before any gs:// access, when gcsfs is installed and
  the user has not set EPATH_USE_TF. TF's GCS client is what epath picks
  when TF is importable, but it honours neither STORAGE_EMULATOR_HOST nor
  fsspec's credentials; gcsfs reads the same Application Default Credentials
  in production and can be pointed at an emulator in tests, and orbax's
  tensorstore reads them as well, so every gs:// file goes through one
  configured client. Returns whether epath now uses gcsfs for gs://.
  """
  if 'EPATH_USE_TF' not in os.environ:
    if importlib.util.find_spec('gcsfs') is None:
      return False
    os.environ['EPATH_USE_TF'] = 'false'
    refresh_epath_backend()
  return os.environ['EPATH_USE_TF'].lower() in ('false', 'no', 'f', '0')


def refresh_epath_backend():
  """Makes epath re-read EPATH_USE_TF (it caches the answer on first use)
  and drop its fsspec clients (they remember endpoint and credentials)."""
  cached = getattr(getattr(epath, 'gpath', None), '_is_tf_installed', None)
  if hasattr(cached, 'cache_clear'):
    cached.cache_clear()
  clients = getattr(_epath_fsspec_backend(), '_get_filesystem', None)
  if hasattr(clients, 'cache_clear'):
    clients.cache_clear()


def _epath_fsspec_backend():
  return getattr(epath_backend, 'fsspec_backend', None)


def _fs(p):
  """(fsspec filesystem, path without scheme) of URL `p`, on the very
  client etils.epath (hence orbax) uses: gcsfs caches folder listings per
  client, so a listing refreshed or a folder moved on another client would
  leave epath's cache stale (orbax would then see a step that was moved)."""
  backend = _epath_fsspec_backend()
  fs = backend.fs(str(p)) if backend is not None else (
      fsspec.core.url_to_fs(str(p))[0])
  return fs, fs._strip_protocol(str(p))  # pylint: disable=protected-access


def exists(p) -> bool:
  return epath.Path(p).exists()


def isdir(p) -> bool:
  return epath.Path(p).is_dir()


def makedirs(p):
  """mkdir -p (on object stores a no-op beyond a marker, as epath does it)."""
  epath.Path(p).mkdir(parents=True, exist_ok=True)


def listdir(p) -> list[str]:
  """Sorted names of the entries directly in folder `p` (on an object store,
  listed afresh: another process may have written there meanwhile)."""
  if is_url(p):
    fs, root = _fs(p)
    fs.invalidate_cache(root)
  return sorted(c.name for c in epath.Path(p).iterdir())


def glob(p, pattern: str) -> list[str]:
  """Sorted paths (as strings) under `p` that match `pattern` ('*.json')."""
  return sorted(os.fspath(c) for c in epath.Path(p).glob(pattern))


def read_text(p) -> str:
  """The file as UTF-8, line ends unchanged (as atomic_open wrote them)."""
  return epath.Path(p).read_bytes().decode('utf-8')


def read_bytes(p) -> bytes:
  return epath.Path(p).read_bytes()


def read_json(p):
  return json.loads(read_text(p))


def remove(p, missing_ok: bool = False):
  epath.Path(p).unlink(missing_ok=missing_ok)


def rmtree(p, missing_ok: bool = False):
  """Removes folder `p` and everything in it."""
  p = epath.Path(p)
  if missing_ok and not p.exists():
    return
  if is_url(p):
    p.rmtree()
  else:
    shutil.rmtree(p)


def copy(src, dst, overwrite: bool = True):
  """Copies one file (local or URL on either side), creating dst's folder."""
  dst = epath.Path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  src = epath.Path(src)
  if is_url(src) == is_url(dst):
    src.copy(dst, overwrite=overwrite)
  else:
    write_bytes_atomic(dst, src.read_bytes())


def scheme(p) -> str | None:
  """'gs' for 'gs://b/x', None for a local path."""
  m = re.match(r'^([A-Za-z][A-Za-z0-9+.-]*)://', str(p))
  return m.group(1).lower() if m else None


def split_spec(spec) -> tuple[str, str, str]:
  """str.partition(':') of a 'path[:arg]' spec (config_flags' --config form)
  that keeps a URL's 'scheme://' in the path: 'gs://b/config.json' gives
  ('gs://b/config.json', '', ''), 'configs/demo.py:a' ('configs/demo.py',
  ':', 'a')."""
  spec = str(spec)
  s = scheme(spec)
  head = len(s) + 3 if s else 0
  rest, colon, arg = spec[head:].partition(':')
  return spec[:head] + rest, colon, arg


def _is_auth_error(e: BaseException) -> bool:
  """Missing or refused credentials, as the GCS clients raise them."""
  names = {c.__name__ for c in type(e).__mro__}
  if names & {'DefaultCredentialsError', 'RefreshError',
              'PermissionError', 'Unauthorized',
              'Forbidden'}:
    return True
  code = getattr(e, 'code', None)
  return code in (401, 403) or any(
      s in str(e) for s in ('401', '403', 'Anonymous caller',
                            'credentials', 'Unauthenticated'))


def check_workdir_url(url, what: str = '--workdir'):
  """Raises a one-line UserError when `url` cannot hold a workdir.

  For a local path: nothing to check (folders are created on demand). For a
  URL: an unknown scheme, gs:// without gcsfs, a bucket that does not exist
  or missing credentials each name the URL and what to do. Reads only: a run
  that fails here leaves nothing behind.
  """
  s = scheme(url)
  if s is None:
    return
  if s not in URL_SCHEMES:
    raise errors.UserValueError(
        f'{what}={url}: unknown scheme {s}://; use a local folder or a '
        f'bucket URL ({", ".join(f"{k}://" for k in URL_SCHEMES)}).')
  if s == 'gs' and os.environ.get('EPATH_USE_TF', '').lower() in (
      'false', 'no', 'f', '0') and importlib.util.find_spec('gcsfs') is None:
    raise errors.UserValueError(
        f'{what}={url}: EPATH_USE_TF is false but gcsfs is not installed; '
        'pip install gcsfs (see requirements.txt), or unset EPATH_USE_TF.')
  bucket = str(url).split('://', 1)[1].split('/', 1)[0]
  root = f'{s}://{bucket}'
  if not bucket:
    raise errors.UserValueError(
        f'{what}={url}: no bucket name; use {s}://BUCKET/path.')
  try:
    found = epath.Path(root).exists()
  except Exception as e:  # pylint: disable=broad-except
    if _is_auth_error(e):
      raise errors.UserError(
          f'{what}={url}: no access to {root} ({type(e).__name__}); log in '
          'with `gcloud auth application-default login` or set '
          'GOOGLE_APPLICATION_CREDENTIALS to a service-account key, and '
          'check that the account may read and write the bucket.') from e
    raise errors.UserError(
        f'{what}={url}: cannot reach {root}: {type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""}') from e
  if not found:
    raise errors.UserFileNotFoundError(
        f'{what}={url}: bucket {root} does not exist (or is not visible to '
        f'these credentials); create it (gcloud storage buckets create '
        f'{root}) or fix the name.')


def tmp_name(p) -> str:
  """A temporary name beside `p`, unique to this process."""
  p = epath.Path(p)
  return os.fspath(p.parent / f'.{p.name}.tmp{os.getpid()}')


@contextlib.contextmanager
def atomic_open(p, mode='w'):
  """open(p, mode) that moves a temporary file into place on success and
  removes it on failure. Text mode writes UTF-8 with '\n' line ends."""
  if mode not in ('w', 'wb'):
    raise ValueError(f'atomic_open writes whole files: mode {mode!r}')
  p = epath.Path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  tmp = epath.Path(tmp_name(p))
  try:
    with tmp.open('wb') as raw:
      if mode == 'wb':
        yield raw
      else:
        # epath's open takes no `newline`; wrap the bytes stream ourselves so
        # csv's '\r\n' rows and our '\n' text are written unchanged.
        f = io.TextIOWrapper(raw, encoding='utf-8', newline='')
        yield f
        f.flush()
        f.detach()  # `raw` is closed by its own `with`.
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


def append_text(p, text: str):
  """Appends `text` to file `p` (created if missing). Object stores have no
  append: there the file is read and rewritten atomically, which suits the
  small logs this is used for (one line per epoch or run)."""
  if not is_url(p):
    os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    with open(p, 'a', encoding='utf-8', newline='') as f:
      f.write(text)
    return
  old = read_bytes(p) if exists(p) else b''
  write_bytes_atomic(p, old + text.encode('utf-8'))


def write_npz_atomic(p, **arrays):
  """np.savez of `arrays` to `p` (local or URL), atomically."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes_atomic(p, buf.getvalue())


def read_npz(p) -> dict:
  """{name: array} of the .npz at `p`; never unpickles (allow_pickle=False)."""
  with np.load(io.BytesIO(read_bytes(p)), allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def files_with_mtimes(p) -> list[tuple[str, float]]:
  """(path relative to folder `p`, modification time in seconds) of every
  file under `p`; one listing request on an object store."""
  if not is_url(p):
    out = []
    for root, _, files in os.walk(p):
      for f in files:
        full = os.path.join(root, f)
        out.append((os.path.relpath(full, p), os.path.getmtime(full)))
    return out
  fs, root = _fs(p)
  out = []
  for name, info in fs.find(root, detail=True).items():
    t = info.get('mtime') or info.get('updated') or info.get('LastModified')
    if isinstance(t, str):
      t = datetime.datetime.fromisoformat(t.replace('Z', '+00:00'))
    if isinstance(t, datetime.datetime):
      t = t.timestamp()
    out.append((name[len(root):].lstrip('/'), float(t or 0.0)))
  return out


def move(src, dst):
  """Renames file or folder `src` to `dst` (same store). Object stores have
  no folders to rename: there every object under `src` is copied, then
  deleted."""
  if not is_url(src):
    os.rename(src, dst)
    return
  fs, s = _fs(src)
  _, d = _fs(dst)
  fs.mv(s, d, recursive=fs.isdir(s))
  fs.invalidate_cache()  # Listings cached before the move are stale.


def isfile(p) -> bool:
  return epath.Path(p).is_file()


def abspath(p) -> str:
  """os.path.abspath for a local path; a URL unchanged."""
  return str(p) if is_url(p) else os.path.abspath(p)


def safe_name(text, *, max_len=60) -> str:
  """A file name for an id: the id itself when it is plain, else a
  sanitised form with a hash suffix, so two distinct ids never share a name."""
  text = str(text)
  if re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9_-]{0,99}', text):
    return text
  clean = re.sub(r'[^A-Za-z0-9_-]+', '_', text)[:max_len].strip('_') or 'id'
  return f'{clean}_{hashlib.sha256(text.encode()).hexdigest()[:10]}'
