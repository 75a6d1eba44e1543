"""Tests of the explanation tests (explain/evaluation.py, explain/peers.py,
explain/evaluate_run.py), each on a case with a known answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import explain
from explain import evaluate_run
from explain import evaluation
from explain import peers
from explain.dncshap import leaf_id_map
from tests.test_explain_run import fakes  # pylint: disable=unused-import

pytestmark = pytest.mark.usefixtures('fast_compile')

SIZE, DEPTH = 8, 3  # 8x8 inputs, 8 leaves per modality (4 x 2 cells each).


def _linear_apply(variables, images, specs):
  """Two-class 'probabilities' [s, 1 - s], s = a linear score of the inputs
  through modules named like ParallelNet's (N1_i, N1_s, head_img)."""
  p = variables['params']
  s = (jnp.einsum('bhwc,hwc->b', images, p['N1_i']['kernel'])
       + jnp.einsum('bhwc,hwc->b', specs, p['N1_s']['kernel'])) * p[
           'head_img']['scale']
  return jnp.stack([s, 1 - s], 1)


def _linear_variables(key):
  k1, k2 = jax.random.split(key)
  return {'params': {
      'N1_i': {'kernel': jax.random.normal(k1, (SIZE, SIZE, 3))},
      'N1_s': {'kernel': jax.random.normal(k2, (SIZE, SIZE, 1))},
      'head_img': {'scale': jnp.ones(())}}}


def _inputs(n, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.random((n, SIZE, SIZE, 3)).astype(np.float32),
          rng.random((n, SIZE, SIZE, 1)).astype(np.float32))


def _leaf_values(fn, images, specs):
  e = explain.dncshap_batch(fn, images, specs, depth=DEPTH, mode='dnc',
                            target=np.zeros(len(images), np.int32))
  return np.concatenate([np.asarray(e.image_regions.values),
                         np.asarray(e.speech_regions.values)], 1)


def test_randomising_the_whole_model_drops_the_rank_correlation():
  trained = _linear_variables(jax.random.key(0))
  fresh = _linear_variables(jax.random.key(1))
  images, specs = _inputs(16)
  ref = evaluation.split(_leaf_values(
      jax.tree_util.Partial(_linear_apply, trained), images, specs))

  def correlation(names):
    v = _leaf_values(jax.tree_util.Partial(
        _linear_apply, evaluate_run.randomized(trained, fresh, names)),
                     images, specs)
    return {m: evaluation.rank_correlation(ref[m], evaluation.split(v)[m])
            for m in evaluation.MODALITIES}

  same = correlation([])  # Nothing randomised: identical rankings.
  for m in evaluation.MODALITIES:
    np.testing.assert_allclose(same[m], 1.0)
  everything = correlation(None)
  for m in evaluation.MODALITIES:
    assert everything[m].mean() < 0.3, everything[m]
  # The image path alone: the image's ranking goes, the speech's stays.
  image_path = correlation(['N1_i'])
  assert image_path['image'].mean() < 0.3
  np.testing.assert_allclose(image_path['speech'], 1.0)
  # Names the model does not have change nothing.
  assert evaluate_run.randomized(trained, fresh, ['absent'])['params'][
      'N1_i'] is trained['params']['N1_i']


def test_rank_correlation_of_a_constant_row_is_zero():
  a = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
  b = np.array([[3.0, 2.0, 1.0], [5.0, 5.0, 5.0]])
  np.testing.assert_allclose(evaluation.rank_correlation(a, b), [-1.0, 0.0])


def test_random_other_class_is_never_the_target():
  target = np.arange(100) % 4
  other = evaluation.random_other_class(target, 4, np.random.default_rng(0))
  assert np.all(other != target) and set(other) == {0, 1, 2, 3}


def test_noisy_linear_imputation_reproduces_a_ramp_without_noise():
  yy, xx = np.mgrid[0:10, 0:10]
  x = (yy + 2.0 * xx)[..., None]
  removed = np.zeros((10, 10), bool)
  removed[3:7, 2:6] = True
  out = evaluation.noisy_linear_impute(x, removed, np.random.default_rng(0),
                                       noise=0.0)
  np.testing.assert_allclose(out, x, atol=1e-9)
  noisy = evaluation.noisy_linear_impute(x, removed,
                                         np.random.default_rng(0), 0.1)
  assert np.all(noisy[~removed] == x[~removed])
  assert np.abs(noisy - x)[removed].max() > 0


def test_road_on_a_linear_model_ranks_regions_in_weight_order():
  # One bright cell inside each image leaf (4 x 8 cells), zeros around it:
  # imputing a removed leaf from its (zero) neighbours removes exactly w_l.
  size = 16
  boxes = explain.region_boxes((size, size), DEPTH)
  image = np.zeros((1, size, size, 3), np.float32)
  kernel = np.zeros((size, size, 3), np.float32)
  weights = np.array([0.3, 0.05, 0.8, 0.1, 0.6, 0.2, 0.4, 0.7])
  for w, (y0, x0, _, _) in zip(weights, boxes):
    image[0, y0 + 1, x0 + 2] = 1.0
    kernel[y0 + 1, x0 + 2] = w / 3
  spec = np.zeros((1, size, size, 1), np.float32)

  def predict(images, specs):
    s = np.einsum('bhwc,hwc->b', images, kernel)
    return np.stack([s, 1 - s], 1)

  road = evaluation.Road(predict, image, spec, np.zeros(1, np.int32), DEPTH,
                         noise=0.0)
  true = np.concatenate([weights, np.zeros(8)])[None]
  morf = road.curves(true, 'image', 'morf')[0]
  lerf = road.curves(true, 'image', 'lerf')[0]
  ranked = np.sort(weights)[::-1]
  np.testing.assert_allclose(morf, weights.sum() - np.cumsum(ranked)[:-1],
                             atol=1e-5)
  np.testing.assert_allclose(lerf, weights.sum() - np.cumsum(ranked[::-1])
                             [:-1], atol=1e-5)
  # Any other ranking removes less (MoRF higher) / more (LeRF lower).
  rng = np.random.default_rng(0)
  for _ in range(5):
    other = np.concatenate([rng.permutation(weights), np.zeros(8)])[None]
    assert np.all(road.curves(other, 'image', 'morf')[0] >= morf - 1e-6)
    assert np.all(road.curves(other, 'image', 'lerf')[0] <= lerf + 1e-6)
    assert road.curves(other, 'image', 'morf').mean() > morf.mean() or (
        np.allclose(other[0, :8], weights))


def test_road_of_a_method_limited_to_the_first_examples():
  """A method run on fewer examples than ROAD holds (a slow peer) gets the
  curves of those examples, the same as ROAD built on them alone."""
  fn = jax.tree_util.Partial(_linear_apply,
                             _linear_variables(jax.random.key(0)))
  predict = lambda x, y: np.asarray(fn(x, y))
  images, specs = _inputs(5)
  target = np.array([0, 1, 0, 1, 1], np.int32)
  values = np.random.default_rng(0).random((2, 16))
  whole = evaluation.Road(predict, images, specs, target, DEPTH)
  first = evaluation.Road(predict, images[:2], specs[:2], target[:2], DEPTH)
  for m in ('image', 'speech'):
    np.testing.assert_allclose(whole.curves(values, m, 'morf'),
                               first.curves(values, m, 'morf'), rtol=1e-6)


def test_faithfulness_correlation_of_exact_contributions_is_one():
  rng = np.random.default_rng(0)
  values = rng.normal(size=(3, 16))
  chosen = evaluation.subsets(8, 'both', 20, 4, rng)
  full = np.ones(3)
  removed = full[:, None] - np.einsum('ml,el->em', chosen.astype(float),
                                      values)
  np.testing.assert_allclose(evaluation.faithfulness_correlation(
      values, full, removed, chosen), 1.0)
  np.testing.assert_allclose(evaluation.faithfulness_correlation(
      -values, full, removed, chosen), -1.0)
  assert chosen.sum(1).tolist() == [4] * 20


def _masked_values(apply):
  images, specs = _inputs(6, seed=1)
  fn = jax.tree_util.Partial(apply)
  masked = peers.Masked(fn, images.shape[1:], specs.shape[1:], DEPTH)
  zeros = (np.zeros((1,) + images.shape, np.float32),
           np.zeros((1,) + specs.shape, np.float32))
  masks = np.broadcast_to(evaluation.modality_masks(2**DEPTH),
                          (6, 4, 2 * 2**DEPTH))
  return masked(images, specs, *zeros, masks, np.zeros(6, np.int32))


def test_interaction_of_an_additive_model_is_zero():
  def additive(images, specs):
    s = 0.1 * images.mean((1, 2, 3)) + 0.3 * specs.mean((1, 2, 3))
    return jnp.stack([s, 1 - s], 1)

  def multiplicative(images, specs):
    s = images.mean((1, 2, 3)) * specs.mean((1, 2, 3))
    return jnp.stack([s, 1 - s], 1)

  parts = evaluation.interaction(_masked_values(additive))
  np.testing.assert_allclose(parts['interaction'], 0.0, atol=1e-6)
  np.testing.assert_allclose(parts['shapley_image'] + parts['shapley_speech'],
                             parts['total'], atol=1e-6)
  rows = evaluation.interaction_by_class(_masked_values(additive),
                                         np.zeros(6, int), ['a', 'b'])
  assert [r['cls'] for r in rows] == ['a', 'all']
  assert abs(rows[0]['share_image'] + rows[0]['share_speech'] - 1) < 1e-6
  assert 0.1 < rows[0]['share_image'] < 0.4  # 0.1 mean(x) vs 0.3 mean(y).
  # A product of the modalities is all interaction: v(image) = v(speech) = 0.
  inter = evaluation.interaction(_masked_values(multiplicative))
  np.testing.assert_allclose(inter['interaction'], inter['total'], atol=1e-6)
  assert np.all(inter['interaction'] > 0.1)


def test_pointing_and_energy_on_known_geometry():
  boxes = explain.region_boxes((SIZE, SIZE), DEPTH)
  spans = np.stack([np.arange(8) / 8, np.arange(1, 9) / 8], 1)
  ground = evaluation.Ground((SIZE, SIZE), DEPTH, spans, 1.0,
                             cue_boxes=[boxes[5], [-1, -1, -1, -1]],
                             cue_spans=[[0.26, 0.37], [0.0, 0.1]])
  values = np.zeros((2, 16))
  values[0, 5] = values[0, 8 + 2] = 1.0  # On the cues.
  values[1, 8 + 7] = 1.0  # Speech leaf 7 (0.875-1 s) misses [0, 0.1].
  out = evaluation.pointing_and_energy(ground, values)
  assert out['pointing_image'] == 1.0 and out['n_image'] == 1
  assert out['pointing_speech'] == 0.5 and out['n_speech'] == 2
  assert out['energy_image'] == 1.0


@pytest.mark.slow  # ~15 s on a busy 2-core CPU (the whole driver).
def test_driver_writes_every_table(fakes, tmp_path, monkeypatch):  # pylint: disable=redefined-outer-name
  """--mode=explain_eval's driver on the stand-in model and data of
  test_explain_run.py: every file, its columns, and the known answers the
  cue model allows (its evidence is where the planted cues of examples 0
  and 1 are)."""
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  config, _ = fakes
  config.explain_eval.num_examples = 3
  config.explain_eval.sanity_examples = 3
  config.explain_eval.peers = 'occlusion,random'
  config.explain_eval.sanity_methods = 'dncshap,occlusion'
  config.explain_eval.num_subsets = 6
  # 'all' re-initialises w to a negative weight: every ranking reverses.
  monkeypatch.setattr(models, 'init_variables', lambda *a, **k: {
      'params': {'w': jnp.float32(-5.0)}})
  tables = evaluate_run.evaluate(config, str(tmp_path))
  out = tmp_path / 'explain_eval'
  for name in ('sanity', 'faithfulness', 'localisation', 'interaction'):
    header = (out / f'{name}.csv').read_text().splitlines()[0]
    assert header.split(',')[:2] == {
        'sanity': ['method', 'randomized'],
        'faithfulness': ['method', 'modality'],
        'localisation': ['method', 'modality'],
        'interaction': ['cls', 'examples']}[name]
  assert '## Randomisation sanity checks' in (out / 'explain_eval.md'
                                              ).read_text()
  sanity = {(r['method'], r['randomized'], r['modality']): r
            for r in tables['sanity']}
  for method in ('dncshap', 'occlusion'):
    for m in ('image', 'speech'):
      assert sanity[(method, 'cascade: heads', m)]['spearman_mean'] == 1.0
      assert sanity[(method, 'cascade: all', m)]['spearman_mean'] < -0.5
      assert (method, 'random_logit', m) in sanity
  loc = {(r['method'], r['modality']): r for r in tables['localisation']}
  assert loc[('dncshap', 'image')]['pointing'] == pytest.approx(2 / 3)
  assert loc[('occlusion', 'speech')]['pointing'] == pytest.approx(2 / 3)
  # The cue model is additive in its modalities before the softmax: a
  # small interaction only.
  (row,) = [r for r in tables['interaction'] if r['cls'] == 'all']
  assert abs(row['interaction']) < abs(row['total'])


def test_shap_peers_without_shap_fail_before_any_work(monkeypatch, tmp_path):
  """Asking for a shap peer without shap installed is a one-line UserError
  at the start, not an ImportError after the other methods have run."""
  import sys  # pylint: disable=g-import-not-at-top
  from configs import parallelnet as parallelnet_config  # pylint: disable=g-import-not-at-top
  from parallelnet.core.errors import UserError  # pylint: disable=g-import-not-at-top
  config = parallelnet_config.get_config('runlocal')
  config.explain_eval.peers = 'occlusion,shap-partition'
  monkeypatch.setitem(sys.modules, 'shap', None)  # `import shap` fails.
  with pytest.raises(UserError, match='config.explain_eval.peers.*shap'):
    evaluate_run.evaluate(config, str(tmp_path / 'no_workdir'))


@pytest.mark.parametrize('budget', [2, 12])
def test_gradients_of_a_linear_model_are_exact_without_padded_passes(budget):
  """Gradient x input and IG of a linear score are (x - x') w summed per
  leaf, and the model sees only the (baseline, alpha) pairs asked for: one
  pass of E rows for gradient x input, 6 + 6 for IG's 6 midpoints x 2
  baselines, not groups padded to 8."""
  variables = _linear_variables(jax.random.key(0))
  rows = []

  def counted(v, images, specs):
    rows.append(images.shape[0])  # At trace time.
    return _linear_apply(v, images, specs)
  fn = jax.tree_util.Partial(counted, variables)

  images, specs = _inputs(3)
  base_i, base_s = _inputs(6, seed=1)
  base_i, base_s = base_i.reshape(2, 3, *base_i.shape[1:]), base_s.reshape(
      2, 3, *base_s.shape[1:])
  grad = peers.gradient_fn(fn, images.shape[1:], specs.shape[1:], DEPTH)
  target = np.zeros(3, np.int32)
  values, evals = peers.gradients(grad, fn, images, specs, base_i, base_s,
                                  target, budget)
  if budget == 2:  # One gradient at the mean baseline.
    base_i, base_s = base_i.mean(0, keepdims=True), base_s.mean(
        0, keepdims=True)
  p = variables['params']
  leaf_i = np.asarray(leaf_id_map((SIZE, SIZE), DEPTH)).reshape(-1)
  px = ((images - base_i) * np.asarray(p['N1_i']['kernel'])).sum(-1).mean(
      0).reshape(3, -1)
  py = ((specs - base_s) * np.asarray(p['N1_s']['kernel'])).sum(-1).mean(
      0).reshape(3, -1)
  want = np.concatenate([
      np.stack([px[:, leaf_i == l].sum(1) for l in range(8)], 1),
      np.stack([py[:, leaf_i == l].sum(1) for l in range(8)], 1)], 1)
  np.testing.assert_allclose(values, want, rtol=1e-4, atol=1e-4)
  assert evals == budget
  assert rows == [3 * (1 if budget == 2 else 6)]
