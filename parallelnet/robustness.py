"""`--mode=robustness`: test accuracy of the best checkpoint under missing and
degraded inputs.

For each condition of `config.robustness.conditions` (input_pipeline/
degrade.py names them) the test split is scored once: `full` on the stored
features, exactly what `--mode=eval` scores; `no_image` / `no_speech` with
that modality replaced by the model's missing input (modality.py); the
noise, occlusion and blur conditions on features recomputed from the
degraded raw waveform / image. Writes `<workdir>/robustness.csv`
(condition, accuracy, macro_f1, cohen_kappa) and `<workdir>/robustness.png`.
"""

import csv
import io
import math
import os

from absl import logging
import jax
import numpy as np

import input_pipeline
from input_pipeline import degrade
from parallelnet import checkpointing
from parallelnet import mesh as mesh_lib
from parallelnet import metrics as metrics_lib
from parallelnet import modality
from parallelnet import train
from parallelnet import train_state
from parallelnet.core import paths
from parallelnet.core import plotting
from parallelnet.core import progress
from parallelnet.models import scaling as model_scaling

COLUMNS = ('condition', 'accuracy', 'macro_f1', 'cohen_kappa')


def conditions_of(config):
  """The parsed config.robustness.conditions (errors name the field)."""
  rc = config.robustness
  return degrade.parse_conditions(rc.conditions, float(rc.blur_sigma))


def condition_inputs(config, condition, examples, missing):
  """(images, spectrograms) of `examples` under one condition."""
  if condition.kind == 'full':
    return examples['image'], examples['spectrogram']
  if condition.kind in ('no_image', 'no_speech'):
    return modality.replace_modality(examples['image'],
                                     examples['spectrogram'],
                                     condition.modality, missing)
  rc = config.robustness
  return degrade.degraded_features(config, condition, examples,
                                   seed=int(rc.seed),
                                   talkers=int(rc.babble_talkers))


def _batches(mesh, images, spectrograms, labels, global_batch):
  """Global eval batches (padded at the end, mask False there): process p
  feeds rows [p * local, (p + 1) * local) of each global batch."""
  pc, pi = jax.process_count(), jax.process_index()
  local = global_batch // pc
  n = len(labels)
  data = mesh_lib.data_sharding(mesh)
  for start in range(0, n, global_batch):
    idx = np.arange(start + pi * local, start + (pi + 1) * local)
    valid = idx < n
    idx = np.where(valid, idx, 0)
    batch = dict(image=np.asarray(images[idx], np.float32),
                 spectrogram=np.asarray(spectrograms[idx], np.float32),
                 label=np.where(valid, labels[idx], 0).astype(np.int32),
                 mask=valid)
    yield {k: jax.make_array_from_process_local_data(data, v)
           for k, v in batch.items()}


def run_robustness(config, workdir, *, split='test', examples=None) -> list:
  """Scores the best checkpoint under every condition; writes robustness.csv
  and robustness.png in `workdir`; returns the rows (dicts of COLUMNS).

  `examples` (load_examples' dict) replaces reading `split` (tests).
  """
  config = model_scaling.resolve_config(config)
  conditions = conditions_of(config)  # Bad names fail before any work.
  model, variables, step = checkpointing.restore_for_inference(
      config, workdir, which='best')
  mesh = mesh_lib.make_mesh()
  batch = int(config.train.eval_batch_size)
  mesh_lib.check_batch_size(batch, mesh, 'train.eval_batch_size')
  if any(c.kind in ('no_image', 'no_speech') for c in conditions):
    warning = modality.untrained_warning(config, workdir)
    if warning:
      logging.warning('%s', warning)
  if examples is None:
    examples = input_pipeline.load_examples(config, split)
  steps = train.Steps(config, mesh)
  state = train_state.inference_state(model, variables, mesh)
  missing = modality.missing_inputs(config)
  labels = np.asarray(examples['label'], np.int32)
  rows = []
  bar = progress.Progress(len(conditions), 'robustness', unit='conditions',
                          interval_s=20.0, enabled=jax.process_index() == 0)
  for c in conditions:
    images, specs = condition_inputs(config, c, examples, missing)
    _, cm = train.evaluate_batches(
        steps, state, _batches(mesh, images, specs, labels, batch))
    s = metrics_lib.summarize(cm, config.dataset.classes)
    rows.append(dict(condition=c.name, accuracy=s['accuracy'],
                     macro_f1=s['macro_f1'], cohen_kappa=s['cohen_kappa']))
    logging.info('robustness %s: accuracy %.4f, macro-F1 %.4f, kappa %.4f',
                 c.name, s['accuracy'], s['macro_f1'], s['cohen_kappa'])
    bar.update()
  bar.close()
  if jax.process_index() == 0:
    write_csv(os.path.join(workdir, 'robustness.csv'), rows)
    plot(rows, os.path.join(workdir, 'robustness.png'),
         f'{split} split, checkpoint step {step}, {len(labels)} examples')
  return rows


def write_csv(path, rows):
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator='\n')
  w.writerow(COLUMNS)
  for r in rows:
    w.writerow([r['condition']] + [f'{r[k]:.6f}' for k in COLUMNS[1:]])
  paths.write_bytes_atomic(path, buf.getvalue().encode('utf-8'))


def plot(rows, path, subtitle=''):
  """Horizontal bars of accuracy and macro-F1 per condition."""
  plt = plotting.pyplot()
  names = [r['condition'] for r in rows]
  y = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 2))
  for k, (metric, colour) in enumerate((('accuracy', 'tab:blue'),
                                        ('macro_f1', 'tab:orange'))):
    values = [r[metric] if not math.isnan(r[metric]) else 0 for r in rows]
    ax.barh(y + (k - 0.5) * 0.4, values, height=0.4, color=colour,
            label=metric)
  ax.set_yticks(y, names)
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel('test score')
  full = [r['accuracy'] for r in rows if r['condition'] == 'full']
  if full:
    ax.axvline(full[0], color='grey', lw=0.8, ls='--')
  ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.12), ncol=2)
  ax.set_title(f'Robustness: {subtitle}', fontsize=9)
  fig.tight_layout()
  plotting.save(fig, path, dpi=120)
