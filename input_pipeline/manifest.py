"""The on-disk dataset contract: a folder with manifest.csv.

Header: `id,image,audio,label` plus optional `split` (train | validation |
test), `text`, `image_cue_box` ("y0 x0 y1 x1", pixels of the image as
displayed, i.e. after its EXIF orientation), `speech_cue_span` ("t0 t1", seconds) and any extra columns (kept, unused).
Paths are relative to the folder and may not leave it. Labels must be one of
`config.dataset.classes`. A folder without manifest.csv but with class
folders (`<label>/<stem>.png` next to `<label>/<stem>.wav`) reads as the
manifest manifest_from_class_folders would write.

`source_fingerprint` names what a folder holds (the manifest and each
listed file's size and modification time), so that a dataset built from it
can tell when the folder has changed since.

Splits are deterministic functions of the ids (SHA-256 of the id, never of
file order or a process-dependent hash), stratified by label:
  * `part`: the manifest's split column if present, else a 70/30 train/test
    split; validation is then carved from train by `val_fraction`.
  * `fold`: k stratified folds for cross-validation, and inside each fold a
    stratified `val_fraction` share (`fold_val`) that becomes validation when
    the fold is a training fold.
"""

import collections
import contextlib
import csv
import hashlib
import io
import os

from parallelnet.core import errors
from parallelnet.core import paths

REQUIRED_COLUMNS = ('id', 'image', 'audio', 'label')
SPLIT_ALIASES = {'train': 'train', 'training': 'train', 'test': 'test',
                 'testing': 'test', 'validation': 'validation',
                 'val': 'validation', 'valid': 'validation', 'dev': 'validation'}
MAX_LISTED = 50  # Bad rows listed in one error message; the rest are counted.


class BadInputError(errors.UserError, ValueError):
  """One or more bad rows/files; `.bad` holds (id, path, reason) tuples."""

  def __init__(self, bad, where=''):
    self.bad = list(bad)
    where = f' in {os.path.abspath(where)} (file paths relative to it)' if (
        where) else ''
    lines = [f'{len(self.bad)} bad input(s){where} (set config.dataset.skip_bad=True to skip them and get '
             'skipped.csv):']
    for row_id, path, reason in self.bad[:MAX_LISTED]:
      lines.append(f'  id={row_id!r} file={path!r}: {reason}')
    if len(self.bad) > MAX_LISTED:
      lines.append(f'  ... and {len(self.bad) - MAX_LISTED} more.')
    super().__init__('\n'.join(lines))


def resolve(folder, rel):
  """Absolute path of `rel` inside `folder`, or None if it leaves the folder."""
  root = os.path.realpath(folder)
  if not rel or os.path.isabs(rel):
    return None
  path = os.path.realpath(os.path.join(root, rel))
  if os.path.commonpath([root, path]) != root:
    return None
  return path


def _parse_floats(text, n):
  """'a b c d' -> n floats; '' -> [-1]*n (absent)."""
  if text is None or not str(text).strip():
    return [-1.0] * n
  vals = [float(v) for v in str(text).replace(',', ' ').split()]
  if len(vals) != n:
    raise ValueError(f'expected {n} numbers, got {text!r}')
  return vals


MISSING_HINT = ('a pair needs both files; config.dataset.allow_missing=True '
                'keeps rows that lack one modality')


def read_manifest(folder, classes, *, require_label=True, allow_missing=False):
  """Reads and checks manifest.csv; returns (rows, bad).

  require_label=False (scoring unlabelled data): the `label` column may be
  missing or empty; such rows get label -1.
  allow_missing=True: an empty `image` or `audio` cell is a pair without
  that modality (path None, `missing` 'image' or 'speech'), not a bad row;
  a row with both cells empty is still bad. A named file is always checked.

  rows: dicts with id, label (int), image/audio (absolute paths), split
  (normalised or None), text, image_cue_box, speech_cue_span.
  bad: (id, path, reason) for every row that fails a manifest-level check
  (unknown label, duplicate id, path leaving the folder, bad split value).
  File contents are checked later, by the decoders.
  """
  path = os.path.join(folder, 'manifest.csv')
  with io.StringIO(manifest_text(folder), newline='') as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in header
               and (require_label or c != 'label')]
    if missing:
      raise errors.UserValueError(
          f'{path}: header lacks column(s) {missing}; got {header}.')
    raw = list(reader)
  label_index = {name: i for i, name in enumerate(classes)}
  rows, bad, seen = [], [], set()
  for line, r in enumerate(raw, start=2):
    rid = (r.get('id') or '').strip()
    reasons = []
    if not rid:
      reasons.append(f'empty id (manifest line {line})')
    elif rid in seen:
      reasons.append('duplicate id')
    seen.add(rid)
    label = (r.get('label') or '').strip()
    if not label and not require_label:
      pass  # Unlabelled: label -1.
    elif label not in label_index:
      reasons.append(f'unknown label {label!r} (classes: {", ".join(classes)})')
    files, empty = {}, []
    for col in ('image', 'audio'):
      cell = (r.get(col) or '').strip()
      p = resolve(folder, cell)
      if not cell:
        empty.append(col)
        if not allow_missing:
          reasons.append(f'{col} cell is empty ({MISSING_HINT})')
      elif p is None:
        reasons.append(f'{col} path {cell!r} leaves the dataset folder')
      files[col] = p
    if len(empty) == 2 and allow_missing:
      reasons.append('image and audio cells are both empty')
    split = (r.get('split') or '').strip().lower() or None
    if split is not None and split not in SPLIT_ALIASES:
      reasons.append(f'unknown split {split!r}')
    try:
      box = _parse_floats(r.get('image_cue_box'), 4)
      span = _parse_floats(r.get('speech_cue_span'), 2)
    except ValueError as e:
      reasons.append(f'bad cue column: {e}')
    shown = f"{r.get('image')};{r.get('audio')}"
    if reasons:
      bad.append((rid, shown, '; '.join(reasons)))
      continue
    rows.append(dict(id=rid, label=label_index.get(label, -1),
                     image=files['image'],
                     audio=files['audio'], split=SPLIT_ALIASES.get(split),
                     missing={'image': 'image', 'audio': 'speech'}.get(
                         empty[0], '') if len(empty) == 1 else '',
                     text=r.get('text') or '', image_cue_box=box,
                     speech_cue_span=span))
  return rows, bad


def stable_hash(salt, text):
  """A process-independent 64-bit hash of `text` (not Python's hash())."""
  digest = hashlib.sha256(f'{salt}:{text}'.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'little')


def _stratified_take(ids_by_label, fraction, salt):
  """The ids of a `fraction` of each label, chosen by stable hash."""
  taken = set()
  for ids in ids_by_label.values():
    ranked = sorted(ids, key=lambda i: stable_hash(salt, i))
    taken.update(ranked[:int(round(len(ranked) * fraction))])
  return taken


def assign_splits(rows, *, test_fraction, val_fraction, num_folds):
  """Adds `part` (train|validation|test), `fold` and `fold_val` to each row."""
  by_label = collections.defaultdict(list)
  for r in rows:
    by_label[r['label']].append(r['id'])
  has_split = any(r['split'] for r in rows)
  if has_split:
    missing = [r['id'] for r in rows if not r['split']]
    if missing:
      raise ValueError(f'manifest split column is empty for ids {missing[:10]}'
                       f'{" ..." if len(missing) > 10 else ""}; fill it for all '
                       'rows or drop the column.')
    part = {r['id']: r['split'] for r in rows}
  else:
    test = _stratified_take(by_label, test_fraction, 'test')
    part = {i: 'test' if i in test else 'train' for r in rows for i in [r['id']]}
  if not any(p == 'validation' for p in part.values()) and val_fraction > 0:
    train_by_label = {l: [i for i in ids if part[i] == 'train']
                      for l, ids in by_label.items()}
    for i in _stratified_take(train_by_label, val_fraction, 'validation'):
      part[i] = 'validation'
  # k folds: deal each label's hash-ranked ids round-robin, continuing the
  # count across labels so that fold sizes differ by at most one.
  fold, counter = {}, 0
  for label in sorted(by_label):
    for i in sorted(by_label[label], key=lambda i: stable_hash('fold', i)):
      fold[i] = counter % num_folds
      counter += 1
  fold_val = set()
  for k in range(num_folds):
    in_fold = {l: [i for i in ids if fold[i] == k] for l, ids in by_label.items()}
    fold_val |= _stratified_take(in_fold, val_fraction, f'fold_val{k}')
  for r in rows:
    r['part'] = part[r['id']]
    r['fold'] = fold[r['id']]
    r['fold_val'] = r['id'] in fold_val
  return rows


def cell_name(part, fold, fold_val):
  """The TFDS split holding one (part, fold, fold_val) cell of the data.

  Every example is stored once, in its cell; train/validation/test and the
  cross-validation splits are unions of cells (see pipeline.split_names).
  """
  return f'{part}_f{fold}{"v" if fold_val else "t"}'


IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp', '.tif', '.tiff')
AUDIO_EXTS = ('.wav', '.flac', '.ogg', '.mp3')


def _media_kind(name):
  ext = os.path.splitext(name)[1].lower()
  return ('image' if ext in IMAGE_EXTS else
          'audio' if ext in AUDIO_EXTS else None)


def has_class_folders(folder):
  """Whether `folder` has a sub-folder holding an image or audio file."""
  for label in os.listdir(folder):
    sub = os.path.join(folder, label)
    if os.path.isdir(sub) and any(_media_kind(n) for n in os.listdir(sub)):
      return True
  return False


def class_folder_rows(folder):
  """[id, image, audio, label] rows of a class-per-folder layout.

  Layout: folder/<label>/<stem>.<png|jpg|jpeg|webp|bmp|tif|tiff> next to
  folder/<label>/<stem>.<wav|flac|ogg|mp3>; the id is "<label>/<stem>".
  A stem with only one of the two files raises, naming it.
  """
  rows, unpaired = [], []
  for label in sorted(os.listdir(folder)):
    sub = os.path.join(folder, label)
    if not os.path.isdir(sub):
      continue
    files = collections.defaultdict(dict)
    for name in sorted(os.listdir(sub)):
      kind = _media_kind(name)
      if kind:
        files[os.path.splitext(name)[0]][kind] = f'{label}/{name}'
    for stem, got in sorted(files.items()):
      if len(got) != 2:
        unpaired.append(f'{label}/{stem}')
      else:
        rows.append([f'{label}/{stem}', got['image'], got['audio'], label])
  if unpaired:
    raise errors.UserValueError(
        f'No image/audio partner in {os.path.abspath(folder)} for: '
        f'{", ".join(unpaired[:20])}{" ..." if len(unpaired) > 20 else ""}')
  return rows


def _csv_text(rows):
  out = io.StringIO(newline='')
  w = csv.writer(out)
  w.writerow(REQUIRED_COLUMNS)
  w.writerows(rows)
  return out.getvalue()


def manifest_text(folder):
  """The manifest of `folder` as CSV text: its manifest.csv, else the one
  its class folders make (nothing is written)."""
  path = os.path.join(folder, 'manifest.csv')
  if os.path.isfile(path):
    with open(path, 'rb') as f:
      return f.read().decode('utf-8-sig')  # Excel's BOM too.
  if os.path.isdir(folder) and has_class_folders(folder):
    return _csv_text(class_folder_rows(folder))
  raise errors.UserFileNotFoundError(
      f'No manifest.csv and no class folders in {os.path.abspath(folder)}; '
      'see README, "Your own data", for the layout '
      '(id,image,audio,label[,split,text]).')


# folder -> fingerprint while fixed_sources() is open; None outside.
_fixed = None


@contextlib.contextmanager
def fixed_sources():
  """Within it, each folder's source_fingerprint is computed once and then
  reused. A training run opens it: the run reads one version of its source
  (a folder edited mid-run is fingerprinted, hence rebuilt, by the next
  run, not at the next epoch), and a large folder is not stat()ed again at
  every epoch. Re-entrant: an inner use keeps the outer one's values."""
  global _fixed
  outer = _fixed
  if outer is None:
    _fixed = {}
  try:
    yield
  finally:
    if outer is None:
      _fixed = None


def source_fingerprint(folder):
  """A short hex digest of what `folder` holds as a dataset source.

  Covers the manifest text and, for every path its image and audio columns
  list, the file's size and modification time (or that it is missing): a
  row added, removed or edited, or a file replaced, gives another digest.
  Only stat() per file, so it costs well under a second for 100k files;
  inside fixed_sources() it is computed once per folder.
  """
  if _fixed is not None:
    key = os.path.abspath(folder)
    if key not in _fixed:
      _fixed[key] = _fingerprint(folder)
    return _fixed[key]
  return _fingerprint(folder)


def _fingerprint(folder):
  text = manifest_text(folder)
  h = hashlib.sha256(text.encode('utf-8'))
  rels = set()
  for r in csv.DictReader(io.StringIO(text, newline='')):
    rels.update((r.get(col) or '').strip() for col in ('image', 'audio'))
  for rel in sorted(rels):  # Relative: a moved folder is the same source.
    p = resolve(folder, rel)
    try:
      st = os.stat(p)
      h.update(f'\0{rel}\0{st.st_size}\0{st.st_mtime_ns}'.encode())
    except (OSError, TypeError):
      h.update(f'\0{rel}\0missing'.encode())
  return h.hexdigest()[:12]


def manifest_from_class_folders(folder):
  """Writes manifest.csv for a class-per-folder layout (class_folder_rows);
  returns the row count."""
  rows = class_folder_rows(folder)
  paths.write_text_atomic(os.path.join(folder, 'manifest.csv'),
                          _csv_text(rows))
  return len(rows)


def write_skipped(path, bad):
  """Writes skipped.csv: id,file,reason."""
  with paths.atomic_open(path) as f:
    w = csv.writer(f)
    w.writerow(['id', 'file', 'reason'])
    w.writerows(bad)
