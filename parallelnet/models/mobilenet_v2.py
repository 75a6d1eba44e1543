"""MobileNetV2 trunk (no classifier), layer for layer as Keras Applications.

Mirrors `keras.applications.MobileNetV2(alpha=1.0, include_top=False)`:
`Conv1` (3x3, stride 2), 17 inverted residual blocks (`expanded_conv_*`, then
`block_{1..16}_*`: expand 1x1, depthwise 3x3, project 1x1, residual add where
shapes allow), `Conv_1` (1x1, 1280); ReLU6, BatchNorm momentum 0.999, biasless
convs, Keras layer names. A Keras DepthwiseConv2D kernel (k, k, C, 1) is a
Flax grouped-conv kernel (k, k, 1, C): transpose the last two axes on import.
`width` multiplies every channel count (at 1.0 Keras' alpha=1.0 counts).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from parallelnet.models.common import batch_norm
from parallelnet.models.common import correct_pad
from parallelnet.models.common import KERNEL_INIT
from parallelnet.models.common import scaled
from parallelnet.models.common import zero_pad

# (filters, stride, expansion) of blocks 0..16, as Keras builds them.
BLOCKS = (
    (16, 1, 1),
    (24, 2, 6), (24, 1, 6),
    (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6),
    (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
)


def relu6(x):
  return jnp.minimum(nn.relu(x), 6.0)


class MobileNetV2(nn.Module):
  """MobileNetV2 trunk; see the module docstring."""

  width: float = 1.0
  dtype: Any = jnp.float32

  def _conv(self, features, kernel, name, strides=1, padding='SAME',
            groups=1):
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                   padding=padding, use_bias=False, feature_group_count=groups,
                   kernel_init=KERNEL_INIT, dtype=self.dtype,
                   param_dtype=jnp.float32, name=name)

  def _bn(self, train, name):
    return batch_norm(train, self.dtype, name, momentum=0.999)

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    x = self._conv(scaled(32, self.width), 3, 'Conv1', strides=2)(x)
    x = relu6(self._bn(train, 'bn_Conv1')(x))
    for block_id, (filters, stride, expansion) in enumerate(BLOCKS):
      inputs = x
      filters = scaled(filters, self.width)
      if block_id:
        prefix = f'block_{block_id}_'
        x = self._conv(expansion * x.shape[-1], 1, f'{prefix}expand')(x)
        x = relu6(self._bn(train, f'{prefix}expand_BN')(x))
      else:
        prefix = 'expanded_conv_'
      if stride == 2:
        x = zero_pad(x, correct_pad(x.shape[1:3], 3))
      x = self._conv(x.shape[-1], 3, f'{prefix}depthwise', strides=stride,
                     padding='SAME' if stride == 1 else 'VALID',
                     groups=x.shape[-1])(x)
      x = relu6(self._bn(train, f'{prefix}depthwise_BN')(x))
      x = self._conv(filters, 1, f'{prefix}project')(x)
      x = self._bn(train, f'{prefix}project_BN')(x)
      if inputs.shape[-1] == filters and stride == 1:
        x = inputs + x
    x = self._conv(scaled(1280, self.width), 1, 'Conv_1')(x)
    return relu6(self._bn(train, 'Conv_1_bn')(x))
