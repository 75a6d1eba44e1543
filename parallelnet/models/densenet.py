"""DenseNet-121 trunk (no classifier), layer for layer as Keras Applications.

Mirrors `keras.applications.DenseNet121(include_top=False)`: 7x7 stem, four
dense blocks of 6, 12, 24, 16 conv blocks (BN-ReLU-1x1(128)-BN-ReLU-3x3(32),
concatenated onto the input), 0.5-compression transitions (BN-ReLU-1x1, 2x2
average pool), final BN-ReLU; biasless convs, BatchNorm epsilon 1.001e-5,
Keras layer names (`conv2_block1_1_conv`, `pool2_conv`, `bn`, ...).
`width` multiplies the stem width and the growth rate.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from parallelnet.models.common import AvgPool
from parallelnet.models.common import batch_norm
from parallelnet.models.common import KERNEL_INIT
from parallelnet.models.common import MaxPool
from parallelnet.models.common import scaled
from parallelnet.models.common import zero_pad

DENSENET121_BLOCKS = (6, 12, 24, 16)
GROWTH_RATE = 32
EPSILON = 1.001e-5


class DenseNet(nn.Module):
  """DenseNet trunk; see the module docstring."""

  blocks: Sequence[int] = DENSENET121_BLOCKS
  width: float = 1.0
  dtype: Any = jnp.float32

  def _conv(self, features, kernel, name, strides=1, padding='SAME'):
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                   padding=padding, use_bias=False, kernel_init=KERNEL_INIT,
                   dtype=self.dtype, param_dtype=jnp.float32, name=name)

  def _bn_relu(self, x, train, name):
    return nn.relu(batch_norm(train, self.dtype, name, epsilon=EPSILON)(x))

  @nn.compact
  def __call__(self, x, train: bool = False):
    growth = scaled(GROWTH_RATE, self.width)
    x = jnp.asarray(x, self.dtype)
    x = zero_pad(x, ((3, 3), (3, 3)))
    x = self._conv(scaled(64, self.width), 7, 'conv1_conv', strides=2,
                   padding='VALID')(x)
    x = self._bn_relu(x, train, 'conv1_bn')
    x = zero_pad(x, ((1, 1), (1, 1)))
    x = MaxPool(window=3, stride=2, name='pool1')(x)
    for s, n in enumerate(self.blocks):
      stage = f'conv{s + 2}'
      for i in range(1, n + 1):
        name = f'{stage}_block{i}'
        y = self._bn_relu(x, train, f'{name}_0_bn')
        y = self._conv(4 * growth, 1, f'{name}_1_conv')(y)
        y = self._bn_relu(y, train, f'{name}_1_bn')
        y = self._conv(growth, 3, f'{name}_2_conv')(y)
        x = jnp.concatenate([x, y], axis=-1)
      if s < len(self.blocks) - 1:  # Transition pool{s+2}.
        name = f'pool{s + 2}'
        x = self._bn_relu(x, train, f'{name}_bn')
        x = self._conv(int(x.shape[-1] * 0.5), 1, f'{name}_conv')(x)
        x = AvgPool(window=2, stride=2, name=f'{name}_pool')(x)
    return self._bn_relu(x, train, 'bn')
