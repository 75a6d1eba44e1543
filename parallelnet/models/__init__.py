"""Model registry: `get_model(config)`, backbones, initialisation, counting."""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from parallelnet.models import pretrained
from parallelnet.models.backbones import get_backbone
from parallelnet.models.backbones import known_backbones
from parallelnet.models.parallelnet import ParallelNet

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str) -> Any:
  """The jnp dtype for `config.model.dtype`."""
  if name not in DTYPES:
    raise ValueError(f'model.dtype={name!r}; expected one of {tuple(DTYPES)}.')
  return DTYPES[name]


def _parallelnet(config) -> nn.Module:
  m = config.model
  return ParallelNet(
      num_classes=len(config.dataset.classes),
      modalities=m.modalities,
      crossing=m.crossing,
      speech_backbone=m.speech_backbone,
      image_backbone=m.image_backbone,
      width=m.width,
      feature_dim=m.feature_dim,
      head_dim=m.head_dim,
      dtype=compute_dtype(m.dtype),
      bn_momentum=m.bn_momentum,
      speech_scaling=pretrained.speech_input_scaling(config),
      frozen_trunks=frozen_trunks(config))


def frozen_trunks(config) -> bool:
  """True when training leaves the N2 trunks as they are
  (train.trunk_lr_multiplier = 0): the model then runs their BatchNorms in
  inference mode, as Keras does for trainable=False."""
  train = config.get('train') or {}
  return float(train.get('trunk_lr_multiplier', 1.0)) == 0.0


# config.model.name -> factory(config) -> nn.Module
_MODELS: dict[str, Callable[[Any], nn.Module]] = {'parallelnet': _parallelnet}


# One instance per distinct model (Flax modules compare and hash by their
# fields): jitted functions see `model.apply` as static (a TrainState's
# apply_fn), and bound methods of two equal instances differ, so a second
# run in one process (cv folds, study rows, a notebook) would trace and
# compile its steps again.
_INSTANCES: dict[nn.Module, nn.Module] = {}


def get_model(config) -> nn.Module:
  """The model named `config.model.name`, built from `config`; equal
  configs give the same instance."""
  name = config.model.name
  if name not in _MODELS:
    raise ValueError(f'Unknown model.name {name!r}; known models: '
                     f'{", ".join(sorted(_MODELS))}.')
  model = _MODELS[name](config)
  return _INSTANCES.setdefault(model, model)


def dummy_inputs(config, batch: int = 1):
  """Zero image (B, S, S, 3) and spectrogram (B, num_frames, n_mels, 1)."""
  s = config.input.image_size
  image = jnp.zeros((batch, s, s, 3), jnp.float32)
  spectrogram = jnp.zeros(
      (batch, config.input.num_frames, config.input.n_mels, 1), jnp.float32)
  return image, spectrogram


@functools.lru_cache(maxsize=16)
def _jitted_init(model: nn.Module, image_shape, spectrogram_shape):
  """jit(rng -> {'params', 'batch_stats'}), one per model and input shape,
  so that initialising the same model again reuses its compilation."""

  @jax.jit
  def init(rng):
    variables = model.init(rng, jnp.zeros(image_shape, jnp.float32),
                           jnp.zeros(spectrogram_shape, jnp.float32),
                           train=False)
    return {'params': variables['params'],
            'batch_stats': variables.get('batch_stats', {})}

  return init


@functools.lru_cache(maxsize=16)
def _compiled_init_cpu(init, rng_type):
  """`init` compiled at LLVM level 0. On CPU, LLVM spends minutes optimising
  the ~2 threefry hashes per parameter (paper size: ~3 min) for code that
  runs once; level 0 compiles about 4x faster. Integer hashing is exact at
  any level."""
  return init.lower(rng_type).compile(
      compiler_options={'xla_backend_optimization_level': 0})


def init_variables(model: nn.Module, config, rng,
                   load_pretrained: bool = True) -> dict:
  """{'params', 'batch_stats'} of `model` for the config's input shapes.

  Random init (jitted), then, if `load_pretrained` and
  `config.model.speech_weights` / `image_weights` (or
  `model.pretrained`) name files, the N2 trunks are replaced by their weights
  (see models/pretrained.py). With load_pretrained=False it works under
  `jax.eval_shape` (nothing is allocated then).
  """
  if load_pretrained:
    pretrained.check_required(config)
  image, spectrogram = dummy_inputs(config)
  init = _jitted_init(model, image.shape, spectrogram.shape)
  if isinstance(rng, jax.core.Tracer) or jax.default_backend() != 'cpu':
    variables = init(rng)
  else:
    variables = _compiled_init_cpu(
        init, jax.ShapeDtypeStruct(rng.shape, rng.dtype))(rng)
  if load_pretrained and any(p for *_, p in pretrained.trunk_weights(config)):
    variables = pretrained.load_into(variables, config)
  return variables


def count_params(tree) -> int:
  """Total number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
  return int(sum(np.prod(x.shape, dtype=np.int64)
                 for x in jax.tree_util.tree_leaves(tree)))


def count_by_branch(tree) -> dict[str, int]:
  """Scalars per top-level entry of a variable collection, in order."""
  return {name: count_params(sub) for name, sub in tree.items()}


__all__ = [
    'ParallelNet', 'compute_dtype', 'count_by_branch', 'count_params',
    'dummy_inputs', 'frozen_trunks', 'get_backbone', 'get_model',
    'init_variables', 'known_backbones',
]
