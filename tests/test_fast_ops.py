"""CPU-friendly lowerings in the model: values and gradients match lax's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parallelnet.models import common

pytestmark = pytest.mark.usefixtures('fast_compile')


@pytest.mark.parametrize('shape,window', [
    ((2, 8, 8, 3), 2),
    ((2, 7, 9, 4), 2),   # Odd sides: the last row/column is dropped.
    ((1, 11, 6, 2), 3),  # 11 = 3*3 + 2 rows cropped, 6 = 3*2.
    ((3, 5, 5, 1), 5),
])
@pytest.mark.slow
def test_tiled_max_pool_matches_nn_max_pool(shape, window):
  x = jax.random.normal(jax.random.key(0), shape)
  w = (window, window)
  want = nn.max_pool(x, w, strides=w, padding='VALID')
  got = common.tiled_max_pool(x, window, window)
  assert got.shape == want.shape
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

  # Random normals have no ties, so both gradients pick the same elements.
  ct = jax.random.normal(jax.random.key(1), want.shape)
  g_want = jax.grad(lambda x: jnp.vdot(nn.max_pool(x, w, w, 'VALID'), ct))(x)
  g_got = jax.grad(
      lambda x: jnp.vdot(common.tiled_max_pool(x, window, window), ct))(x)
  np.testing.assert_array_equal(np.asarray(g_got), np.asarray(g_want))
  # The cropped rows/columns get no gradient.
  assert np.count_nonzero(np.asarray(g_got)) == want.size


def test_tiled_max_pool_splits_ties_equally():
  x = jnp.zeros((1, 2, 2, 1))
  g = jax.grad(lambda x: common.tiled_max_pool(x, 2, 2).sum())(x)
  np.testing.assert_allclose(np.asarray(g), 0.25)


@pytest.mark.parametrize('window,stride,padding,shape', [
    (2, None, 'VALID', (2, 9, 7, 3)),  # Tiled path, odd sides.
    (3, 2, 'VALID', (2, 9, 7, 3)),     # Overlapping: nn.max_pool.
    (2, None, 'SAME', (2, 9, 7, 3)),   # Padded: nn.max_pool.
])
def test_max_pool_module_matches_nn_max_pool(window, stride, padding, shape):
  x = jax.random.normal(jax.random.key(2), shape)
  pool = common.MaxPool(window=window, stride=stride, padding=padding)
  s = stride or window
  want = nn.max_pool(x, (window, window), (s, s), padding)
  got = pool.apply({}, x)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  uses_tiles = 'reshape' in str(jax.make_jaxpr(lambda x: pool.apply({}, x))(x))
  assert uses_tiles == (padding == 'VALID' and s == window)
