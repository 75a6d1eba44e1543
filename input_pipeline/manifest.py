"""The on-disk dataset contract: a folder with manifest.csv (issue 3).

Header: `id,image,audio,label` plus optional `split` (train | validation |
test), `text`, `image_cue_box` ("y0 x0 y1 x1", pixels of the image as
displayed, i.e. after its EXIF orientation), `speech_cue_span` ("t0 t1", seconds) and any extra columns (kept, unused).
Paths are relative to the folder and may not leave it. Labels must be one of
`config.dataset.classes`.

Splits are deterministic functions of the ids (SHA-256 of the id, never of
file order or a process-dependent hash), stratified by label:
  * `part`: the manifest's split column if present, else a 70/30 train/test
    split; validation is then carved from train by `val_fraction`.
  * `fold`: k stratified folds for cross-validation, and inside each fold a
    stratified `val_fraction` share (`fold_val`) that becomes validation when
    the fold is a training fold.
"""

import collections
import csv
import hashlib
import os

from parallelnet.core import errors

REQUIRED_COLUMNS = ('id', 'image', 'audio', 'label')
SPLIT_ALIASES = {'train': 'train', 'training': 'train', 'test': 'test',
                 'testing': 'test', 'validation': 'validation',
                 'val': 'validation', 'valid': 'validation', 'dev': 'validation'}
MAX_LISTED = 50  # Bad rows listed in one error message; the rest are counted.


class BadInputError(errors.UserError, ValueError):
  """One or more bad rows/files; `.bad` holds (id, path, reason) tuples."""

  def __init__(self, bad, where=''):
    self.bad = list(bad)
    lines = [f'{len(self.bad)} bad input(s){" in " + where if where else ""} '
             '(set config.dataset.skip_bad=True to skip them and get '
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
  if not os.path.isfile(path):
    raise errors.UserFileNotFoundError(
        f'No manifest.csv in {folder!r}; see input_pipeline/manifest.py for '
        'the layout (id,image,audio,label[,split,text]).')
  with open(path, newline='', encoding='utf-8-sig') as f:  # Excel's BOM too.
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


def manifest_from_class_folders(folder):
  """Writes manifest.csv for a class-per-folder layout; returns the row count.

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
      stem, ext = os.path.splitext(name)
      kind = ('image' if ext.lower() in IMAGE_EXTS else
              'audio' if ext.lower() in AUDIO_EXTS else None)
      if kind:
        files[stem][kind] = f'{label}/{name}'
    for stem, got in sorted(files.items()):
      if len(got) != 2:
        unpaired.append(f'{label}/{stem}')
      else:
        rows.append([f'{label}/{stem}', got['image'], got['audio'], label])
  if unpaired:
    raise ValueError(f'No image/audio partner for: {", ".join(unpaired[:20])}'
                     f'{" ..." if len(unpaired) > 20 else ""}')
  with open(os.path.join(folder, 'manifest.csv'), 'w', newline='',
            encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(REQUIRED_COLUMNS)
    w.writerows(rows)
  return len(rows)


def write_skipped(path, bad):
  """Writes skipped.csv: id,file,reason."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(['id', 'file', 'reason'])
    w.writerows(bad)
