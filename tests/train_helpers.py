"""Helpers for the tests: the one tiny config, quick variables, the unit
loop's share of a parameter matrix, and an in-memory stand-in for
input_pipeline.

`ArrayData` has the same `train_batches` / `eval_batches` / `num_examples` /
`steps_per_epoch` contract as input_pipeline (global jax.Arrays sharded on the mesh's data
axis, epoch order a pure function of (seed, epoch), eval batches padded with
mask=False), over small random arrays whose label is readable from the image,
so a tiny model can learn it.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parallelnet import mesh as mesh_lib
from parallelnet.models import common


# The tests' one small model, as dotted config fields: `runlocal` at 1/32
# width with 8-wide features and heads, VGG-16 in both trunks, and a learning
# rate that moves it within a few steps. tests/test_study.py passes it on the
# command line (--config.<field>=...).
TINY = {'model.width': 1 / 32, 'model.feature_dim': 8, 'model.head_dim': 8,
        'model.speech_backbone': 'vgg16', 'model.image_backbone': 'vgg16',
        'train.learning_rate': 3e-3, 'train.max_steps_per_epoch': -1}


def tiny_config(arg='', num_classes=4, data_dir=None, synthetic_size=48):
  """`runlocal` shrunk to TINY for 3 epochs, then the variants in `arg`.

  num_classes: keep the first few classes (ArrayData's labels); None keeps
  them all. data_dir: read the synthetic_sier corpus of `synthetic_size`
  examples built there (all classes) instead of in-memory data.
  """
  from configs import parallelnet  # pylint: disable=g-import-not-at-top
  c = parallelnet.get_config('runlocal')
  for field, value in TINY.items():
    group, name = field.split('.')
    c[group][name] = value
  c.train.num_epochs = 3
  c.train.log_every_steps = 2
  for variant in filter(None, arg.split(',')):
    parallelnet.apply_variant(c, variant.strip())
  if data_dir is not None:
    c.dataset.name = 'synthetic_sier'
    c.dataset.data_dir = data_dir
    c.dataset.synthetic_size = synthetic_size
  elif num_classes is not None:
    c.dataset.classes = c.dataset.classes[:num_classes]
  return c


# An N2 trunk far cheaper to compile than VGG, for tests whose subject is
# not the trunk: conftest.py's `tiny_trunk` fixture registers it in the
# test process, register_tiny_trunk() in a worker process.
TINY_TRUNK = 'tiny_bn'


class TinyBNTrunk(nn.Module):
  """One strided conv and a BatchNorm, as the registry's trunks use it."""
  width: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), strides=(4, 4), name='conv')(x)
    return nn.relu(common.batch_norm(train, self.dtype, 'bn')(x))


def tiny_trunk(width, dtype, **kwargs):
  """backbones' registry entry for TINY_TRUNK."""
  return TinyBNTrunk(width, dtype, **kwargs)


def register_tiny_trunk():
  """Registers TINY_TRUNK for good (a worker process's whole life)."""
  from parallelnet.models import backbones  # pylint: disable=g-import-not-at-top
  backbones._REGISTRY[TINY_TRUNK] = tiny_trunk  # pylint: disable=protected-access


def fast_first(params):
  """A parametrize list whose first case runs in the unit loop and the rest
  are `slow` (CI runs them all): each case compiles its own program. A
  tuple is one case's values for several argument names."""
  as_param = lambda p: pytest.param(*(p if isinstance(p, tuple) else (p,)),
                                    marks=pytest.mark.slow)
  return [params[0]] + [as_param(p) for p in params[1:]]


def quick_variables(init_fn, seed=0):
  """Variables shaped like `init_fn(key)`'s, filled from numpy.

  Compiling a random initialiser costs far more than the tests that use it
  (one threefry per leaf); the real initialisers are exercised by `proposed`.
  He-scaled normal kernels, small biases, BatchNorm scale near 1, running
  statistics (0, 1).
  """
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path[-1:])
    # device_put of numpy arrays: jnp.ones/asarray would compile a small
    # program for every new leaf shape.
    if name == "['var']":
      return jax.device_put(np.ones(s.shape, s.dtype))
    if name == "['mean']":
      return jax.device_put(np.zeros(s.shape, s.dtype))
    if len(s.shape) > 1:
      std = np.sqrt(2.0 / np.prod(s.shape[:-1]))
    else:
      std = 0.1
    x = rng.normal(0.0, std, s.shape) + (name == "['scale']")
    return jax.device_put(np.asarray(x, s.dtype))

  shapes = jax.eval_shape(init_fn, jax.random.key(seed))
  return jax.tree_util.tree_map_with_path(fill, shapes)


def keras_architecture(builder, input_shape):
  """keras.applications.<builder> without top or weights, for its
  architecture: zeros where Keras would draw random kernels (VarianceScaling,
  which Glorot and He subclass), which are a fifth of the build. For tests
  that compare layers or overwrite every weight."""
  keras = pytest.importorskip('keras')
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(keras.initializers.VarianceScaling, '__call__',
               lambda self, shape, dtype=None: keras.ops.zeros(shape, dtype))
    return getattr(keras.applications, builder)(
        weights=None, include_top=False, input_shape=input_shape)


class ArrayData:
  """In-memory splits: {'train': n, 'validation': n, 'test': n} examples."""

  def __init__(self, config, sizes=(32, 12, 12), seed=0, nan_at=None):
    rng = np.random.default_rng(seed)
    s, t, f = (config.input.image_size, config.input.num_frames,
               config.input.n_mels)
    c = len(config.dataset.classes)
    self.splits = {}
    for name, n in zip(('train', 'validation', 'test'), sizes):
      label = rng.integers(0, c, size=n).astype(np.int32)
      image = rng.random((n, s, s, 3), np.float32) * 0.5
      image[..., 0] += label[:, None, None] / c  # The class is in red.
      spec = rng.random((n, t, f, 1), np.float32)
      spec[:, :, :, 0] += (label[:, None, None] % 2) * 0.3
      self.splits[name] = dict(image=image, spectrogram=spec, label=label)
    self.nan_at = nan_at  # (epoch, batch index): a planted NaN image.

  @classmethod
  def per_fold(cls, config, **kw):
    """Data that changes with config.dataset.fold (for cross-validation)."""
    return cls(config, seed=1000 + config.dataset.fold, **kw)

  def num_examples(self, config, split):
    return len(self.splits[split]['label'])

  def steps_per_epoch(self, config):
    """As input_pipeline.steps_per_epoch: full batches, capped by
    config.train.max_steps_per_epoch when it is positive."""
    steps = self.num_examples(config, 'train') // int(config.train.batch_size)
    cap = int(config.train.get('max_steps_per_epoch', -1))
    return min(steps, cap) if cap > 0 else steps

  def _global(self, mesh, batch):
    sharding = mesh_lib.data_sharding(mesh)
    n = jax.process_count()
    i = jax.process_index()
    out = {}
    for k, v in batch.items():
      per = v.shape[0] // n
      out[k] = jax.make_array_from_process_local_data(
          sharding, v[i * per:(i + 1) * per], v.shape)
    return out

  def train_batches(self, config, mesh, *, epoch, start_step=0):
    split = self.splits['train']
    bs = config.train.batch_size
    order = np.random.default_rng([config.seed, epoch]).permutation(
        len(split['label']))
    for b in range(start_step, len(order) // bs):
      idx = order[b * bs:(b + 1) * bs]
      batch = {k: v[idx] for k, v in split.items()}
      if self.nan_at == (epoch, b):
        for k in ('image', 'spectrogram'):
          batch[k] = batch[k].copy()
          batch[k][0, 0, 0, 0] = np.nan
      yield self._global(mesh, batch)

  def eval_batches(self, config, mesh, split='validation'):
    data = self.splits[split]
    bs = config.train.eval_batch_size
    n = len(data['label'])
    for start in range(0, n, bs):
      batch = {k: v[start:start + bs] for k, v in data.items()}
      m = len(batch['label'])
      mask = np.arange(bs) < m
      batch = {k: np.concatenate([v, np.zeros((bs - m,) + v.shape[1:],
                                              v.dtype)])
               for k, v in batch.items()}
      batch['mask'] = mask
      yield self._global(mesh, batch)
