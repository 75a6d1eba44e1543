"""ResNet-34/50/101 trunks (no classifier), named as Keras Applications.

ResNet-50 and ResNet-101 mirror `keras.applications.ResNet50/ResNet101`
(ResNet v1, bottleneck blocks, biased convs, BatchNorm epsilon 1.001e-5,
glorot_uniform kernels) layer for layer, with Keras' layer names
(`conv1_conv`, `conv2_block1_0_conv`, ..., `conv5_block3_3_bn`).
Keras Applications has no ResNet-34; ours is He et al.'s basic-block network
(two 3x3 convs per block, a 1x1 projection shortcut where the shape changes)
in the same stem, naming and conventions.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from parallelnet.models.common import batch_norm
from parallelnet.models.common import KERNEL_INIT
from parallelnet.models.common import MaxPool
from parallelnet.models.common import scaled
from parallelnet.models.common import zero_pad

EPSILON = 1.001e-5  # Keras ResNet's BatchNorm epsilon.

# Blocks per stage conv2..conv5 (filters 64, 128, 256, 512).
RESNET34_BLOCKS = (3, 4, 6, 3)
RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET101_BLOCKS = (3, 4, 23, 3)


class ResNet(nn.Module):
  """ResNet v1 trunk; `bottleneck` picks 1x1-3x3-1x1 (x4) or 3x3-3x3 blocks."""

  blocks: Sequence[int]
  bottleneck: bool = True
  width: float = 1.0
  dtype: Any = jnp.float32

  def _conv(self, features, kernel, strides, name, padding='SAME'):
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                   padding=padding, kernel_init=KERNEL_INIT, dtype=self.dtype,
                   param_dtype=jnp.float32, name=name)

  def _bn(self, train, name):
    return batch_norm(train, self.dtype, name, epsilon=EPSILON)

  def _block(self, x, train, filters, stride, name):
    out = 4 * filters if self.bottleneck else filters
    # Keras' bottleneck stacks always project in their first block; the
    # basic-block network projects only where the shape changes.
    first = name.endswith('_block1')
    if (self.bottleneck and first) or stride != 1 or x.shape[-1] != out:
      shortcut = self._conv(out, 1, stride, f'{name}_0_conv')(x)
      shortcut = self._bn(train, f'{name}_0_bn')(shortcut)
    else:
      shortcut = x
    if self.bottleneck:
      x = self._conv(filters, 1, stride, f'{name}_1_conv')(x)
      x = nn.relu(self._bn(train, f'{name}_1_bn')(x))
      x = self._conv(filters, 3, 1, f'{name}_2_conv')(x)
      x = nn.relu(self._bn(train, f'{name}_2_bn')(x))
      x = self._conv(out, 1, 1, f'{name}_3_conv')(x)
      x = self._bn(train, f'{name}_3_bn')(x)
    else:
      x = self._conv(filters, 3, stride, f'{name}_1_conv')(x)
      x = nn.relu(self._bn(train, f'{name}_1_bn')(x))
      x = self._conv(filters, 3, 1, f'{name}_2_conv')(x)
      x = self._bn(train, f'{name}_2_bn')(x)
    return nn.relu(shortcut + x)

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    x = zero_pad(x, ((3, 3), (3, 3)))  # conv1_pad
    x = self._conv(scaled(64, self.width), 7, 2, 'conv1_conv',
                   padding='VALID')(x)
    x = nn.relu(self._bn(train, 'conv1_bn')(x))
    x = zero_pad(x, ((1, 1), (1, 1)))  # pool1_pad
    x = MaxPool(window=3, stride=2, name='pool1_pool')(x)
    for s, n in enumerate(self.blocks):
      filters = scaled(64 * 2**s, self.width)
      for b in range(1, n + 1):
        stride = 2 if (b == 1 and s > 0) else 1
        x = self._block(x, train, filters, stride, f'conv{s + 2}_block{b}')
    return x
