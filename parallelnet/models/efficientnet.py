"""EfficientNet-B0 trunk (no classifier), layer for layer as Keras Applications.

Mirrors `keras.applications.EfficientNetB0(include_top=False)`: stem conv,
16 MBConv blocks (expand 1x1, depthwise kxk, squeeze-excite, project 1x1,
stochastic-depth dropout and residual add), then `top_conv`; swish activations,
BatchNorm with Keras defaults. Every Flax submodule carries the Keras layer
name (`stem_conv`, `block2a_dwconv`, `top_bn`, ...), so an ImageNet weight file
maps one to one, except that a Keras DepthwiseConv2D kernel (k, k, C, 1) is a
Flax grouped-conv kernel (k, k, 1, C): transpose the last two axes on import.

Not included: Keras' in-model input Rescaling(1/255) and Normalization layers
(they have no trainable weights). The trunk reads whatever N2 feeds it; with
ImageNet weights, feed it inputs scaled as those layers would: 'torch'
scaling (parallelnet/models/scaling.py), which `image_scaling='auto'` selects.

`width` multiplies every channel count (at 1.0 these equal B0's
`round_filters`, all multiples of 8); the B0 depth is fixed.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from parallelnet.models.common import batch_norm
from parallelnet.models.common import correct_pad
from parallelnet.models.common import scaled
from parallelnet.models.common import zero_pad

# Keras' EfficientNet CONV_KERNEL_INITIALIZER.
CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal')
# The same for a depthwise kernel: Keras' fan_out of (k, k, C, 1) is k*k.
DEPTHWISE_INIT = nn.initializers.variance_scaling(
    2.0, 'fan_out', 'truncated_normal', in_axis=-1, out_axis=-2)

# (kernel, repeats, filters_in, filters_out, expand_ratio, strides) per stage,
# Keras' DEFAULT_BLOCKS_ARGS (id_skip=True, se_ratio=0.25 everywhere).
B0_STAGES = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
SE_RATIO = 0.25


class EfficientNet(nn.Module):
  """EfficientNet trunk; see the module docstring.

  Attributes:
    stages: per-stage block arguments (B0_STAGES).
    width: channel multiplier.
    drop_connect_rate: Keras' stochastic-depth rate, growing linearly over
      the blocks (0.2 in Keras). Active in train mode only; needs the
      'dropout' rng stream then.
    dtype: computation dtype; parameters are float32.
  """

  stages: Any = B0_STAGES
  width: float = 1.0
  drop_connect_rate: float = 0.2
  dtype: Any = jnp.float32

  def _conv(self, features, kernel, name, strides=1, padding='SAME',
            use_bias=False, groups=1, init=CONV_INIT):
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                   padding=padding, use_bias=use_bias,
                   feature_group_count=groups, kernel_init=init,
                   dtype=self.dtype, param_dtype=jnp.float32, name=name)

  def _block(self, x, train, name, kernel, filters_in, filters_out, expand,
             strides, drop_rate):
    inputs = x
    filters = filters_in * expand
    if expand != 1:
      x = self._conv(filters, 1, f'{name}expand_conv')(x)
      x = batch_norm(train, self.dtype, f'{name}expand_bn')(x)
      x = nn.swish(x)
    if strides == 2:
      x = zero_pad(x, correct_pad(x.shape[1:3], kernel))
      padding = 'VALID'
    else:
      padding = 'SAME'
    x = self._conv(filters, kernel, f'{name}dwconv', strides=strides,
                   padding=padding, groups=filters, init=DEPTHWISE_INIT)(x)
    x = batch_norm(train, self.dtype, f'{name}bn')(x)
    x = nn.swish(x)
    # Squeeze and excite.
    filters_se = max(1, int(filters_in * SE_RATIO))
    se = jnp.mean(x, axis=(1, 2), keepdims=True)
    se = nn.swish(self._conv(filters_se, 1, f'{name}se_reduce',
                             use_bias=True)(se))
    se = nn.sigmoid(self._conv(filters, 1, f'{name}se_expand',
                               use_bias=True)(se))
    x = x * se
    x = self._conv(filters_out, 1, f'{name}project_conv')(x)
    x = batch_norm(train, self.dtype, f'{name}project_bn')(x)
    if strides == 1 and filters_in == filters_out:
      if drop_rate > 0:
        # Keras: Dropout(noise_shape=(None, 1, 1, 1)), one coin per example.
        x = nn.Dropout(drop_rate, broadcast_dims=(1, 2, 3),
                       deterministic=not train, name=f'{name}drop')(x)
      x = x + inputs
    return x

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    x = zero_pad(x, correct_pad(x.shape[1:3], 3))
    x = self._conv(scaled(32, self.width), 3, 'stem_conv', strides=2,
                   padding='VALID')(x)
    x = nn.swish(batch_norm(train, self.dtype, 'stem_bn')(x))
    total = sum(s[1] for s in self.stages)
    b = 0
    for i, (kernel, repeats, f_in, f_out, expand, strides) in enumerate(
        self.stages):
      f_in, f_out = scaled(f_in, self.width), scaled(f_out, self.width)
      for j in range(repeats):
        if j > 0:
          strides, f_in = 1, f_out
        x = self._block(x, train, f'block{i + 1}{chr(j + 97)}_', kernel, f_in,
                        f_out, expand, strides,
                        self.drop_connect_rate * b / total)
        b += 1
    x = self._conv(scaled(1280, self.width), 1, 'top_conv')(x)
    return nn.swish(batch_norm(train, self.dtype, 'top_bn')(x))
