"""`--mode=predict`: class probabilities for every example of a split or folder.

Writes `<workdir>/predictions.csv` with columns `id`, `label` (when known),
`predicted`, `p_<class>` for every class of `config.dataset.classes` and
`missing` (image, speech, or empty for a complete pair), one row per example
in the source's order.

Sources:
  * `config.predict.manual_dir` empty: the test split of the configured
    dataset (built with TFDS as for evaluation).
  * `config.predict.manual_dir` a folder: its manifest.csv (the dataset
    layout, see input_pipeline/manifest.py; the `label` column optional),
    read file by file with the dataset's preprocessing, no TFDS build. A
    row whose `image` or `audio` cell is empty is a pair without that
    modality: the model reads its missing input there (modality.py).

Like evaluation, batches of `config.train.eval_batch_size` are split over
the ('data',) mesh of every device of every process (each process reads its
contiguous share and pads the last batch, masked); the rows are gathered and
process 0 writes the file.
"""

import csv
import math
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from parallelnet import checkpointing
from parallelnet import mesh as mesh_lib
from parallelnet import modality
from parallelnet.models import scaling as model_scaling


def _share(total, index, count):
  """[start, end) of process `index`'s contiguous share of `total` items."""
  base, extra = divmod(total, count)
  start = index * base + min(index, extra)
  return start, start + base + (index < extra)


def folder_batches(config, folder, local_batch, notices=None):
  """This process's batches of a manifest folder (numpy dicts with id, label
  (-1 when unknown), image, spectrogram, missing, mask); every process yields the
  same number of batches. `notices` (a list) collects preprocess_pair's
  line for each audio file longer or shorter than the model's clip."""
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline import manifest  # pylint: disable=g-import-not-at-top
  rows, bad = manifest.read_manifest(folder, list(config.dataset.classes),
                                     require_label=False, allow_missing=True)
  if bad:
    raise manifest.BadInputError(bad, os.path.join(folder, 'manifest.csv'))
  if not rows:
    raise ValueError(f'{folder}/manifest.csv lists no examples.')
  pc = jax.process_count()
  sizes = [_share(len(rows), i, pc) for i in range(pc)]
  start, end = sizes[jax.process_index()]
  num_batches = math.ceil(max(b - a for a, b in sizes) / local_batch)
  mine = rows[start:end]
  s = int(config.input.image_size)
  t, f = int(config.input.num_frames), int(config.input.n_mels)
  absent = modality.missing_inputs(config)
  for b in range(num_batches):
    part = mine[b * local_batch:(b + 1) * local_batch]
    batch = dict(id=np.array([''] * local_batch, dtype=object),
                 label=np.full(local_batch, -1, np.int32),
                 image=np.zeros((local_batch, s, s, 3), np.float32),
                 spectrogram=np.zeros((local_batch, t, f, 1), np.float32),
                 missing=np.array([''] * local_batch, dtype=object),
                 mask=np.zeros(local_batch, bool))
    for i, row in enumerate(part):
      pair = input_pipeline.preprocess_pair(config, row['image'],
                                            row['audio'])
      if pair.get('audio_notice') and notices is not None:
        notices.append(pair['audio_notice'])
      batch['id'][i] = row['id']
      batch['label'][i] = row['label']
      for key in ('image', 'spectrogram'):
        batch[key][i] = absent[key] if pair[key] is None else pair[key]
      batch['missing'][i] = pair['missing']
      batch['mask'][i] = True
    yield batch


def split_batches(config, split):
  """This process's batches of a TFDS split, with ids (eval_dataset's)."""
  import input_pipeline  # pylint: disable=g-import-not-at-top
  ds = input_pipeline.eval_dataset(config, split, with_id=True)
  for batch in ds.as_numpy_iterator():
    batch['id'] = np.array([x.decode() for x in batch['id']], dtype=object)
    batch['missing'] = np.array([''] * len(batch['id']), dtype=object)
    yield batch


def _probabilities(model, mesh):
  """Jitted (variables, images, spectrograms) -> softmax, batch-sharded."""
  data = mesh_lib.data_sharding(mesh)

  def probs(variables, images, spectrograms):
    logits, _ = model.apply(variables, images, spectrograms, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jax.jit(probs, out_shardings=data)


def _local_rows(x):
  """This process's rows of a batch-sharded global array, in order."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # Replicas of a shard (other mesh axes).
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)


def predict(config, workdir, *, split='test'):
  """Scores every example; writes <workdir>/predictions.csv; returns
  dict(path, num_examples, accuracy (None without labels))."""
  config = model_scaling.resolve_config(config)
  model, variables, step = checkpointing.restore_for_inference(
      config, workdir, which='best')
  mesh = mesh_lib.make_mesh()
  batch = int(config.train.eval_batch_size)
  mesh_lib.check_batch_size(batch, mesh, 'train.eval_batch_size')
  if batch % jax.process_count():
    raise ValueError(f'config.train.eval_batch_size={batch} is not divisible '
                     f'by the {jax.process_count()} processes.')
  local_batch = batch // jax.process_count()
  folder = str(config.predict.manual_dir or '')
  notices = []
  if folder:
    batches = folder_batches(config, folder, local_batch, notices)
  else:
    batches = split_batches(config, split)
  variables = jax.device_put(variables, mesh_lib.replicated(mesh))
  probs_fn = _probabilities(model, mesh)
  data = mesh_lib.data_sharding(mesh)
  ids, labels, probs, missing = [], [], [], []
  for b in batches:
    glob = {k: jax.make_array_from_process_local_data(data, b[k])
            for k in ('image', 'spectrogram')}
    p = _local_rows(probs_fn(variables, glob['image'], glob['spectrogram']))
    keep = np.asarray(b['mask'], bool)
    ids += [str(x) for x in b['id'][keep]]
    labels += [int(x) for x in np.asarray(b['label'])[keep]]
    missing += [str(x) for x in b['missing'][keep]]
    probs.append(p[keep])
  if notices:  # One line, not one per file: a folder may hold thousands.
    logging.warning('%d audio file(s) differ from the model\'s clip length '
                    'and were cropped or padded; e.g. %s', len(notices),
                    notices[0])
  probs = np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)
  rows, absent = _gather(ids, labels, probs, missing)
  if any(absent):
    warning = modality.untrained_warning(config, workdir)
    if warning:
      logging.warning('%s', warning)
  return _write(config, workdir, rows, step, folder or split, absent)


def _gather(ids, labels, probs, missing):
  """Every process's (id, label, probs) rows and their missing
  modalities, process 0's first."""
  parts = mesh_lib.allgather_json(
      dict(ids=ids, labels=labels, probs=probs.tolist(), missing=missing))
  rows = [(i, l, p) for part in parts
          for i, l, p in zip(part['ids'], part['labels'], part['probs'])]
  return rows, [m for part in parts for m in part['missing']]


def _write(config, workdir, rows, step, source, missing):
  classes = list(config.dataset.classes)
  known = bool(rows) and all(label >= 0 for _, label, _ in rows)
  path = os.path.join(workdir, 'predictions.csv')
  preds = [int(np.argmax(p)) for _, _, p in rows]
  correct = sum(p == label for p, (_, label, _) in zip(preds, rows))
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, 'w', newline='') as f:
      w = csv.writer(f)
      w.writerow(['id'] + (['label'] if known else []) + ['predicted'] +
                 [f'p_{c}' for c in classes] + ['missing'])
      for (ex_id, label, p), pred, gone in zip(rows, preds, missing):
        w.writerow([ex_id] + ([classes[label]] if known else []) +
                   [classes[pred]] + [f'{x:.6g}' for x in p] + [gone])
  accuracy = correct / len(rows) if known else None
  n_missing = sum(bool(m) for m in missing)
  logging.info('Predicted %d examples of %s (checkpoint step %d)%s%s; wrote '
               '%s', len(rows), source, step,
               '' if accuracy is None else f', accuracy {accuracy:.4f}',
               f', {n_missing} lacking a modality' if n_missing else '', path)
  return dict(path=path, num_examples=len(rows), accuracy=accuracy)
