"""Missing modalities: the model's "missing" input and modality dropout.

A pair without its image or its speech is given to the model with that
input replaced by `missing_inputs`: zeros in model-input space. For speech,
zero is silence (log-mel dB mapped to [0, 1], 0 = -80 dB); for the image it
is what the pixel scaling maps to 0 (black under 'unit', the ImageNet mean
colour under 'caffe'/'torch', mid-grey under 'tf'): a neutral input that
needs no training data and no file, and that DnCShap's 'zeros' baseline
(PAPER.md, "DnCShap", Algorithm 1) already uses for an absent player.
DESIGN.md, "Missing modalities", gives the measurement behind the choice.

Modality dropout (`config.train.modality_dropout`) trains for it: each
training example, with probability `rate`, loses one modality, the image
with probability `split` and the speech otherwise. Evaluation and test use
complete pairs.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from parallelnet.core import errors
from parallelnet import checkpointing

MISSING = ('image', 'speech')  # The modality a pair may lack.
MISSING_VALUE = 0.0  # Model-input value of an absent modality.


def missing_inputs(config) -> dict:
  """{'image': (S, S, 3), 'spectrogram': (T, F, 1)} float32: what the model
  reads in place of an absent modality."""
  s = int(config.input.image_size)
  t, f = int(config.input.num_frames), int(config.input.n_mels)
  return dict(image=np.full((s, s, 3), MISSING_VALUE, np.float32),
              spectrogram=np.full((t, f, 1), MISSING_VALUE, np.float32))


def _probability(config, field, default):
  value = config.train.get(field, default)
  try:
    p = float(value)
  except (TypeError, ValueError):
    p = math.nan
  if not 0.0 <= p <= 1.0:
    raise errors.UserValueError(
        f'config.train.{field}={value!r}; it must be a probability in [0, 1].')
  return p


def dropout_settings(config) -> tuple[float, float]:
  """(rate, split) of config.train.modality_dropout(_split), checked."""
  return (_probability(config, 'modality_dropout', 0.0),
          _probability(config, 'modality_dropout_split', 0.5))


def apply_modality_dropout(batch: dict, rng: jax.Array, rate: float,
                           split: float, missing: dict | None = None) -> dict:
  """`batch` with, per example, the image (probability rate·split) or the
  speech (rate·(1 - split)) replaced by `missing` (default zeros, i.e.
  `missing_inputs`). Pure and jittable; rate 0 returns `batch` itself."""
  if rate <= 0.0:
    return batch
  image, speech = batch['image'], batch['spectrogram']
  drop_key, which_key = jax.random.split(rng)
  n = image.shape[0]
  drop = jax.random.bernoulli(drop_key, rate, (n,))
  image_side = jax.random.bernoulli(which_key, split, (n,))
  drop_image, drop_speech = drop & image_side, drop & ~image_side
  missing = missing or {}

  def fill(x, gone, value):
    value = (jnp.full(x.shape[1:], MISSING_VALUE, x.dtype) if value is None
             else jnp.asarray(value, x.dtype))
    return jnp.where(gone.reshape((n,) + (1,) * (x.ndim - 1)), value, x)

  return dict(batch, image=fill(image, drop_image, missing.get('image')),
              spectrogram=fill(speech, drop_speech,
                               missing.get('spectrogram')))


def replace_modality(images, spectrograms, which, missing):
  """(images, spectrograms) with modality `which` ('image' | 'speech' |
  '' for none) replaced by `missing` (a `missing_inputs` dict), numpy."""
  images, spectrograms = np.asarray(images), np.asarray(spectrograms)
  if which == 'image':
    images = np.broadcast_to(missing['image'], images.shape).copy()
  elif which == 'speech':
    spectrograms = np.broadcast_to(missing['spectrogram'],
                                   spectrograms.shape).copy()
  elif which:
    raise ValueError(f'which={which!r}; expected image, speech or "".')
  return images, spectrograms


def trained_rate(config, workdir) -> float:
  """The modality dropout the workdir's model was trained with (its
  config.json), else `config`'s."""
  try:
    config = checkpointing.read_config(workdir)
  except errors.UserError:
    pass
  return float(config.train.get('modality_dropout', 0.0) or 0.0)


def untrained_warning(config, workdir) -> str | None:
  """The line to show when a model trained without modality dropout is asked
  about a pair that lacks a modality; None when it was trained for it."""
  if trained_rate(config, workdir) > 0:
    return None
  return ('The model in %s was trained without modality dropout '
          '(config.train.modality_dropout=0): its answers for pairs that '
          'lack a modality are less reliable than for complete pairs.'
          % workdir)
