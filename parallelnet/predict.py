"""`--mode=predict`: class probabilities for every example of a split or folder.

Writes `<workdir>/predictions.csv` with columns `id`, `label` (when known),
`predicted`, `p_<class>` for every class of `config.dataset.classes` and
`missing` (image, speech, or empty for a complete pair), one row per example
in the source's order. A folder's rows go to `predictions_<folder name>.csv`
instead, so scoring a folder never overwrites the test split's file.

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
import os

from absl import logging
import jax
import numpy as np

from input_pipeline import scoring
from input_pipeline.scoring import folder_batches  # pylint: disable=unused-import
from input_pipeline.scoring import split_batches  # pylint: disable=unused-import
from parallelnet.core import paths
from parallelnet import inference
from parallelnet import mesh as mesh_lib
from parallelnet import modality
from parallelnet.models import scaling as model_scaling


def predict(config, workdir, *, split='test'):
  """Scores every example; writes <workdir>/predictions.csv; returns
  dict(path, num_examples, accuracy (None without labels))."""
  config = model_scaling.resolve_config(config)
  mesh = mesh_lib.make_mesh()
  batch = int(config.train.eval_batch_size)
  predictor = inference.Predictor.restore(config, workdir, 'best',
                                          batch_size=batch, mesh=mesh)
  mesh_lib.check_batch_size(batch, mesh, 'train.eval_batch_size')
  folder = str(config.predict.manual_dir or '')
  notices = []
  if folder:
    batches = scoring.folder_batches(
        config, folder, predictor.local_batch, notices,
        missing_inputs=modality.missing_inputs(config))
  else:
    batches = scoring.split_batches(config, split)
  ids, labels, probs, missing = [], [], [], []
  for b in batches:
    p = predictor.batch(b['image'], b['spectrogram'])
    keep = np.asarray(b['mask'], bool)
    ids += [str(x) for x in b['id'][keep]]
    labels += [int(x) for x in np.asarray(b['label'])[keep]]
    probs.append(p[keep])
    missing += [str(x) for x in b['missing'][keep]]
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
  return _write(config, workdir, rows, predictor.step, folder or split,
                absent, output_name(folder))


def output_name(folder: str) -> str:
  """predictions.csv for the test split; predictions_<folder>.csv for a
  folder (its base name made a safe file name)."""
  if not folder:
    return 'predictions.csv'
  base = os.path.basename(os.path.normpath(folder)) or 'folder'
  return f'predictions_{paths.safe_name(base)}.csv'


def _gather(ids, labels, probs, missing):
  """Every process's (id, label, probs) rows and their missing
  modalities, process 0's first."""
  parts = mesh_lib.allgather_json(
      dict(ids=ids, labels=labels, probs=probs.tolist(), missing=missing))
  rows = [(i, l, p) for part in parts
          for i, l, p in zip(part['ids'], part['labels'], part['probs'])]
  return rows, [m for part in parts for m in part['missing']]


def _write(config, workdir, rows, step, source, missing, name):
  classes = list(config.dataset.classes)
  known = bool(rows) and all(label >= 0 for _, label, _ in rows)
  path = os.path.join(workdir, name)
  preds = [int(np.argmax(p)) for _, _, p in rows]
  correct = sum(p == label for p, (_, label, _) in zip(preds, rows))
  if jax.process_index() == 0:
    with paths.atomic_open(path) as f:
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
