"""Prototype CPU-friendly lowerings of VGG's conv and max pool (bench only).

Profiling `train_step` at the paper's size on a CPU (jax 0.10.2) shows where
the step loses to Keras/oneDNN:
  * the convolutions' kernel gradients: XLA expresses dK as a convolution whose
    "kernel" is dY (a 128x128 window) and whose contraction is the batch axis,
    a shape the CPU conv kernels run several times slower than the forward
    convolution of the same FLOPs;
  * the max pools' gradients: select_and_scatter lowers to iota + scatter.
The two functions below compute the same values with shapes the CPU runs
well, so that the benchmark can measure how much a model-side change would
gain. They are drop-ins: `conv_general_dilated` for `nn.Conv(...,
conv_general_dilated=...)`, `max_pool` for `nn.max_pool`. Any case they do not
cover falls back to the library function.
"""

import contextlib
import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp


def _same_pads(k):
  return (k - 1) // 2, k - 1 - (k - 1) // 2


@jax.custom_vjp
def _conv_nhwc(x, kernel):
  return lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _conv_fwd(x, kernel):
  return _conv_nhwc(x, kernel), (x, kernel)


def _conv_bwd(res, dy):
  x, kernel = res
  kh, kw, cin, cout = kernel.shape
  _, h, w, _ = x.shape
  # dX: the transposed convolution, which the CPU runs about as fast as the
  # forward one (linearised in x only, so no kernel gradient is built here).
  dx = jax.vjp(lambda x_: _conv_nhwc.fun(x_, kernel), x)[1](dy)[0]
  (pt, pb), (pl, pr) = _same_pads(kh), _same_pads(kw)
  # dK[i, j] = sum over (n, y, x) of x_pad[n, y+i, x+j, :]^T dY[n, y, x, :]:
  # one (cin x NHW) @ (NHW x cout) matmul per tap instead of a convolution
  # with a 128x128 window that contracts over the batch.
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  dy2 = dy.reshape(-1, cout)
  taps = [[lax.dot_general(xp[:, i:i + h, j:j + w, :].reshape(-1, cin), dy2,
                           (((0,), (0,)), ((), ())))
           for j in range(kw)] for i in range(kh)]
  dk = jnp.stack([jnp.stack(row) for row in taps]).astype(kernel.dtype)
  return dx.astype(x.dtype), dk


_conv_nhwc.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None,
                         min_channels=0):
  """`lax.conv_general_dilated` with a matmul kernel gradient when it can.

  Covered: 2-D, NHWC/HWIO, stride 1, 'SAME' padding (or the explicit pads it
  means), no dilation, no groups, at least `min_channels` output channels.
  Everything else goes to lax unchanged.
  """
  kh = rhs.shape[0] if rhs.ndim == 4 else None
  kw = rhs.shape[1] if rhs.ndim == 4 else None
  same = (padding == 'SAME' or (kh is not None and tuple(map(tuple, padding))
                                == (_same_pads(kh), _same_pads(kw))))
  dn = dimension_numbers
  nhwc = dn is not None and (
      tuple(getattr(dn, 'lhs_spec', ())) == (0, 3, 1, 2)
      and tuple(dn.rhs_spec) == (3, 2, 0, 1)
      and tuple(dn.out_spec) == (0, 3, 1, 2)) or dn == ('NHWC', 'HWIO', 'NHWC')
  simple = (lhs.ndim == 4 and tuple(window_strides) == (1, 1) and same and nhwc
            and not any(d not in (None, 1) for d in (lhs_dilation or ()))
            and not any(d not in (None, 1) for d in (rhs_dilation or ()))
            and feature_group_count == 1 and batch_group_count == 1
            and preferred_element_type is None
            and rhs.shape[-1] >= min_channels)
  if not simple:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, batch_group_count, precision,
        preferred_element_type)
  return _conv_nhwc(lhs, rhs)


def max_pool(inputs, window_shape, strides=None, padding='VALID'):
  """`nn.max_pool`; non-overlapping VALID windows as reshape + max.

  The gradient of a max over a reshaped axis is an elementwise mask, instead
  of select_and_scatter (which the CPU backend lowers to iota + scatter).
  Ties split the gradient equally (select_and_scatter gives it to the first);
  after ReLU, ties are almost always at 0, where ReLU's gradient is 0 anyway.
  """
  strides = tuple(strides or window_shape)
  if (padding != 'VALID' or tuple(window_shape) != strides
      or inputs.ndim != 4):
    return nn.pooling.max_pool(inputs, window_shape, strides, padding)
  (wh, ww), (n, h, w, c) = window_shape, inputs.shape
  x = inputs[:, :h // wh * wh, :w // ww * ww, :]
  x = x.reshape(n, h // wh, wh, w // ww, ww, c)
  return jnp.max(x, axis=(2, 4))


class _LaxProxy:
  """jax.lax with conv_general_dilated replaced (for flax.linen.linear)."""

  def __init__(self, min_channels=0):
    self.min_channels = min_channels

  def __getattr__(self, name):
    if name == 'conv_general_dilated':
      return functools.partial(conv_general_dilated,
                               min_channels=self.min_channels)
    return getattr(lax, name)


@contextlib.contextmanager
def patched_flax(conv=True, pool=True, min_conv_channels=0):
  """Within the block, Flax convs and/or nn.max_pool use the functions above.

  Only convs with >= `min_conv_channels` output channels get the matmul
  kernel gradient. (The model's own MaxPool already pools by reshape + max
  since parallelnet/models/common.py's `tiled_max_pool`; `pool` only matters
  for other nn.max_pool callers.)

  Bench-only: it lets the benchmark trace the project's unmodified model with
  the proposed lowerings. Trace (jit's first call) inside the block.
  """
  import flax.linen.linear as linear  # pylint: disable=g-import-not-at-top
  saved = linear.lax, nn.max_pool
  if conv:
    linear.lax = _LaxProxy(min_conv_channels)
  if pool:
    nn.max_pool = max_pool
  try:
    yield
  finally:
    linear.lax, nn.max_pool = saved
