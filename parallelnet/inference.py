"""The one inference path: a restored workdir's class probabilities.

`restore` reads a workdir's best (or latest) parameters; `probabilities_fn`
is the model's softmax, one function object per model, so every caller's
jit (or DnCShap's) compiles it once; `Predictor` runs it on the ('data',)
mesh like evaluation: parameters replicated, each batch sharded on its
leading axis (every process hands in its own rows,
`jax.make_array_from_process_local_data`) and padded to a fixed size, so one
compilation serves every batch. Used by --mode=predict, the construction's
teachers and the explain driver.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from parallelnet import checkpointing
from parallelnet import mesh as mesh_lib


def restore(config, workdir, which='best'):
  """(model, {'params', 'batch_stats'}, step) of `workdir`'s `which`
  checkpoint, for `config` (checkpointing.restore_for_inference)."""
  return checkpointing.restore_for_inference(config, workdir, which)


@functools.lru_cache(maxsize=16)
def probabilities_fn(model):
  """(variables, images, spectrograms) -> float32 softmax of the model's
  logits (inference mode). Cached per model: the same function object gives
  the same jit cache entry."""
  def probabilities(variables, images, spectrograms):
    logits, _ = model.apply(variables, images, spectrograms, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return probabilities


@functools.lru_cache(maxsize=16)
def _jitted(model, mesh):
  return jax.jit(probabilities_fn(model),
                 out_shardings=mesh_lib.data_sharding(mesh))


def pad_rows(x, n):
  """`x` with zero rows appended up to `n` rows."""
  x = np.asarray(x)
  if len(x) >= n:
    return x
  return np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])


def local_rows(x):
  """This process's rows of a batch-sharded global array, in order."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # Replicas of a shard (other mesh axes).
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)


class Predictor:
  """A model's probabilities on the mesh, jit-compiled once.

  `batch_size` is the global batch: a multiple of the device count (rounded
  up) and of the process count; each process hands in
  `batch_size // process_count` rows per batch.
  """

  def __init__(self, model, variables, *, batch_size, mesh=None, step=None):
    self.model = model
    self.step = step
    self.mesh = mesh or mesh_lib.make_mesh()
    n_dev = self.mesh.devices.size
    self.batch_size = -(-int(batch_size) // n_dev) * n_dev
    if self.batch_size % jax.process_count():
      raise ValueError(f'batch size {self.batch_size} is not divisible by '
                       f'the {jax.process_count()} processes.')
    self.local_batch = self.batch_size // jax.process_count()
    self.variables = jax.device_put(variables, mesh_lib.replicated(self.mesh))
    self._sharding = mesh_lib.data_sharding(self.mesh)
    self._fn = _jitted(model, self.mesh)
    self._zeros = {}

  @classmethod
  def restore(cls, config, workdir, which='best', **kwargs):
    """The Predictor of `workdir`'s `which` checkpoint (see `restore`)."""
    model, variables, step = restore(config, workdir, which)
    return cls(model, variables, step=step, **kwargs)

  def _global(self, local):
    return jax.make_array_from_process_local_data(self._sharding, local)

  def _zero_input(self, shape):
    """A device batch of zeros: the input a unimodal model ignores."""
    if shape not in self._zeros:
      self._zeros[shape] = self._global(
          np.zeros((self.local_batch,) + tuple(shape), np.float32))
    return self._zeros[shape]

  def batch(self, images, spectrograms):
    """Probabilities of one batch of this process's `local_batch` rows
    (padding included); returns this process's rows. Either input may be
    an example shape (a tuple) instead: zeros of that shape stand in."""
    inputs = [self._zero_input(x) if isinstance(x, tuple)
              else self._global(np.asarray(x, np.float32))
              for x in (images, spectrograms)]
    return local_rows(self._fn(self.variables, *inputs))

  def predict(self, images, spectrograms):
    """(n, num_classes) probabilities of this process's n rows, in padded
    batches; as in `batch`, either input may be an example shape."""
    n = next(len(x) for x in (images, spectrograms)
             if not isinstance(x, tuple))
    out = []
    for start in range(0, n, self.local_batch):
      part = [x if isinstance(x, tuple) else
              pad_rows(np.asarray(x[start:start + self.local_batch],
                                  np.float32), self.local_batch)
              for x in (images, spectrograms)]
      out.append(self.batch(*part)[:min(self.local_batch, n - start)])
    if out:
      return np.concatenate(out)
    return np.zeros((0, self.model.num_classes), np.float32)
