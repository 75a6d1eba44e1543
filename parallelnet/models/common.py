"""Layer helpers shared by the backbones and ParallelNet (Keras conventions)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# Keras initialises Conv2D/Dense kernels with glorot_uniform and biases with
# zeros; we do the same so that training from scratch matches the paper's setup.
KERNEL_INIT = nn.initializers.xavier_uniform()


def scaled(channels: int, width: float) -> int:
  """A channel count times the width multiplier, at least 1."""
  return max(1, int(round(channels * width)))


def batch_norm(train: bool, dtype: Any, name: str, epsilon: float = 1e-3,
               momentum: float = 0.99) -> nn.BatchNorm:
  """BatchNorm with Keras defaults (momentum 0.99, epsilon 1e-3).

  Statistics are reduced in float32 whatever `dtype` is; params are float32.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=momentum,
                      epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


def correct_pad(size: tuple[int, int], kernel: int):
  """Keras' `imagenet_utils.correct_pad`: zero padding before a stride-2 conv.

  Pads k//2 on the bottom/right and one less on the top/left of even sides,
  so that 'valid' stride-2 convolutions see the same windows as Keras.
  """
  c = kernel // 2
  return tuple((c - (1 - n % 2), c) for n in size)


def zero_pad(x, pad):
  """Zero-pads the two spatial axes of NHWC `x` by ((top, bottom), (l, r))."""
  return jnp.pad(x, ((0, 0),) + tuple(pad) + ((0, 0),))


class MaxPool(nn.Module):
  """Max pool; 2x2, stride = window, 'VALID' by default (Keras' defaults).

  A module rather than a bare function so that it is named like the Keras
  layer it mirrors and shows up in the call order (tests compare it).
  Non-overlapping 'VALID' pools (VGG's) run as `tiled_max_pool`.
  """

  window: int = 2
  stride: int | None = None  # None: the window size, like Keras.
  padding: str = 'VALID'

  @nn.compact
  def __call__(self, x):
    w = self.window
    s = self.stride or w
    if self.padding == 'VALID' and (x.shape[-3] < w or x.shape[-2] < w):
      raise ValueError(
          f'{"/".join(self.scope.path)}: input spatial size '
          f'{x.shape[-3:-1]} is smaller than the {w}x{w} pool window; the '
          'input is too small for this network.')
    return self.pool(x, (w, w), (s, s))

  def pool(self, x, window, strides):
    if self.padding == 'VALID' and window == strides:
      return tiled_max_pool(x, window[0], window[1])
    return nn.max_pool(x, window, strides=strides, padding=self.padding)


def tiled_max_pool(x, wh: int, ww: int):
  """'VALID' max pool whose stride equals its window, as a reshape and a max.

  Same values as `nn.max_pool(x, (wh, ww), (wh, ww), 'VALID')` on `(..., H, W,
  C)`: rows and columns past the last whole window are dropped, then each
  window becomes two axes of its own. Why: the gradient of this max is an
  elementwise mask, while nn.max_pool's (select_and_scatter) lowers on CPU to
  iota + scatter, ~35% of the demo model's training step (BENCHMARKS.md). At
  ties the gradient is shared equally among the tied inputs instead of going
  to the first one; after ReLU such ties are zeros whose gradient ReLU drops.
  """
  *lead, h, w, c = x.shape
  rows, cols = h // wh, w // ww
  x = x[..., :rows * wh, :cols * ww, :]
  x = x.reshape(*lead, rows, wh, cols, ww, c)
  return jnp.max(x, axis=(-4, -2))


class AvgPool(MaxPool):
  """Average pool; like Keras, 'SAME' padding averages over real pixels only."""

  def pool(self, x, window, strides):
    return nn.avg_pool(x, window, strides=strides, padding=self.padding,
                       count_include_pad=False)
