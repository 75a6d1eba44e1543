"""ParallelNet (paper §3.2, Fig. 2, Eq. 1-2) and its ablation family (§4.3).

Names follow PAPER.md, "The two branches" (the paper swaps N1 and N2 between two paragraphs; we use
§3.2.1 and Eq. 1):
  N1 (conv branch):     [Conv3x3(64) ReLU]x2, pool, [Conv(128)]x2, pool,
                        [Conv(256)]x2, pool, BatchNorm, Flatten,
                        Dense(feature_dim).
  N2 (backbone branch): trunk M (registry name), BatchNorm, Flatten, Dense.
  adapter:              Conv1x1 with 3 filters turning the 1-channel spectrogram
                        into the 3 channels N2_s's trunk expects (N1_s reads
                        the spectrogram directly). With pretrained speech
                        weights (`speech_scaling`, e.g. 'caffe') its output a
                        is read as an RGB image in [0, 1] and scaled as those
                        weights expect: scale_float(255 a, speech_scaling).
  Eq. 1 (criss-cross after N2, 'Configuration 3'):
    F_i = N1_i(image) + N2_s(speech),  F_s = N1_s(speech) + N2_i(image),
    F_mul = F_i * F_s  (Eq. 1 prints N1_i in F_s; the text says N2_i: we follow
    the text).
  Eq. 2 (late fusion): heads Dense(head_dim)-ReLU-Dense(head_dim)-ReLU-Dense(C)
    give O_sp = head_sp(F_s), O_img = head_img(F_i), O_mul = head_mul(F_mul);
    w = softmax(theta), theta in R^3 learned; O = w1 O_sp + w2 O_img + w3 O_mul;
    y_hat = softmax(O). The module returns the logits O.

Crossing position (`crossing`, Table 2's Baselines 1-3). The paper only says
"a criss-cross is a position combining two different modalities' networks"
and, of Baseline 1, that it "divides N1 into two parts and uses two
criss-crosses before and after N2" (§4.3). Our reading:
  'after'  (proposed, Baseline 3): Eq. 1 as above.
  'before' (Baseline 2): the criss-cross sits at the inputs of the backbone
    branches. N2_s reads adapter(speech) + P_is(image) and N2_i reads
    image + P_si(speech), where P_is, P_si are learned 1x1 conv projections to
    3 channels; a projected input whose spatial size differs from the host
    branch's input is resized to it (bilinear, jax.image.resize). The branch
    outputs are then combined within each modality: F_s = N1_s + N2_s,
    F_i = N1_i + N2_i, F_mul = F_i * F_s.
  'both'   (Baseline 1): N1 is divided into two parts, N1 = N1b o N1a, where
    N1a is its first conv block (two 3x3 convs and the pool: H/2 x W/2 x 64
    features) and N1b the rest (two blocks, BatchNorm, Flatten, Dense). The
    first criss-cross, before N2, feeds each backbone the other modality's
    N1a features: N2_s reads adapter(speech) + P_is(N1a_i(image)) and N2_i
    reads image + P_si(N1a_s(speech)) (P: 1x1 conv to 3 channels, resized as
    in 'before'). The second, after N2, is Eq. 1: F_i = N1_i + N2_s,
    F_s = N1_s + N2_i, F_mul = F_i * F_s. So Baseline 2 crosses the raw
    inputs once; Baseline 1 crosses N1's first-part features before N2 and
    the branch outputs after it. Same modules as 'before' (P_is, P_si read
    64*width channels instead of 3 / 1).
Heads and late fusion are the same for all three.

Unimodal variants (`modalities`, Table 2's SER Only / IER Only): 'speech' builds
N1_s, adapter, N2_s and the speech head only, with F_s = N1_s + N2_s and
O = O_sp; 'image' builds N1_i, N2_i and the image head, F_i = N1_i + N2_i and
O = O_img. They take both inputs and never read the other one. A crossing
needs both modalities, so they require crossing='after' (the config default,
meaning 'no crossing' here).

Backbones with dropout (EfficientNet's stochastic depth) need
`rngs={'dropout': key}` when train=True.

Frozen trunks (`frozen_trunks`, set when train.trunk_lr_multiplier = 0) run
in inference mode in training too, as a Keras model with trainable=False:
their BatchNorms normalise with, and keep, their running statistics (and
EfficientNet's stochastic depth is off, where Keras would keep it). The
BatchNorm closing N2 is not part of the trunk and trains as usual.

Initialisers follow Keras (glorot_uniform kernels, zero biases) since the
paper trained in Keras. Computation runs in `dtype`; parameters, BatchNorm
statistics, the fusion weights and the returned logits are float32.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from parallelnet.core import scaling as core_scaling
from parallelnet.models import backbones
from parallelnet.models import vgg
from parallelnet.models.common import batch_norm
from parallelnet.models.common import KERNEL_INIT

MODALITIES = ('both', 'speech', 'image')
CROSSINGS = ('after', 'before', 'both')


def dense(features: int, dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=KERNEL_INIT, dtype=dtype,
                  param_dtype=jnp.float32, name=name)


def conv1x1(features: int, dtype: Any, name: str) -> nn.Conv:
  return nn.Conv(features, (1, 1), kernel_init=KERNEL_INIT, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


def _bn_flatten_dense(x, train: bool, branch: nn.Module):
  """The tail N1 and N2 share: BatchNorm, Flatten, Dense(feature_dim).

  Called inside a branch's compact __call__, so 'bn' and 'dense' become that
  branch's submodules. Flatten keeps Keras' (h, w, c) order.
  """
  x = batch_norm(train, branch.dtype, 'bn', momentum=branch.bn_momentum)(x)
  x = x.reshape(x.shape[0], -1)
  return dense(branch.feature_dim, branch.dtype, 'dense')(x)


class ConvBranch(nn.Module):
  """N1: three VGG-style blocks of two 3x3 convs, BatchNorm, Flatten, Dense."""

  feature_dim: int
  width: float = 1.0
  dtype: Any = jnp.float32
  bn_momentum: float = 0.99

  @nn.compact
  def __call__(self, x, train: bool, return_first_part: bool = False):
    """N1(x); with `return_first_part`, (N1(x), N1a(x)), N1a being the first
    conv block (Baseline 1's criss-cross before N2 reads it)."""
    convs = vgg.VGG(blocks=((64, 2), (128, 2), (256, 2)), width=self.width,
                    dtype=self.dtype, name='convs')
    if not return_first_part:
      return _bn_flatten_dense(convs(x), train, self)
    x, first = convs(x, tap_block=1)
    return _bn_flatten_dense(x, train, self), first


class BackboneBranch(nn.Module):
  """N2: the trunk M chosen by registry name, BatchNorm, Flatten, Dense."""

  backbone: str
  feature_dim: int
  width: float = 1.0
  dtype: Any = jnp.float32
  bn_momentum: float = 0.99
  frozen: bool = False  # Trunk M in inference mode always (Keras trainable=False).

  @nn.compact
  def __call__(self, x, train: bool):
    x = backbones.get_backbone(self.backbone, self.width, self.dtype,
                               module_name='backbone')(
                                   x, train and not self.frozen)
    return _bn_flatten_dense(x, train, self)


class Head(nn.Module):
  """Late-fusion head: Dense-ReLU-Dense-ReLU-Dense(C) (paper §3.2.2)."""

  hidden: int
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(dense(self.hidden, self.dtype, 'dense1')(x))
    x = nn.relu(dense(self.hidden, self.dtype, 'dense2')(x))
    return dense(self.num_classes, self.dtype, 'out')(x)


def _theta_init(key, shape, dtype=jnp.float32):
  # Keras' default weight initialiser, glorot_uniform, on a 3-vector is
  # U(-1, 1) (fan_in = fan_out = 3): "randomly initialised" (§3.2.2).
  return jax.random.uniform(key, shape, dtype, -1.0, 1.0)


def _resize_like(x, like):
  """`x` resized (bilinear) to the spatial size of `like` when they differ."""
  if x.shape[1:3] == like.shape[1:3]:
    return x
  return jax.image.resize(x, x.shape[:1] + like.shape[1:3] + x.shape[3:],
                          method='bilinear')


class ParallelNet(nn.Module):
  """ParallelNet and its ablation family; see the module docstring.

  `__call__(image, spectrogram, train)` takes image (B, H, W, 3) and
  spectrogram (B, T, F, 1) (time first) and returns (logits O, intermediates):
  intermediates holds N1_i, N1_s, N2_i, N2_s, F_i, F_s, F_mul, O_sp, O_img,
  O_mul and fusion_weights = softmax(theta), those the variant has.
  """

  num_classes: int
  modalities: str = 'both'
  crossing: str = 'after'
  speech_backbone: str = 'vgg16'
  image_backbone: str = 'vgg19'
  width: float = 1.0
  feature_dim: int = 512
  head_dim: int = 1024
  dtype: Any = jnp.float32
  # Momentum of the BatchNorms closing N1 and N2 (the trunks keep their own).
  bn_momentum: float = 0.99
  # Input scaling of N2_s's pretrained trunk applied to the adapter output
  # (parallelnet/core/scaling.py modes); '' = adapter output fed as is.
  speech_scaling: str = ''
  # N2 trunks frozen (train.trunk_lr_multiplier = 0): their BatchNorms stay
  # in inference mode in training (module docstring).
  frozen_trunks: bool = False

  def _check_names(self):
    """model.modalities and model.crossing are known values."""
    if self.modalities not in MODALITIES:
      raise ValueError(f'model.modalities={self.modalities!r}; expected one '
                       f'of {MODALITIES}.')
    if self.crossing not in CROSSINGS:
      raise ValueError(f'model.crossing={self.crossing!r}; expected one of '
                       f'{CROSSINGS}.')

  def _check(self, image, spectrogram):
    self._check_names()
    if self.modalities != 'both' and self.crossing != 'after':
      raise ValueError(
          f'model.crossing={self.crossing!r} needs both modalities, but '
          f'model.modalities={self.modalities!r}; use crossing=\'after\'.')
    if image.ndim != 4 or image.shape[-1] != 3:
      raise ValueError(f'image must be (batch, H, W, 3); got {image.shape}.')
    if spectrogram.ndim != 4 or spectrogram.shape[-1] != 1:
      raise ValueError('spectrogram must be (batch, time, freq, 1); got '
                       f'{spectrogram.shape}.')
    if image.shape[0] != spectrogram.shape[0]:
      raise ValueError(f'image batch {image.shape[0]} != spectrogram batch '
                       f'{spectrogram.shape[0]}.')

  def setup(self):
    # setup (not a compact __call__): encode_image / encode_speech / fuse are
    # methods of their own (module.apply(..., method=...)), and a Linen module
    # may define submodules inline in one compact method only. The attribute
    # names are the parameter names.
    self._check_names()
    use_speech = self.modalities in ('both', 'speech')
    use_image = self.modalities in ('both', 'image')
    n1 = lambda: ConvBranch(self.feature_dim, self.width, self.dtype,
                            self.bn_momentum)
    n2 = lambda b: BackboneBranch(b, self.feature_dim, self.width, self.dtype,
                                  self.bn_momentum, self.frozen_trunks)
    head = lambda: Head(self.head_dim, self.num_classes, self.dtype)
    if use_speech:
      self.N1_s = n1()
      self.adapter = conv1x1(3, self.dtype, None)
      self.N2_s = n2(self.speech_backbone)
      self.head_sp = head()
    if use_image:
      self.N1_i = n1()
      self.N2_i = n2(self.image_backbone)
      self.head_img = head()
    if self.modalities == 'both':
      if self.crossing in ('before', 'both'):
        self.P_is = conv1x1(3, self.dtype, None)
        self.P_si = conv1x1(3, self.dtype, None)
      self.head_mul = head()
      self.theta = self.param('theta', _theta_init, (3,), jnp.float32)

  @property
  def crossed_inputs(self) -> bool:
    """True when N2_s / N2_i read both modalities ('before' and 'both')."""
    return self.modalities == 'both' and self.crossing in ('before', 'both')

  def _n1_and_crossed_source(self, n1_branch, x, train):
    """(N1(x), what the crossing projection P_is / P_si reads): N1's first
    part N1a(x) for Baseline 1 ('both'), otherwise x itself."""
    if self.crossing == 'both' and self.crossed_inputs:  # Baseline 1.
      return n1_branch(x, train, return_first_part=True)
    return n1_branch(x, train), x

  def encode_image(self, image, train: bool = False):
    """The image's share of the network, a dict (empty for 'speech').

    'after': N1_i(image) and N2_i(image), everything that reads the image.
    'before' / 'both': N2_i also reads the speech, so only N1_i(image), the
    image itself (N2_i's own input) and P_is(image) ('both': P_is(N1a_i),
    the first part of N1_i; see the module docstring) (its contribution to
    N2_s's input) are per-modality; `fuse` runs the N2 branches.
    """
    if self.modalities == 'speech':
      return {}
    image = jnp.asarray(image, self.dtype)
    n1, n1a = self._n1_and_crossed_source(self.N1_i, image, train)
    feats = {'N1_i': n1}
    if self.crossed_inputs:
      feats['image3'] = image
      feats['from_image'] = self.P_is(n1a)
    else:
      feats['N2_i'] = self.N2_i(image, train)
    return feats

  def encode_speech(self, spectrogram, train: bool = False):
    """The spectrogram's share of the network, as `encode_image`."""
    if self.modalities == 'image':
      return {}
    speech = jnp.asarray(spectrogram, self.dtype)
    n1, n1a = self._n1_and_crossed_source(self.N1_s, speech, train)
    feats = {'N1_s': n1}
    speech3 = self.adapter(speech)
    if self.speech_scaling:
      speech3 = core_scaling.scale_float(
          255.0 * speech3, self.speech_scaling).astype(self.dtype)
    if self.crossed_inputs:
      feats['speech3'] = speech3
      feats['from_speech'] = self.P_si(n1a)
    else:
      feats['N2_s'] = self.N2_s(speech3, train)
    return feats

  def fuse(self, image_feats, speech_feats, train: bool = False):
    """Eq. 1-2 from the two encodings: (logits O, intermediates).

    For 'before' / 'both' this also runs N2_s and N2_i on the crossed inputs.
    """
    out = dict(image_feats)
    out.update(speech_feats)
    if self.crossed_inputs:
      # Criss-cross before N2: each backbone also sees the other modality.
      speech3 = out.pop('speech3') + _resize_like(out.pop('from_image'),
                                                  speech_feats['speech3'])
      image3 = out.pop('image3') + _resize_like(out.pop('from_speech'),
                                                image_feats['image3'])
      out['N2_s'] = self.N2_s(speech3, train)
      out['N2_i'] = self.N2_i(image3, train)

    if self.modalities == 'speech':
      out['F_s'] = out['N1_s'] + out['N2_s']
      out['O_sp'] = self.head_sp(out['F_s'])
      return jnp.asarray(out['O_sp'], jnp.float32), out
    if self.modalities == 'image':
      out['F_i'] = out['N1_i'] + out['N2_i']
      out['O_img'] = self.head_img(out['F_i'])
      return jnp.asarray(out['O_img'], jnp.float32), out

    if self.crossing == 'before':
      out['F_i'] = out['N1_i'] + out['N2_i']
      out['F_s'] = out['N1_s'] + out['N2_s']
    else:  # Eq. 1.
      out['F_i'] = out['N1_i'] + out['N2_s']
      out['F_s'] = out['N1_s'] + out['N2_i']
    out['F_mul'] = out['F_i'] * out['F_s']
    out['O_sp'] = self.head_sp(out['F_s'])
    out['O_img'] = self.head_img(out['F_i'])
    out['O_mul'] = self.head_mul(out['F_mul'])
    # Eq. 2, in float32.
    w = jax.nn.softmax(self.theta)
    out['fusion_weights'] = w
    logits = (w[0] * out['O_sp'].astype(jnp.float32)
              + w[1] * out['O_img'].astype(jnp.float32)
              + w[2] * out['O_mul'].astype(jnp.float32))
    return logits, out

  def __call__(self, image, spectrogram, train: bool):
    self._check(image, spectrogram)
    return self.fuse(self.encode_image(image, train),
                     self.encode_speech(spectrogram, train), train)
