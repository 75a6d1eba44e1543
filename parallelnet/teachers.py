"""Teachers for dataset construction (paper §3.1): training workdirs as SER/IER.

A teacher is a speech-only or image-only model of this codebase (e.g. trained
with configs/parallelnet.py:ser_only or :ier_only), restored from its workdir
alone with the config it was trained with (checkpointing.restore_from_workdir),
so the construction decodes files with the teacher's own preprocessing
(sample rate, STFT, mel bins, frames, image size and scaling). Inference is
batched and jitted on the mesh like evaluation: parameters replicated, the
batch sharded on the 'data' axis, padded to a fixed size (one compilation).

It satisfies the teacher interface of input_pipeline.construct (modality,
classes, input_spec, description, predict); the construction library never
imports this module, only its command line does.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from parallelnet.models import scaling as scaling_table
from parallelnet.core.errors import UserError
from parallelnet import checkpointing
from parallelnet import mesh as mesh_lib


class WorkdirTeacher:
  """A unimodal training workdir as a teacher: predict -> probabilities."""

  def __init__(self, workdir, modality, *, which='best', batch_size=32,
               mesh=None):
    if modality not in ('speech', 'image'):
      raise ValueError(f'modality={modality!r}; expected speech or image.')
    who = {'speech': '--ser_teacher', 'image': '--ier_teacher'}[modality]
    if not os.path.isdir(workdir):
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
    self.description = f'workdir {os.path.abspath(workdir)} ({which}, step {step})'
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
    self.mesh = mesh or mesh_lib.make_mesh()
    n_dev = self.mesh.devices.size
    self.batch_size = -(-int(batch_size) // n_dev) * n_dev
    self.variables = jax.device_put(variables, mesh_lib.replicated(self.mesh))
    self._sharding = mesh_lib.data_sharding(self.mesh)
    self._probs = _jitted_probs(model, modality, self.mesh,
                                _other_shape(config, modality))

  def predict(self, inputs):
    """(n, ...) decoded inputs -> (n, len(classes)) float32 probabilities."""
    x = np.asarray(inputs, np.float32)
    out = []
    for start in range(0, len(x), self.batch_size):
      part = x[start:start + self.batch_size]
      pad = self.batch_size - len(part)
      if pad:
        part = np.concatenate([part, np.zeros((pad,) + part.shape[1:],
                                              part.dtype)])
      batch = jax.device_put(part, self._sharding)
      out.append(np.asarray(self._probs(self.variables, batch))[:len(part) - pad])
    return np.concatenate(out) if out else np.zeros((0, len(self.classes)))


def _other_shape(config, modality):
  """Per-example shape of the input the unimodal model ignores."""
  c = config.input
  if modality == 'speech':
    return (c.image_size, c.image_size, 3)
  return (c.num_frames, c.n_mels, 1)


@functools.lru_cache(maxsize=8)
def _jitted_probs(model, modality, mesh, other_shape):
  def probs(variables, x):
    # Unimodal models take both inputs and ignore one: a zero stand-in.
    other = jnp.zeros((x.shape[0],) + other_shape, x.dtype)
    image, spectrogram = (other, x) if modality == 'speech' else (x, other)
    logits, _ = model.apply(variables, image, spectrogram, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  return jax.jit(probs, in_shardings=(mesh_lib.replicated(mesh),
                                      mesh_lib.data_sharding(mesh)),
                 out_shardings=mesh_lib.replicated(mesh))
