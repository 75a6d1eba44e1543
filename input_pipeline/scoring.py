"""Batches to score (--mode=predict): a TFDS split with its ids, or a folder.

Both yield this process's numpy batches of `local_batch` rows (id, label,
image, spectrogram, mask False on padding); every process yields the same
number of batches, so they step the mesh together.
"""

import math
import os

import jax
import numpy as np

from input_pipeline import manifest
from input_pipeline import pipeline


def process_share(total, index, count):
  """[start, end) of process `index`'s contiguous share of `total` items."""
  base, extra = divmod(total, count)
  start = index * base + min(index, extra)
  return start, start + base + (index < extra)


def folder_batches(config, folder, local_batch, notices=None,
                   missing_inputs=None):
  """This process's batches of a manifest folder (its manifest.csv, the
  `label` column optional: -1 when unknown), read file by file with the
  dataset's preprocessing (no TFDS build). A row whose `image` or `audio`
  cell is empty is a pair without that modality: the batch holds
  `missing_inputs[key]` there (the model's missing input, which the caller
  knows; zeros by default) and `missing` names the modality. `notices` (a
  list) collects preprocess_pair's line for each audio file longer or
  shorter than the model's clip."""
  rows, bad = manifest.read_manifest(folder, list(config.dataset.classes),
                                     require_label=False, allow_missing=True)
  if bad:
    raise manifest.BadInputError(bad, os.path.join(folder, 'manifest.csv'))
  if not rows:
    raise ValueError(f'{folder}/manifest.csv lists no examples.')
  pc = jax.process_count()
  sizes = [process_share(len(rows), i, pc) for i in range(pc)]
  start, end = sizes[jax.process_index()]
  num_batches = math.ceil(max(b - a for a, b in sizes) / local_batch)
  mine = rows[start:end]
  s = int(config.input.image_size)
  t, f = int(config.input.num_frames), int(config.input.n_mels)
  for b in range(num_batches):
    part = mine[b * local_batch:(b + 1) * local_batch]
    batch = dict(id=np.array([''] * local_batch, dtype=object),
                 label=np.full(local_batch, -1, np.int32),
                 image=np.zeros((local_batch, s, s, 3), np.float32),
                 spectrogram=np.zeros((local_batch, t, f, 1), np.float32),
                 missing=np.array([''] * local_batch, dtype=object),
                 mask=np.zeros(local_batch, bool))
    for i, row in enumerate(part):
      pair = pipeline.preprocess_pair(config, row['image'], row['audio'])
      if pair.get('audio_notice') and notices is not None:
        notices.append(pair['audio_notice'])
      batch['id'][i] = row['id']
      batch['label'][i] = row['label']
      for key in ('image', 'spectrogram'):
        if pair[key] is not None:
          batch[key][i] = pair[key]
        elif missing_inputs is not None:
          batch[key][i] = missing_inputs[key]
      batch['missing'][i] = pair['missing']
      batch['mask'][i] = True
    yield batch


def split_batches(config, split):
  """This process's batches of a TFDS split, with ids (eval_dataset's)."""
  ds = pipeline.eval_dataset(config, split, with_id=True)
  for batch in ds.as_numpy_iterator():
    batch['id'] = np.array([x.decode() for x in batch['id']], dtype=object)
    batch['missing'] = np.array([''] * len(batch['id']), dtype=object)
    yield batch
