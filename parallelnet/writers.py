"""What training writes and logs: metric writer, NaN guard, eval outputs.

TensorBoard events (tf.summary), the stop on a non-finite loss, and the
evaluation files: eval_metrics.json and confusion_matrix.png (the paper's
Fig. 4), written atomically by process 0.
"""

import io
import math
import os
import shutil
import tempfile

from absl import logging
import jax
import numpy as np
from PIL import Image

from parallelnet.core import errors
from parallelnet.core import paths
from parallelnet.core import plotting
from parallelnet.core import progress
from parallelnet import metrics as metrics_lib

METRIC_KEYS = ('accuracy', 'macro_f1', 'cohen_kappa')


class _DropOrbaxInfo:
  """absl-logging filter: orbax logs every save and restore at INFO."""

  def filter(self, record):
    return record.levelno >= 30 or '/orbax/' not in record.pathname


def quiet_orbax():
  """Drops orbax's INFO lines from the absl log (idempotent)."""
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _DropOrbaxInfo) for f in absl_logger.filters):
    absl_logger.addFilter(_DropOrbaxInfo())


class LoggingOnlyWriter:
  """A metric writer that only logs (at --verbosity=1): processes other than
  0 of a multi-process run, whose events process 0 writes."""

  def write_scalars(self, step, scalars):
    logging.vlog(1, '[%d] %s', step, ', '.join(
        f'{k}={float(v):.6g}' for k, v in sorted(scalars.items())))

  def write_images(self, step, images):
    logging.vlog(1, '[%d] images: %s', step,
                 {k: np.shape(v) for k, v in images.items()})

  def flush(self):
    pass

  def close(self):
    pass


class EventWriter(LoggingOnlyWriter):
  """TensorBoard events in `logdir` through tf.summary, plus the log lines.

  Why not clu's metric writer: its TensorBoard writer imports TensorBoard's
  hparams plugin, which imports Keras (about 1.5 s of every training
  process's start) for hyperparameter summaries we do not write. Scalars and
  images are all we write, and tf.summary writes them directly.
  """

  def __init__(self, logdir):
    self._tf = progress.import_tensorflow()
    self._writer = self._tf.summary.create_file_writer(logdir)

  def write_scalars(self, step, scalars):
    super().write_scalars(step, scalars)
    with self._writer.as_default():
      for k, v in scalars.items():
        self._tf.summary.scalar(k, float(v), step=int(step))

  def write_images(self, step, images):
    super().write_images(step, images)
    with self._writer.as_default():
      for k, v in images.items():
        v = np.asarray(v)
        v = v[None] if v.ndim == 3 else v  # [batch,] height, width, channels.
        self._tf.summary.image(k, v, step=int(step), max_outputs=len(v))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class MirroredWriter:
  """An EventWriter on a local folder whose files are copied to a URL workdir
  at every flush and at close.

  TF's summary writer reaches gs:// only through TF's own GCS client, which
  neither reads gcsfs's configuration nor can be pointed at an emulator;
  writing events locally and copying them through parallelnet.core.paths
  sends them through the same client as every other file. Event files are
  small (scalars and one image per evaluation), so recopying is cheap.
  """

  def __init__(self, make_writer, workdir):
    self._local = tempfile.mkdtemp(prefix='parallelnet_events_')
    self._workdir = workdir
    self._writer = make_writer(self._local)

  def write_scalars(self, step, scalars):
    self._writer.write_scalars(step, scalars)

  def write_images(self, step, images):
    self._writer.write_images(step, images)

  def __getattr__(self, name):
    return getattr(self._writer, name)

  def _mirror(self):
    for name in os.listdir(self._local):
      local = os.path.join(self._local, name)
      if os.path.isfile(local):
        with open(local, 'rb') as f:
          paths.write_bytes_atomic(paths.join(self._workdir, name), f.read())

  def flush(self):
    self._writer.flush()
    self._mirror()

  def close(self):
    self._writer.close()
    self._mirror()
    shutil.rmtree(self._local, ignore_errors=True)


def metric_writer(workdir):
  """TensorBoard events in `workdir` plus log lines (events go through a
  local folder when `workdir` is a URL); log lines only on processes other
  than 0."""
  if jax.process_index() > 0:
    return LoggingOnlyWriter()
  if paths.is_url(workdir):
    return MirroredWriter(EventWriter, workdir)
  return EventWriter(workdir)


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """Training diverged (NaN/Inf loss or gradient); the message says what to
  change and where the last good checkpoint is."""


def check_finite(step: int, out: dict, ckpts, workdir: str):
  """Stops training on a non-finite loss or gradient norm in `out`."""
  for name in ('loss', 'grad_norm'):
    value = float(out[name])
    if not math.isfinite(value):
      ckpts.wait()
      last = ckpts.latest_step()
      raise NonFiniteLossError(
          f'Non-finite {name} ({value}) at training step {step}: training '
          f'stopped. The last good checkpoint is step {last} in '
          f'{paths.join(workdir, "checkpoints", "latest")} (nothing was '
          f'saved after the failure). Lower train.learning_rate or check the '
          f'inputs.')


def confusion_png(cm, class_names, title: str = '') -> bytes:
  """A confusion-matrix heat map with counts, like the paper's Fig. 4, as
  PNG bytes."""
  plt = plotting.pyplot()
  cm = np.asarray(cm)
  fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2,
                                  1.2 * len(class_names) + 1.5))
  try:
    im = ax.imshow(cm, cmap='Blues')
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha='right')
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel('Predicted label')
    ax.set_ylabel('True label')
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
      for j in range(cm.shape[1]):
        ax.text(j, i, str(cm[i, j]), ha='center', va='center',
                color='white' if cm[i, j] > threshold else 'black')
    ax.set_title(title)
    fig.tight_layout()
    return plotting.figure_bytes(fig, dpi=120)
  finally:
    plt.close(fig)


def plot_confusion_matrix(cm, class_names, path: str, title: str = ''):
  """Saves `confusion_png` to `path` (atomically)."""
  paths.write_bytes_atomic(path, confusion_png(cm, class_names, title))


def write_eval_outputs(config, workdir, cm, step, split, writer=None):
  """Metrics of confusion matrix `cm`: eval_metrics.json and
  confusion_matrix.png in `workdir` (process 0), TensorBoard scalars and
  the figure when `writer` is given, and a log line. Returns the metrics."""
  summary = metrics_lib.summarize(cm, config.dataset.classes)
  summary['checkpoint_step'] = int(step)
  summary['split'] = split
  suffix = '' if split == 'test' else f'_{split}'  # Test files keep their names.
  if jax.process_index() == 0:
    paths.write_json_atomic(paths.join(workdir, f'eval_metrics{suffix}.json'),
                            summary)
    png = confusion_png(
        cm, config.dataset.classes,
        f'{split}: accuracy {summary["accuracy"]:.3f}, '
        f'macro-F1 {summary["macro_f1"]:.3f}')
    paths.write_bytes_atomic(paths.join(workdir, f'confusion_matrix{suffix}.png'),
                             png)
    if writer is not None:
      writer.write_scalars(int(step), {f'{split}/{k}': summary[k]
                                       for k in METRIC_KEYS})
      # The same figure in TensorBoard's Images tab (uint8 RGB, batch of 1).
      pixels = np.asarray(Image.open(io.BytesIO(png)).convert('RGB'))
      writer.write_images(int(step), {f'{split}/confusion_matrix':
                                      pixels[None]})
      writer.flush()
  logging.info('%s metrics at checkpoint step %d: accuracy %.4f, macro-F1 '
               '%.4f, kappa %.4f, confusion %s', split, step,
               summary['accuracy'], summary['macro_f1'],
               summary['cohen_kappa'], summary['confusion_matrix'])
  return summary
