"""Teachers for dataset construction (paper §3.1): training workdirs as SER/IER.

A teacher is a speech-only or image-only model of this codebase (e.g. trained
with configs/parallelnet.py:ser_only or :ier_only), restored from its workdir
alone with the config it was trained with (checkpointing.restore_from_workdir),
so the construction decodes files with the teacher's own preprocessing
(sample rate, STFT, mel bins, frames, image size and scaling). Inference is
parallelnet.inference's Predictor, as for --mode=predict: jitted once,
parameters replicated, padded batches sharded on the mesh's 'data' axis.

It satisfies the teacher interface of input_pipeline.construct (modality,
classes, input_spec, description, predict); the construction library never
imports this module, only its command line does.
"""


import numpy as np

from parallelnet.models import scaling as scaling_table
from parallelnet.core import paths
from parallelnet.core.errors import UserError
from parallelnet import checkpointing
from parallelnet import inference


class WorkdirTeacher:
  """A unimodal training workdir as a teacher: predict -> probabilities."""

  def __init__(self, workdir, modality, *, which='best', batch_size=32,
               mesh=None):
    if modality not in ('speech', 'image'):
      raise ValueError(f'modality={modality!r}; expected speech or image.')
    who = {'speech': '--ser_teacher', 'image': '--ier_teacher'}[modality]
    if not paths.isdir(workdir):
      raise UserError(f'{who}={workdir}: no such folder (a training workdir '
                      'or module:function).')
    try:
      config, model, variables, step = checkpointing.restore_from_workdir(
          workdir, which)
    except FileNotFoundError as e:
      raise UserError(f'{who}={workdir}: {e}') from e
    got = config.model.modalities
    if got != modality:
      variant = {'speech': 'ser_only', 'image': 'ier_only'}[modality]
      raise UserError(
          f'{who}={workdir} was trained with model.modalities={got!r}; a '
          f'{modality} teacher is a {modality}-only model (train one with '
          f'configs/parallelnet.py:{variant}).')
    self.modality = modality
    self.workdir = workdir
    self.config = config
    self.classes = tuple(config.dataset.classes)
    self.description = f'workdir {paths.abspath(workdir)} ({which}, step {step})'
    c = config.input
    if modality == 'speech':
      self.input_spec = dict(kind='spectrogram', sample_rate=int(c.sample_rate),
                             n_fft=int(c.n_fft), hop_length=int(c.hop_length),
                             n_mels=int(c.n_mels),
                             num_frames=int(c.num_frames),
                             duration_s=float(c.duration_s))
    else:
      # 'auto' resolves as in the input pipeline (the weights' scaling).
      self.input_spec = dict(kind='image', image_size=int(c.image_size),
                             image_scaling=scaling_table.resolve_scaling(config))
    self._predictor = inference.Predictor(model, variables, step=step,
                                          batch_size=batch_size, mesh=mesh)
    self.mesh = self._predictor.mesh
    self.batch_size = self._predictor.batch_size
    self._other = _other_shape(config, modality)

  def predict(self, inputs):
    """(n, ...) decoded inputs -> (n, len(classes)) float32 probabilities."""
    x = np.asarray(inputs, np.float32)
    # Unimodal models take both inputs and ignore one: zeros stand in.
    pair = (self._other, x) if self.modality == 'speech' else (x, self._other)
    return self._predictor.predict(*pair)


def _other_shape(config, modality):
  """Per-example shape of the input the unimodal model ignores."""
  c = config.input
  if modality == 'speech':
    return (int(c.image_size), int(c.image_size), 3)
  return (int(c.num_frames), int(c.n_mels), 1)
