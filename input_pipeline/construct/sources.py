"""The source folder: source.csv rows checked without decoding, the file
name of each id, and fingerprints that tell a resumed run which rows changed."""

import csv
import hashlib
import json
import os

from input_pipeline import manifest as manifest_lib
from parallelnet.core import paths
from parallelnet.core.errors import UserError

MAX_LISTED = 50  # Bad rows named in one error message; the rest are counted.


class ConstructError(UserError):
  """Bad source rows in strict mode; `.bad` holds (id, reason) pairs."""

  def __init__(self, bad, source):
    self.bad = list(bad)
    lines = [f'{len(self.bad)} bad source row(s) in {source} (fix them, or '
             'pass --skip_bad to record them as bad_input and leave them out):']
    lines += [f'  id={rid!r}: {reason}' for rid, reason in self.bad[:MAX_LISTED]]
    if len(self.bad) > MAX_LISTED:
      lines.append(f'  ... and {len(self.bad) - MAX_LISTED} more.')
    super().__init__('\n'.join(lines))


def read_source(source, *, classes, label_from):
  """Reads SOURCE/source.csv; returns (header, rows), each row a dict with
  its columns plus `_line`, `_bad` (reasons found without decoding),
  `_name` (its file name, paths.safe_name of the id) and `_image_path`
  (absolute)."""
  path = os.path.join(source, 'source.csv')
  if not os.path.isfile(path):
    raise UserError(f'No source.csv in {source!r}: the source folder needs '
                    'source.csv with columns id,text,image (optional label, '
                    'other columns kept) and the images.')
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.DictReader(f)
    header = list(reader.fieldnames or [])
    rows = list(reader)
  need = ['id', 'text', 'image'] + (['label'] if label_from == 'source' else [])
  missing = [c for c in need if c not in header]
  if missing:
    raise UserError(f'{path}: header lacks column(s) {missing}'
                    f'{" (--label_from=source reads label)" if "label" in missing else ""}'
                    f'; got {header}.')
  clash = [c for c in ('audio', 'source_label') if c in header]
  if clash:
    raise UserError(f'{path}: column(s) {clash} would clash with the '
                    'manifest\'s own; rename them.')
  seen, names = set(), {}
  for line, r in enumerate(rows, start=2):
    r['_line'] = line
    rid = (r.get('id') or '').strip()
    r['id'] = rid
    bad = []
    if not rid:
      bad.append(f'empty id (source.csv line {line})')
    elif rid in seen:
      bad.append(f'duplicate id (source.csv line {line})')
    seen.add(rid)
    name = paths.safe_name(rid or f'line{line}')
    if name in names:  # Only duplicate (hence bad) ids get here in practice.
      name = f'{name}_L{line}'
    names[name] = rid
    r['_name'] = name
    if not (r.get('text') or '').strip():
      bad.append('empty text')
    img = manifest_lib.resolve(source, (r.get('image') or '').strip())
    if img is None:
      bad.append(f'image path {r.get("image")!r} is empty or leaves the '
                 'source folder')
    elif not os.path.isfile(img):
      bad.append(f'missing image file {r.get("image")!r}')
    r['_image_path'] = img
    if label_from == 'source':
      label = (r.get('label') or '').strip()
      if label not in classes:
        bad.append(f'unknown label {label!r} (classes: {", ".join(classes)})')
    r['_bad'] = bad
  return header, rows


def row_fingerprint(r):
  """Changes when the row's inputs change (the image by path, size, mtime)."""
  img = r['_image_path']
  stat = os.stat(img) if img and os.path.isfile(img) else None
  fields = {k: v for k, v in r.items() if not k.startswith('_')}
  key = json.dumps([fields, img, stat and stat.st_size,
                    stat and stat.st_mtime_ns], sort_keys=True)
  return hashlib.sha256(key.encode()).hexdigest()


def chunk_fingerprint(rows):
  """One fingerprint for a chunk of rows (the resume unit)."""
  return hashlib.sha256(''.join(row_fingerprint(r) for r in rows).encode()
                        ).hexdigest()
