"""Layer helpers shared by the backbones and ParallelNet (Keras conventions)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


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
    return nn.max_pool(x, window, strides=strides, padding=self.padding)


class AvgPool(MaxPool):
  """Average pool; like Keras, 'SAME' padding averages over real pixels only."""

  def pool(self, x, window, strides):
    return nn.avg_pool(x, window, strides=strides, padding=self.padding,
                       count_include_pad=False)
