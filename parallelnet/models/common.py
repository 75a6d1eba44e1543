"""Layer helpers shared by the backbones and ParallelNet (Keras conventions)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def scaled(channels: int, width: float) -> int:
  """A channel count times the width multiplier, at least 1."""
  return max(1, int(round(channels * width)))


def batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """BatchNorm with Keras defaults (momentum 0.99, epsilon 1e-3).

  Statistics are reduced in float32 whatever `dtype` is; params are float32.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.99,
                      epsilon=1e-3, dtype=dtype, param_dtype=jnp.float32,
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
