"""Modality-factorized DnCShap (explain.FactorizedFn) equals the plain path.

A toy factorized function checks the coalition structure (every mode,
context and depth, chunked); the ParallelNet family checks
`explain.run.probability_fn` for every variant at tiny size.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from explain import dncshap
from explain import dncshap_batch
from explain import FactorizedFn
from explain import num_encodings
from explain import num_evaluations
from explain import run as explain_run
from parallelnet import models
import train_helpers

pytestmark = pytest.mark.usefixtures('fast_compile')

SETTINGS = (('exact', 'absent'), ('dnc', 'absent'), ('dnc', 'present'),
            ('dnc', 'random'))


def _toy(record=None):
  """A non-additive two-modality function, split by modality.

  The encoders keep the whole masked input (so any mistake in which image
  goes with which spectrogram changes the output); `record` collects the
  traced batch sizes of each stage.
  """
  rng = np.random.default_rng(0)
  w_image = rng.normal(size=(8 * 8 * 3, 4)).astype(np.float32)
  w_speech = rng.normal(size=(8 * 6, 4)).astype(np.float32)

  def encode_image(v, images):
    if record is not None:
      record.setdefault('image', []).append(images.shape[0])
    return {'a': jnp.tanh(images.reshape(images.shape[0], -1) @ v['wi']),
            'raw': images}

  def encode_speech(v, spectrograms):
    if record is not None:
      record.setdefault('speech', []).append(spectrograms.shape[0])
    return {'b': jnp.tanh(spectrograms.reshape(spectrograms.shape[0], -1)
                          @ v['ws'])}

  def fuse(v, fi, fs):
    if record is not None:
      record.setdefault('fuse', []).append(fs['b'].shape[0])
    logits = fi['a'] * fs['b'] + fs['b'] + fi['raw'].mean((1, 2, 3))[:, None]
    return jax.nn.softmax(2 * logits, axis=-1)

  return FactorizedFn(encode_image, encode_speech, fuse,
                      {'wi': w_image, 'ws': w_speech})


def _inputs(n, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.uniform(0.2, 1, (n, 8, 8, 3)).astype(np.float32),
          rng.uniform(0.2, 1, (n, 8, 6, 1)).astype(np.float32))


def _assert_same(a, b, atol=1e-5):
  np.testing.assert_array_equal(a.target, b.target)
  for x, y in zip(a.node_values, b.node_values):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)
  np.testing.assert_allclose(a.image_map, b.image_map, atol=atol, rtol=0)
  np.testing.assert_allclose(a.speech_map, b.speech_map, atol=atol, rtol=0)


@pytest.mark.parametrize('mode,context',
                         train_helpers.fast_first(SETTINGS))
def test_toy_factorized_equals_plain(mode, context, depth=2):
  fn = _toy()
  plain = lambda im, sp: fn(im, sp)  # The same function, unfactorized.
  images, speech = _inputs(3)
  kw = dict(depth=depth, mode=mode, context=context,
            key=jax.random.key(depth), max_batch=5)
  a = dncshap_batch(fn, images, speech, **kw)
  b = dncshap_batch(plain, images, speech, **kw)
  _assert_same(a, b)
  # Not a degenerate model: coalitions matter.
  assert np.abs(np.asarray(a.node_values[-1])).max() > 1e-3


def test_encodings_are_fewer_and_chunks_bounded_by_max_batch():
  record = {}
  fn = _toy(record)
  image, speech = _inputs(1)
  dncshap(fn, image[0], speech[0], depth=2, mode='exact', max_batch=5)
  # 44 coalitions from 12 distinct images and 12 distinct spectrograms.
  assert num_evaluations(2, 'exact') == 44
  assert num_encodings(2, 'exact') == (12, 12)
  assert num_encodings(3, 'exact') == (44, 44)  # Of 172 coalitions.
  assert num_encodings(3, 'dnc') == (16, 16)  # Of 32.
  # Each stage traced with chunks of max_batch rows.
  assert record['image'][-1] == record['speech'][-1] == 5
  assert record['fuse'][-1] == 5
  # A batch of examples: per-example chunks shrink to max_batch // E.
  record.clear()
  images, speeches = _inputs(2)
  dncshap_batch(fn, images, speeches, depth=2, mode='exact', max_batch=8)
  assert max(record['image'] + record['speech'] + record['fuse']) <= 4


# Every modality set and crossing; 'both' and 'before' keep N2 per coalition
# (crossed inputs), the others cache it. The trunk only changes what
# encode_* run, so the cheapest one serves (conftest.py's tiny_trunk).
VARIANTS = ['', 'ser_only', 'ier_only', 'baseline2', 'baseline1']


@pytest.mark.parametrize('variant',
                         train_helpers.fast_first(VARIANTS))
@pytest.mark.slow
def test_parallelnet_factorized_equals_full_forward(variant, tiny_trunk):
  config = train_helpers.tiny_config(
      ','.join(filter(None, [variant, f'n2={tiny_trunk}'])), num_classes=3)
  model = models.get_model(config)
  variables = train_helpers.quick_variables(
      lambda k: models.init_variables(model, config, k), seed=1)
  s = config.input.image_size
  rng = np.random.default_rng(2)
  images = rng.normal(size=(2, s, s, 3)).astype(np.float32)
  speech = rng.uniform(size=(2, config.input.num_frames, config.input.n_mels,
                             1)).astype(np.float32)
  fact = explain_run.probability_fn(model, variables)
  plain = explain_run.probability_fn(model, variables, factorized=False)
  assert isinstance(fact, FactorizedFn)
  # The factorized function called whole is the model's forward pass. Both
  # op by op: the forward's primitives, compiled once by plain's call, serve
  # fact's (a jit of fact compiled the whole program again, ~0.4 CPU-s).
  np.testing.assert_allclose(fact(images, speech), plain(images, speech),
                             atol=1e-6, rtol=0)
  for mode in ('exact', 'dnc'):
    kw = dict(depth=1, mode=mode, max_batch=4)
    a = dncshap_batch(fact, images, speech, **kw)
    b = dncshap_batch(plain, images, speech, **kw)
    _assert_same(a, b)
    np.testing.assert_allclose(a.probability, b.probability, atol=1e-6)
