"""Inception-v3 trunk (no classifier), layer for layer as Keras Applications.

The paper's 'Inception 3a/4a' ablation rows (§4.3) name GoogLeNet blocks; as
PAPER.md, "Crossing positions" says, Inception-v3 is the usual stand-in. This mirrors
`keras.applications.InceptionV3(include_top=False)`: the five-conv stem with
two max pools, then mixed0..mixed10. Each conv is Keras' `conv2d_bn`: a
biasless conv, BatchNorm without scale (beta only), ReLU.

Keras leaves these layers unnamed, so their names are the auto-generated
`conv2d`, `conv2d_1`, ... and `batch_normalization`, ... in creation order (as
in a fresh Keras session); ours are the same names in the same order, which
maps a weight file one to one. Pools are `max_pooling2d[_k]` and
`average_pooling2d[_k]`. The input must be at least 75x75 (as in Keras).
`width` multiplies every channel count.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from parallelnet.models.common import AvgPool
from parallelnet.models.common import KERNEL_INIT
from parallelnet.models.common import MaxPool
from parallelnet.models.common import scaled

MIN_SIZE = 75


def _auto_name(base, k):
  """Keras' auto name of the k-th layer of a kind: base, base_1, base_2..."""
  return base if k == 0 else f'{base}_{k}'


class InceptionV3(nn.Module):
  """Inception-v3 trunk; see the module docstring."""

  width: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.shape[1] < MIN_SIZE or x.shape[2] < MIN_SIZE:
      raise ValueError(f'inception_v3 needs inputs of at least {MIN_SIZE}x'
                       f'{MIN_SIZE}; got {x.shape[1:3]}.')
    counts = {'conv': 0, 'max': 0, 'avg': 0}

    def conv_bn(x, filters, rows, cols, strides=1, padding='SAME'):
      k = counts['conv']
      counts['conv'] += 1
      x = nn.Conv(scaled(filters, self.width), (rows, cols),
                  strides=(strides, strides), padding=padding, use_bias=False,
                  kernel_init=KERNEL_INIT, dtype=self.dtype,
                  param_dtype=jnp.float32, name=_auto_name('conv2d', k))(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.99,
                       epsilon=1e-3, use_scale=False, dtype=self.dtype,
                       param_dtype=jnp.float32,
                       name=_auto_name('batch_normalization', k))(x)
      return nn.relu(x)

    def max_pool(x):
      k = counts['max']
      counts['max'] += 1
      return MaxPool(window=3, stride=2,
                     name=_auto_name('max_pooling2d', k))(x)

    def avg_pool(x):
      k = counts['avg']
      counts['avg'] += 1
      return AvgPool(window=3, stride=1, padding='SAME',
                     name=_auto_name('average_pooling2d', k))(x)

    cat = lambda *xs: jnp.concatenate(xs, axis=-1)
    x = jnp.asarray(x, self.dtype)
    # Stem.
    x = conv_bn(x, 32, 3, 3, strides=2, padding='VALID')
    x = conv_bn(x, 32, 3, 3, padding='VALID')
    x = conv_bn(x, 64, 3, 3)
    x = max_pool(x)
    x = conv_bn(x, 80, 1, 1, padding='VALID')
    x = conv_bn(x, 192, 3, 3, padding='VALID')
    x = max_pool(x)
    # mixed0..mixed2: 35x35 blocks.
    for pool_filters in (32, 64, 64):
      b1 = conv_bn(x, 64, 1, 1)
      b5 = conv_bn(conv_bn(x, 48, 1, 1), 64, 5, 5)
      b3 = conv_bn(conv_bn(conv_bn(x, 64, 1, 1), 96, 3, 3), 96, 3, 3)
      bp = conv_bn(avg_pool(x), pool_filters, 1, 1)
      x = cat(b1, b5, b3, bp)
    # mixed3: reduction.
    b3 = conv_bn(x, 384, 3, 3, strides=2, padding='VALID')
    b3d = conv_bn(conv_bn(x, 64, 1, 1), 96, 3, 3)
    b3d = conv_bn(b3d, 96, 3, 3, strides=2, padding='VALID')
    x = cat(b3, b3d, max_pool(x))
    # mixed4..mixed7: 17x17 blocks with factorised 7x7 convs.
    for f in (128, 160, 160, 192):
      b1 = conv_bn(x, 192, 1, 1)
      b7 = conv_bn(conv_bn(conv_bn(x, f, 1, 1), f, 1, 7), 192, 7, 1)
      b7d = conv_bn(conv_bn(x, f, 1, 1), f, 7, 1)
      b7d = conv_bn(conv_bn(b7d, f, 1, 7), f, 7, 1)
      b7d = conv_bn(b7d, 192, 1, 7)
      bp = conv_bn(avg_pool(x), 192, 1, 1)
      x = cat(b1, b7, b7d, bp)
    # mixed8: reduction.
    b3 = conv_bn(conv_bn(x, 192, 1, 1), 320, 3, 3, strides=2, padding='VALID')
    b7 = conv_bn(conv_bn(conv_bn(x, 192, 1, 1), 192, 1, 7), 192, 7, 1)
    b7 = conv_bn(b7, 192, 3, 3, strides=2, padding='VALID')
    x = cat(b3, b7, max_pool(x))
    # mixed9, mixed10: 8x8 blocks with split 1x3 / 3x1 convs.
    for _ in range(2):
      b1 = conv_bn(x, 320, 1, 1)
      b3 = conv_bn(x, 384, 1, 1)
      b3 = cat(conv_bn(b3, 384, 1, 3), conv_bn(b3, 384, 3, 1))
      b3d = conv_bn(conv_bn(x, 448, 1, 1), 384, 3, 3)
      b3d = cat(conv_bn(b3d, 384, 1, 3), conv_bn(b3d, 384, 3, 1))
      bp = conv_bn(avg_pool(x), 192, 1, 1)
      x = cat(b1, b3, b3d, bp)
    return x
