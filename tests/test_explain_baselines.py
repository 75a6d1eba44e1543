"""Tests of the explanation baselines (explain/run.py, config.explain.baseline)
and of dnc mode against Algorithm 1's four-evaluation formula at depth 1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import parallelnet as parallelnet_config
from explain import average_explanations
from explain import dncshap
from explain import dncshap_batch
from explain import num_evaluations
from explain import run
from parallelnet.core import scaling as core_scaling
from parallelnet.core.errors import UserError
import train_helpers

pytestmark = pytest.mark.usefixtures('fast_compile')

S = 8  # Image and spectrogram are 8 x 8.


def _nonlinear(ignore_speech=False):
  """A small MLP plus a cross-modal product: strongly non-additive."""
  k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
  n = S * S * 3 + S * S
  w1 = np.asarray(jax.random.normal(k1, (n, 16))) / np.sqrt(n) * 4
  w2 = np.asarray(jax.random.normal(k2, (16, 3)))
  w3 = np.asarray(jax.random.normal(k3, (n, 3))) / np.sqrt(n) * 2

  def fn(images, spectrograms):
    if ignore_speech:
      spectrograms = jnp.zeros_like(spectrograms)
    x = jnp.concatenate([images.reshape(images.shape[0], -1),
                         spectrograms.reshape(spectrograms.shape[0], -1)], 1)
    cross = (images.mean((1, 2, 3)) * spectrograms.mean((1, 2, 3)))[:, None]
    return jax.nn.softmax(jnp.tanh(x @ w1) @ w2 + 3 * cross * (x @ w3), -1)

  return fn


FN = _nonlinear()
FN_IMAGE_ONLY = _nonlinear(ignore_speech=True)
# Compiled whole, for the tests' own reference evaluations: op by op, each
# new batch shape would compile every op of it on its own.
REFERENCE = {FN: jax.jit(FN), FN_IMAGE_ONLY: jax.jit(FN_IMAGE_ONLY)}


def _data(n, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.uniform(0.2, 1, (n, S, S, 3)).astype(np.float32),
          rng.uniform(0.2, 1, (n, S, S, 1)).astype(np.float32))


def _config(baseline, **kw):
  config = parallelnet_config.get_config('runlocal')
  config.explain.baseline = baseline
  for k, v in kw.items():
    config.explain[k] = v
  return config


def _check_efficiency(e):
  for k in range(1, len(e.node_values)):
    lv = np.asarray(e.node_values[k])
    np.testing.assert_allclose(lv.reshape(lv.shape[0], -1, 2).sum(-1),
                               e.node_values[k - 1], atol=1e-6)
  np.testing.assert_allclose(np.asarray(e.modality_scores).sum(-1),
                             e.probability - e.baseline_probability, atol=1e-6)
  np.testing.assert_allclose(np.asarray(e.image_map).sum((-2, -1)),
                             np.asarray(e.modality_scores)[..., 0], atol=1e-5)


# --------------------------------------------------------------------------
# Depth 1 against Algorithm 1 (PAPER.md, "DnCShap": they agree at one level).
# --------------------------------------------------------------------------


def _halves(x):
  """(first half kept, second half kept) along axis 0, the rest zeros."""
  a, b = np.zeros_like(x), np.zeros_like(x)
  a[:S // 2], b[S // 2:] = x[:S // 2], x[S // 2:]
  return a, b


@pytest.mark.parametrize('context',
                         train_helpers.fast_first(['absent', 'present']))
@pytest.mark.parametrize('fn', train_helpers.fast_first([FN, FN_IMAGE_ONLY]),
                         ids=['both', 'image'])
def test_depth1_dnc_equals_algorithm1_four_evaluations_and_first_split(
    fn, context):
  images, speeches = _data(1, seed=3)
  image, speech = images[0], speeches[0]
  e = dncshap(fn, image, speech, depth=1, mode='dnc', context=context)
  zi, zs = np.zeros_like(image), np.zeros_like(speech)
  ia, ib = _halves(image)  # Top, bottom rows.
  sa, sb = _halves(speech)  # Early, late frames.
  # Algorithm 1: pred_f, pred_b, pred_1 (image only), pred_2 (speech only);
  # then the same two-player formula inside each modality.
  batch_i = [image, zi, image, zi, ia, ib, ia, ib, zi, zi, image, image]
  batch_s = [speech, zs, zs, speech, zs, zs, speech, speech, sa, sb, sa, sb]
  p = np.asarray(REFERENCE[fn](np.stack(batch_i), np.stack(batch_s)),
                 np.float64)
  c = int(np.argmax(p[0]))
  pred_f, pred_b, pred_1, pred_2, *rest = p[:, c]
  v_a, v_b, v_as, v_bs, v_sa, v_sb, v_isa, v_isb = rest
  score_1 = ((pred_1 - pred_b) + (pred_f - pred_2)) / 2
  score_2 = ((pred_2 - pred_b) + (pred_f - pred_1)) / 2
  assert int(e.target) == c
  np.testing.assert_allclose(e.modality_scores, [score_1, score_2], atol=1e-6)
  # First split, Eq. 3 on the two halves of each modality, with the other
  # modality absent (context 'absent') or present ('present'); what the
  # two-player split leaves of the modality's score is shared by area.
  if context == 'absent':
    image_game = (pred_b, pred_1, v_a, v_b)  # v(ctx), v(ctx+I), v(A), v(B)
    speech_game = (pred_b, pred_2, v_sa, v_sb)
  else:
    image_game = (pred_2, pred_f, v_as, v_bs)
    speech_game = (pred_1, pred_f, v_isa, v_isb)
  expected = []
  for (b, f, a, cc), score in ((image_game, score_1), (speech_game, score_2)):
    s_a = ((a - b) + (f - cc)) / 2
    s_b = ((cc - b) + (f - a)) / 2
    r = score - (f - b)
    expected += [s_a + r / 2, s_b + r / 2]
  np.testing.assert_allclose(e.image_regions.values, expected[:2], atol=1e-6)
  np.testing.assert_allclose(e.speech_regions.values, expected[2:], atol=1e-6)
  if fn is FN_IMAGE_ONLY:
    # An image-only model is the authors' reference setting: the image
    # halves get Eq. 3 exactly (no residual to share).
    b, f, a, cc = image_game
    np.testing.assert_allclose(e.image_regions.values,
                               [((a - b) + (f - cc)) / 2,
                                ((cc - b) + (f - a)) / 2], atol=1e-6)


# --------------------------------------------------------------------------
# Baseline options.
# --------------------------------------------------------------------------


@pytest.mark.parametrize('scaling', ['caffe', 'unit'])
def test_zeros_baseline_is_a_black_image_and_silence(scaling):
  """'zeros' is defined on raw inputs (RGB 0, silence) and preprocessed as
  the data are: under caffe a black image is minus the ImageNet BGR mean
  colour, not model-input zeros (which would be that mean colour)."""
  config = _config('zeros')
  config.input.image_scaling = scaling
  b = run.make_baseline(config, (S, S, 3), (S, S, 1))
  assert b.num_baselines == 1
  black = core_scaling.scale_image(np.zeros((S, S, 3), np.uint8), scaling)
  np.testing.assert_array_equal(b.images[0], black)
  np.testing.assert_array_equal(core_scaling.unscale_image(b.images[0],
                                                           scaling), 0.0)
  if scaling == 'caffe':
    np.testing.assert_allclose(b.images[0, 3, 5],
                               -core_scaling.CAFFE_BGR_MEAN, rtol=1e-6)
  else:
    np.testing.assert_array_equal(b.images, 0.0)
  # Silence: 0 in the spectrogram's [0, 1] dB mapping.
  np.testing.assert_array_equal(b.spectrograms, 0.0)
  images, speeches = _data(2, seed=2)
  e = run.explain_batch(FN, images, speeches, b, depth=2, mode='dnc',
                        context='present')
  at_blank = np.asarray(REFERENCE[FN](b.images, b.spectrograms))[0]
  np.testing.assert_allclose(e.baseline_probability,
                             at_blank[np.asarray(e.target)], atol=1e-6)
  _check_efficiency(e)


def test_mean_baseline_is_the_training_mean_and_is_what_absent_players_take():
  train = dict(zip(('image', 'spectrogram'), _data(5, seed=1)))
  b = run.make_baseline(_config('mean'), (S, S, 3), (S, S, 1), train=train)
  assert b.num_baselines == 1
  np.testing.assert_allclose(b.images[0], train['image'].mean(0), atol=1e-6)
  np.testing.assert_allclose(b.spectrograms[0], train['spectrogram'].mean(0),
                             atol=1e-6)
  images, speeches = _data(2, seed=2)
  e = run.explain_batch(FN, images, speeches, b, depth=2, mode='exact')
  at_mean = np.asarray(REFERENCE[FN](b.images, b.spectrograms))[0]
  np.testing.assert_allclose(e.baseline_probability,
                             at_mean[np.asarray(e.target)], atol=1e-6)
  _check_efficiency(e)


def test_blur_baseline_uses_sigma_per_axis_and_channel():
  x = np.zeros((2, 31, 31, 2), np.float32)
  x[0, 15, 15, 0] = 1.0  # A delta in example 0, channel 0 only.
  for sigma in (1.0, 3.0):
    y = run.blur(x, sigma)
    assert y.shape == x.shape
    np.testing.assert_allclose(y.sum(), 1.0, atol=1e-5)
    assert np.abs(y[1]).max() == 0 and np.abs(y[..., 1]).max() == 0
    grid = np.arange(31) - 15
    for axis in (0, 1):
      marginal = y[0, ..., 0].sum(1 - axis)
      np.testing.assert_allclose((marginal * grid**2).sum(), sigma**2,
                                 rtol=0.05)
  config = _config('blur', blur_sigma=2.0)
  b = run.make_baseline(config, (S, S, 3), (S, S, 1))
  assert b.blur_sigma == 2.0 and b.images is None
  images, speeches = _data(2, seed=2)
  e = run.explain_batch(FN, images, speeches, b, depth=2, mode='dnc',
                        context='present')
  at_blur = np.asarray(REFERENCE[FN](run.blur(images, 2.0),
                                     run.blur(speeches, 2.0)))
  np.testing.assert_allclose(
      e.baseline_probability, at_blur[np.arange(2), np.asarray(e.target)],
      atol=1e-6)
  _check_efficiency(e)
  with pytest.raises(UserError, match='blur_sigma'):
    run.make_baseline(_config('blur', blur_sigma=0.0), (S, S, 3), (S, S, 1))


def test_npz_baseline_loads_plain_arrays_and_errors_name_the_file(tmp_path):
  rng = np.random.default_rng(4)
  image = rng.uniform(size=(S, S, 3)).astype(np.float32)
  speech = rng.uniform(size=(S, S, 1)).astype(np.float32)
  good = tmp_path / 'base.npz'
  np.savez(good, image=image, spectrogram=speech)
  b = run.make_baseline(_config(str(good)), (S, S, 3), (S, S, 1))
  assert b.name == str(good) and b.num_baselines == 1
  images, speeches = _data(2, seed=2)
  e = run.explain_batch(FN, images, speeches, b, depth=2, mode='exact')
  ref = dncshap_batch(FN, images, speeches, depth=2, mode='exact',
                      baseline=(image, speech))
  np.testing.assert_allclose(e.node_values[-1], ref.node_values[-1],
                             atol=1e-7)
  assert np.abs(np.asarray(e.baseline_probability)
                - np.asarray(dncshap_batch(FN, images, speeches, depth=2,
                                           mode='exact').baseline_probability)
                ).max() > 1e-4  # Not the zeros baseline.

  def error(path, match):
    with pytest.raises(UserError, match=match) as info:
      run.make_baseline(_config(str(path)), (S, S, 3), (S, S, 1))
    assert str(path) in str(info.value)

  np.savez(tmp_path / 'no_speech.npz', image=image)
  error(tmp_path / 'no_speech.npz', "no array 'spectrogram'")
  np.savez(tmp_path / 'shape.npz', image=image[:4], spectrogram=speech)
  error(tmp_path / 'shape.npz', r"'image' has shape \(4, 8, 3\)")
  np.savez(tmp_path / 'pickled.npz', image=np.array([{}], dtype=object),
           spectrogram=speech)
  error(tmp_path / 'pickled.npz', 'cannot read')
  error(tmp_path / 'missing.npz', 'not a file')
  with pytest.raises(UserError, match="baseline='median'"):
    run.make_baseline(_config('median'), (S, S, 3), (S, S, 1))


@pytest.mark.slow
def test_background_is_the_mean_of_per_baseline_explanations():
  train = dict(zip(('image', 'spectrogram'), _data(6, seed=5)))
  config = _config('background', background_size=3)
  b = run.make_baseline(config, (S, S, 3), (S, S, 1), train=train)
  assert b.num_baselines == 3
  rows = [int(np.flatnonzero((train['image'] == img).all((1, 2, 3)))[0])
          for img in b.images]
  assert len(set(rows)) == 3  # Distinct training examples ...
  again = run.make_baseline(config, (S, S, 3), (S, S, 1), train=train)
  np.testing.assert_array_equal(again.images, b.images)  # ... seeded.
  images, speeches = _data(2, seed=2)
  for mode in ('exact', 'dnc'):
    e = run.explain_batch(FN, images, speeches, b, depth=2, mode=mode)
    each = [dncshap_batch(FN, images, speeches, depth=2, mode=mode,
                          baseline=(b.images[k], b.spectrograms[k]))
            for k in range(3)]
    for k in range(len(e.node_values)):
      np.testing.assert_allclose(
          e.node_values[k], np.mean([x.node_values[k] for x in each], 0),
          atol=1e-6)
    np.testing.assert_allclose(
        e.baseline_probability,
        np.mean([x.baseline_probability for x in each], 0), atol=1e-6)
    assert e.num_evaluations == 3 * num_evaluations(2, mode)
    _check_efficiency(e)
  with pytest.raises(UserError, match='background_size'):
    run.make_baseline(_config('background', background_size=7), (S, S, 3),
                      (S, S, 1), train=train)
  with pytest.raises(ValueError, match='different target'):
    x = dncshap_batch(FN, images, speeches, depth=1, mode='dnc')
    y = dncshap_batch(FN, images, speeches, depth=1, mode='dnc',
                      target=(np.asarray(x.target) + 1) % 3)
    average_explanations([x, y])


def test_paper_explain_variant_is_algorithm1_the_default_is_measured():
  """PAPER.md, "Where we choose": Algorithm 1's setting is one variant."""
  paper = parallelnet_config.get_config('paper_explain').explain
  assert (paper.mode, paper.context, paper.baseline) == (
      'dnc', 'absent', 'zeros')
  default = parallelnet_config.get_config().explain
  assert (default.mode, default.context, default.baseline) == (
      'dnc', 'present', 'mean')
