"""VGG16 and VGG19 trunks (no classifier), layer for layer as Keras Apps.

Keras' `keras.applications.VGG16/VGG19(include_top=False)` is five blocks of
3x3 'same' ReLU convolutions, each block closed by a 2x2 max pool of stride 2.
Every Flax submodule here carries the Keras layer name (`block1_conv1`, ...,
`block5_pool`), so a Keras ImageNet weight file maps one to one onto
`params[<layer name>]['kernel' | 'bias']` (Keras' Conv2D kernel layout HWIO is
Flax's too).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from parallelnet.models.common import KERNEL_INIT
from parallelnet.models.common import MaxPool
from parallelnet.models.common import scaled

# (filters, number of convs) per block, as in Keras Applications.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
VGG19_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


class VGG(nn.Module):
  """A VGG trunk: `blocks` of 3x3 ReLU convs, each block ending in a max pool.

  Attributes:
    blocks: (filters, convs) per block; see VGG16_BLOCKS, VGG19_BLOCKS.
    width: channel multiplier (1.0 = the published network).
    dtype: computation dtype; parameters stay `param_dtype`.
  """

  blocks: Sequence[tuple[int, int]]
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, tap_block: int = 0):
    """The trunk's output; with `tap_block` = b > 0, (output, output of
    block b) (ParallelNet's Baseline 1 reads N1 after its first block)."""
    del train  # No BatchNorm or dropout in VGG; the backbone interface has it.
    if not 0 <= tap_block <= len(self.blocks):
      raise ValueError(f'tap_block={tap_block}; this VGG has '
                       f'{len(self.blocks)} blocks.')
    x = jnp.asarray(x, self.dtype)
    tapped = None
    for b, (filters, convs) in enumerate(self.blocks, start=1):
      for i in range(1, convs + 1):
        x = nn.Conv(scaled(filters, self.width), (3, 3), padding='SAME',
                    kernel_init=KERNEL_INIT, dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f'block{b}_conv{i}')(x)
        x = nn.relu(x)
      x = MaxPool(name=f'block{b}_pool')(x)
      if b == tap_block:
        tapped = x
    return x if not tap_block else (x, tapped)


def vgg16(width: float = 1.0, dtype: Any = jnp.float32) -> VGG:
  """Keras Applications' VGG16 without its classifier (14,714,688 params)."""
  return VGG(blocks=VGG16_BLOCKS, width=width, dtype=dtype)


def vgg19(width: float = 1.0, dtype: Any = jnp.float32) -> VGG:
  """Keras Applications' VGG19 without its classifier (20,024,384 params)."""
  return VGG(blocks=VGG19_BLOCKS, width=width, dtype=dtype)
