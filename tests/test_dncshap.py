"""Tests of the DnCShap core (explain/dncshap.py) on tiny inputs and models."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from explain import dncshap
from explain import dncshap_batch
from explain import num_evaluations
from explain import region_boxes
import train_helpers

pytestmark = pytest.mark.usefixtures('fast_compile')

H = W = T = F = 8
NUM_CLASSES = 3
ALL_SETTINGS = (('exact', 'absent'), ('dnc', 'absent'), ('dnc', 'present'),
                ('dnc', 'random'))


def _inputs(seed=0, image_shape=(H, W, 3), speech_shape=(T, F, 1)):
  k1, k2 = jax.random.split(jax.random.key(seed))
  image = jax.random.uniform(k1, image_shape, minval=0.2, maxval=1.0)
  speech = jax.random.uniform(k2, speech_shape, minval=0.2, maxval=1.0)
  return np.asarray(image), np.asarray(speech)


def _flat(images, spectrograms):
  return jnp.concatenate([images.reshape(images.shape[0], -1),
                          spectrograms.reshape(spectrograms.shape[0], -1)], 1)


def _make_nonlinear(seed=0, image_shape=(H, W, 3), speech_shape=(T, F, 1)):
  """A small MLP with a cross-modal product: strongly non-additive."""
  n = int(np.prod(image_shape) + np.prod(speech_shape))
  k1, k2, k3 = jax.random.split(jax.random.key(100 + seed), 3)
  w1 = np.asarray(jax.random.normal(k1, (n, 16))) / np.sqrt(n) * 4
  w2 = np.asarray(jax.random.normal(k2, (16, NUM_CLASSES)))
  w3 = np.asarray(jax.random.normal(k3, (n, NUM_CLASSES))) / np.sqrt(n) * 2
  n_image = int(np.prod(image_shape))

  def fn(images, spectrograms):
    x = _flat(images, spectrograms)
    cross = (x[:, :n_image].mean(1) * x[:, n_image:].mean(1))[:, None]
    logits = jnp.tanh(x @ w1) @ w2 + 3 * cross * (x @ w3)
    return jax.nn.softmax(logits, axis=-1)

  return fn


NONLINEAR = _make_nonlinear()
# NONLINEAR compiled whole for the tests' own reference evaluations: op by
# op, each new batch shape would compile every op of it on its own.
NONLINEAR_JIT = jax.jit(NONLINEAR)


def _leaf_masks(image_shape, speech_shape, depth):
  """Pixel masks of the 2L leaves, from the boxes (tested separately)."""
  masks = []
  for shape in (image_shape, speech_shape):
    for y0, x0, y1, x1 in region_boxes(shape, depth):
      m = np.zeros(shape, bool)
      m[y0:y1, x0:x1] = True
      masks.append(m)
  n = 2**depth
  return masks[:n], masks[n:]


def _values_of_all_subsets(fn, image, speech, depth, target):
  """v(S) for every subset S of the 2L leaves (bit l of S = leaf l)."""
  image_masks, speech_masks = _leaf_masks(image.shape[:2], speech.shape[:2],
                                          depth)
  n = 2**depth
  subsets = np.arange(2**(2 * n))
  bits = (subsets[:, None] >> np.arange(2 * n)[None, :]) & 1
  keep_image = np.einsum('sl,lhw->shw', bits[:, :n],
                         np.stack(image_masks).astype(np.int64)) > 0
  keep_speech = np.einsum('sl,lhw->shw', bits[:, n:],
                          np.stack(speech_masks).astype(np.int64)) > 0
  images = np.where(keep_image[..., None], image, 0.0).astype(np.float32)
  speeches = np.where(keep_speech[..., None], speech, 0.0).astype(np.float32)
  out = np.concatenate([np.asarray(jax.jit(fn)(images[i:i + 4096],
                                               speeches[i:i + 4096]))
                        for i in range(0, len(subsets), 4096)])
  return out[:, target].astype(np.float64)


def _brute_force_owen(values, num_levels):
  """Owen values of the leaves by their definition (Owen 1977).

  The Owen value is a player's marginal contribution averaged over the
  orders of all players that keep every union of the hierarchy contiguous.
  In a binary hierarchy such an order is fixed by which child of every
  internal node goes first, so we enumerate all 2**(#internal nodes) flip
  patterns, walk each order and average the marginal contributions.
  """
  num_leaves = 2**num_levels
  num_internal = num_leaves - 1  # Heap numbering: node 1 = root.
  flips = (np.arange(2**num_internal)[:, None]
           >> np.arange(num_internal)[None, :]) & 1  # (orders, internal)
  leaves = np.arange(num_leaves)
  rank = np.zeros((len(flips), num_leaves), np.int64)
  for level in range(num_levels):
    heap_node = (1 << level) + (leaves >> (num_levels - level))  # Ancestor.
    bit = (leaves >> (num_levels - level - 1)) & 1  # Which child we're in.
    first = bit ^ flips[:, heap_node - 1]
    rank = rank * 2 + first
  order = np.argsort(rank, axis=1)  # (orders, leaves), leaves in play order.
  phi = np.zeros(num_leaves)
  coalition = np.zeros(len(flips), np.int64)
  for position in range(num_leaves):
    player = order[:, position]
    after = coalition | (1 << player)
    np.add.at(phi, player, values[after] - values[coalition])
    coalition = after
  return phi / len(flips)


# --------------------------------------------------------------------------
# Geometry.
# --------------------------------------------------------------------------


def test_region_boxes_split_axis0_first_with_odd_sizes():
  np.testing.assert_array_equal(region_boxes((7, 9), 1),
                                [[0, 0, 3, 9], [3, 0, 7, 9]])
  np.testing.assert_array_equal(
      region_boxes((7, 9), 2),
      [[0, 0, 3, 4], [0, 4, 3, 9], [3, 0, 7, 4], [3, 4, 7, 9]])


@pytest.mark.parametrize('shape', [(7, 9), (5, 11), (8, 8), (128, 128)])
@pytest.mark.parametrize('depth', [1, 2, 3])
def test_region_boxes_tile_exactly(shape, depth):
  boxes = region_boxes(shape, depth)
  assert boxes.shape == (2**depth, 4)
  cover = np.zeros(shape, int)
  for y0, x0, y1, x1 in boxes:
    assert y1 > y0 and x1 > x0
    cover[y0:y1, x0:x1] += 1
  np.testing.assert_array_equal(cover, 1)


def test_too_deep_for_input_is_an_error():
  image, speech = _inputs(image_shape=(16, 16, 3), speech_shape=(5, 11, 1))
  with pytest.raises(ValueError, match='too deep for the spectrogram'):
    dncshap(NONLINEAR, image, speech, depth=5)


# --------------------------------------------------------------------------
# Exact mode against brute force; efficiency; Algorithm 1.
# --------------------------------------------------------------------------


@pytest.mark.parametrize('depth', train_helpers.fast_first([1, 2, 3]))
def test_exact_equals_brute_force_owen(depth):
  image, speech = _inputs(seed=depth)
  e = dncshap(NONLINEAR, image, speech, depth=depth, mode='exact')
  values = _values_of_all_subsets(NONLINEAR, image, speech, depth,
                                  int(e.target))
  owen = _brute_force_owen(values, depth + 1)
  n = 2**depth
  np.testing.assert_allclose(e.image_regions.values, owen[:n], atol=2e-6)
  np.testing.assert_allclose(e.speech_regions.values, owen[n:], atol=2e-6)
  # Internal nodes: the Owen value of a union is the sum of its leaves'.
  for k, level in enumerate(e.node_values):
    expected = owen.reshape(2**k, -1).sum(1)
    np.testing.assert_allclose(level, expected, atol=4e-6)
  assert abs(owen).max() > 1e-3  # The game is not trivial.


@pytest.mark.parametrize('mode,context',
                         train_helpers.fast_first(ALL_SETTINGS))
def test_efficiency_at_every_node_and_algorithm1_modality_scores(mode,
                                                                  context):
  image, speech = _inputs(seed=5)
  e = dncshap(NONLINEAR, image, speech, depth=3, mode=mode, context=context,
              key=jax.random.key(1))
  levels = e.node_values
  assert [lv.shape for lv in levels] == [(1,), (2,), (4,), (8,), (16,)]
  for k in range(1, len(levels)):
    np.testing.assert_allclose(levels[k].reshape(-1, 2).sum(1), levels[k - 1],
                               atol=1e-6)
  np.testing.assert_allclose(e.modality_scores.sum(),
                             e.probability - e.baseline_probability, atol=1e-6)
  np.testing.assert_allclose(e.image_map.sum(), e.modality_scores[0],
                             atol=1e-6)
  np.testing.assert_allclose(e.speech_map.sum(), e.modality_scores[1],
                             atol=1e-6)
  # Algorithm 1's four evaluations, independently.
  zi, zs = np.zeros_like(image), np.zeros_like(speech)
  probs = np.asarray(NONLINEAR_JIT(np.stack([image, zi, image, zi]),
                                   np.stack([speech, zs, zs, speech])))
  c = int(np.argmax(probs[0]))
  pred_f, pred_b, pred_1, pred_2 = probs[:, c]
  assert int(e.target) == c
  np.testing.assert_allclose(e.probability, pred_f, atol=1e-6)
  np.testing.assert_allclose(e.baseline_probability, pred_b, atol=1e-6)
  score_1 = ((pred_1 - pred_b) + (pred_f - pred_2)) / 2
  score_2 = ((pred_2 - pred_b) + (pred_f - pred_1)) / 2
  np.testing.assert_allclose(e.modality_scores, [score_1, score_2], atol=1e-6)


def test_dnc_differs_from_exact_below_the_modalities():
  """dnc is cheaper, not the Owen value: on a non-additive game they differ."""
  image, speech = _inputs(seed=5)
  exact = dncshap(NONLINEAR, image, speech, depth=2, mode='exact')
  dnc = dncshap(NONLINEAR, image, speech, depth=2, mode='dnc')
  np.testing.assert_allclose(exact.modality_scores, dnc.modality_scores,
                             atol=1e-6)
  assert np.abs(exact.node_values[-1] - dnc.node_values[-1]).max() > 1e-5


def test_null_player_exact_respects_it_dnc_does_not():
  """The docstring's caveat, on a pure interaction of image leaves 0 and 2.

  Depth 2, image leaves 0, 1 (top half) and 2, 3 (bottom). v = m0 * m2, the
  product of the two leaves' means. Leaf 1 has no effect: its Owen value is
  0; dnc (absent context) gives the top half 1/2 of the interaction, sees
  nothing inside it, and spreads that residual over leaves 0 and 1 by area.
  """
  image, speech = _inputs(seed=4)

  def interaction(images, spectrograms):
    v = images[:, :4, :4].mean((1, 2, 3)) * images[:, 4:, :4].mean((1, 2, 3))
    return jnp.stack([v, 1 - v], axis=1)

  exact = dncshap(interaction, image, speech, depth=2, mode='exact', target=0)
  dnc = dncshap(interaction, image, speech, depth=2, mode='dnc', target=0)
  p = float(exact.probability - exact.baseline_probability)
  np.testing.assert_allclose(exact.image_regions.values, [p / 2, 0, p / 2, 0],
                             atol=1e-6)
  np.testing.assert_allclose(dnc.image_regions.values,
                             [p / 4, p / 4, p / 4, p / 4], atol=1e-6)
  np.testing.assert_allclose(dnc.speech_regions.values, 0, atol=1e-7)
  # Context 'present', by hand from PAPER.md's dnc rule: the halves split
  # p evenly (Eq. 3 in context {speech}, r = 0); inside the top half, with
  # the bottom present, leaf 0 alone completes the product: s = (p, 0),
  # r = p/2 - p, shared by area: (3p/4, -p/4); the bottom half alike.
  present = dncshap(interaction, image, speech, depth=2, mode='dnc',
                    context='present', target=0)
  np.testing.assert_allclose(present.image_regions.values,
                             [3 * p / 4, -p / 4, 3 * p / 4, -p / 4],
                             atol=1e-6)


class _Recursion:
  """DnCShap re-derived from PAPER.md ("The hierarchy of players", "Below
  the modalities") as a plain numpy recursion, sharing no code with
  explain/dncshap.py: its own region splitting, masking and v(S) cache.

  A node is (modality, box); a coalition is a frozenset of nodes, whose
  pixels keep the input's values while every other pixel takes the baseline.
  """

  def __init__(self, fn, inputs, baselines, depth):
    self.fn, self.inputs, self.baselines = jax.jit(fn), inputs, baselines
    self.depth = depth
    self.cache = {}
    full = self.v_all_probs()
    self.target = int(np.argmax(full))

  def v_all_probs(self):
    return np.asarray(self.fn(self.inputs[0][None], self.inputs[1][None]),
                      np.float64)[0]

  def v(self, coalition):
    key = frozenset(coalition)
    if key not in self.cache:
      arrays = []
      for m in (0, 1):
        keep = np.zeros(self.inputs[m].shape[:2], bool)
        for mod, (y0, x0, y1, x1) in key:
          if mod == m:
            keep[y0:y1, x0:x1] = True
        arrays.append(np.where(keep[..., None], self.inputs[m],
                               self.baselines[m])[None].astype(np.float32))
      self.cache[key] = float(np.asarray(self.fn(*arrays))[0, self.target])
    return self.cache[key]

  @staticmethod
  def split(node, level):
    """Halves of a region, along rows at even levels below the modality
    (time first for speech), columns at odd; n//2 and n - n//2."""
    m, (y0, x0, y1, x1) = node
    if level % 2 == 0:
      mid = y0 + (y1 - y0) // 2
      return (m, (y0, x0, mid, x1)), (m, (mid, x0, y1, x1))
    mid = x0 + (x1 - x0) // 2
    return (m, (y0, x0, y1, mid)), (m, (y0, mid, y1, x1))

  @staticmethod
  def area(node):
    _, (y0, x0, y1, x1) = node
    return (y1 - y0) * (x1 - x0)

  def modalities(self):
    return [(m, (0, 0) + self.inputs[m].shape[:2]) for m in (0, 1)]

  def dnc(self, context):
    """{node: value} by the paper's recursion made efficient (PAPER.md):
    s_A, s_B by Eq. 3 in the node's context, r = phi_N - (f - b) shared by
    area; each child's context is the node's (absent) or the node's plus
    the sibling (present)."""
    values = {}

    def visit(node, level, phi, ctx, b, f):
      values[node] = phi
      if level == self.depth:
        return
      a_node, b_node = self.split(node, level)
      a, c = self.v(ctx | {a_node}), self.v(ctx | {b_node})
      s_a = ((a - b) + (f - c)) / 2
      s_b = ((c - b) + (f - a)) / 2
      r = phi - (f - b)
      phi_a = s_a + r * self.area(a_node) / self.area(node)
      phi_b = s_b + r * self.area(b_node) / self.area(node)
      if context == 'absent':
        visit(a_node, level + 1, phi_a, ctx, b, a)
        visit(b_node, level + 1, phi_b, ctx, b, c)
      else:
        visit(a_node, level + 1, phi_a, ctx | {b_node}, c, f)
        visit(b_node, level + 1, phi_b, ctx | {a_node}, a, f)

    image, speech = self.modalities()
    v0, vi, vs, vall = (self.v(set()), self.v({image}), self.v({speech}),
                        self.v({image, speech}))
    phi_image = ((vi - v0) + (vall - vs)) / 2  # Eq. 3-4.
    phi_speech = ((vs - v0) + (vall - vi)) / 2
    for node, phi, sibling, v_sib, v_node in (
        (image, phi_image, speech, vs, vi), (speech, phi_speech, image, vi,
                                             vs)):
      if context == 'absent':
        visit(node, 0, phi, frozenset(), v0, v_node)
      else:
        visit(node, 0, phi, frozenset({sibling}), v_sib, vall)
    return values

  def exact(self):
    """{node: value}: phi(N) = 2^-k sum over the 2^k patterns of the
    siblings of N and of its ancestors of v(C_b + N) - v(C_b)."""
    values = {}

    def visit(node, level, siblings):
      total = 0.0
      for bits in range(2**len(siblings)):
        ctx = {s for j, s in enumerate(siblings) if bits >> j & 1}
        total += self.v(ctx | {node}) - self.v(ctx)
      values[node] = total / 2**len(siblings)
      if level < self.depth:
        a_node, b_node = self.split(node, level)
        visit(a_node, level + 1, siblings + [b_node])
        visit(b_node, level + 1, siblings + [a_node])

    image, speech = self.modalities()
    visit(image, 0, [speech])
    visit(speech, 0, [image])
    return values

  def leaves(self, values, m):
    """Leaf (box, value) pairs of modality m in heap order."""
    nodes = [self.modalities()[m]]
    for level in range(self.depth):
      nodes = [h for n in nodes for h in self.split(n, level)]
    return [n[1] for n in nodes], [values[n] for n in nodes]


@pytest.mark.parametrize('mode,context', train_helpers.fast_first(
    [('dnc', 'absent'), ('dnc', 'present'), ('exact', 'absent')]))
def test_independent_recursion_on_a_nonlinear_game_at_depth_3(mode, context):
  """Every leaf value (and the modality scores) against the recursion
  written from PAPER.md's formulas: odd sizes (area shares differ), a
  nonzero baseline, a non-additive model."""
  image_shape, speech_shape = (7, 9, 3), (5, 11, 1)
  fn = _make_nonlinear(seed=3, image_shape=image_shape,
                       speech_shape=speech_shape)
  image, speech = _inputs(seed=6, image_shape=image_shape,
                          speech_shape=speech_shape)
  rng = np.random.default_rng(1)
  base = (rng.uniform(0, 0.3, image_shape).astype(np.float32),
          rng.uniform(0, 0.3, speech_shape).astype(np.float32))
  ref = _Recursion(fn, (image, speech), base, depth=3)
  values = ref.exact() if mode == 'exact' else ref.dnc(context)
  e = dncshap(fn, image, speech, depth=3, mode=mode, context=context,
              baseline=base)
  assert int(e.target) == ref.target
  np.testing.assert_allclose(
      e.modality_scores, [values[n] for n in ref.modalities()], atol=1e-6)
  for m, regions in ((0, e.image_regions), (1, e.speech_regions)):
    boxes, expected = ref.leaves(values, m)
    np.testing.assert_array_equal(regions.boxes, boxes)
    np.testing.assert_allclose(regions.values, expected, atol=2e-6)
  # Not a game where every rule agrees: the leaves differ by context.
  if context == 'present':
    absent = ref.leaves(ref.dnc('absent'), 0)[1]
    assert np.abs(np.array(absent) - ref.leaves(values, 0)[1]).max() > 1e-4


@pytest.mark.parametrize('mode,context',
                         train_helpers.fast_first(ALL_SETTINGS))
def test_linear_model_gives_each_region_its_weighted_sum(mode, context):
  image_shape, speech_shape = (7, 9, 3), (5, 11, 1)
  image, speech = _inputs(seed=2, image_shape=image_shape,
                          speech_shape=speech_shape)
  rng = np.random.default_rng(0)
  w_image = rng.normal(size=image_shape).astype(np.float32)
  w_speech = rng.normal(size=speech_shape).astype(np.float32)
  base_image = rng.uniform(size=image_shape).astype(np.float32)
  base_speech = rng.uniform(size=speech_shape).astype(np.float32)

  def linear(images, spectrograms):
    lin = ((images * w_image).sum((1, 2, 3))
           + (spectrograms * w_speech).sum((1, 2, 3)) + 0.5)
    return jnp.stack([lin, -lin, jnp.zeros_like(lin)], axis=1)

  e = dncshap(linear, image, speech, depth=3, mode=mode, context=context,
              target=0, baseline=(base_image, base_speech),
              key=jax.random.key(3))
  contrib_image = ((image - base_image) * w_image).sum(-1)
  contrib_speech = ((speech - base_speech) * w_speech).sum(-1)
  for regions, contrib in ((e.image_regions, contrib_image),
                           (e.speech_regions, contrib_speech)):
    expected = [contrib[y0:y1, x0:x1].sum() for y0, x0, y1, x1 in
                regions.boxes]
    np.testing.assert_allclose(regions.values, expected, atol=2e-5)
  # Per-pixel maps: region value spread evenly over the region.
  for (y0, x0, y1, x1), value in zip(e.image_regions.boxes,
                                     np.asarray(e.image_regions.values)):
    np.testing.assert_allclose(e.image_map[y0:y1, x0:x1],
                               value / ((y1 - y0) * (x1 - x0)), atol=1e-6)
  np.testing.assert_allclose(e.speech_map.sum(), contrib_speech.sum(),
                             atol=2e-5)


# --------------------------------------------------------------------------
# Cost, chunking, randomness, batching.
# --------------------------------------------------------------------------


def test_evaluation_count_formulas():
  assert [num_evaluations(d - 1, 'exact') for d in range(1, 7)] == [
      4, 12, 44, 172, 684, 2732]
  assert [num_evaluations(d - 1, 'dnc') for d in range(1, 7)] == [
      4, 8, 16, 32, 64, 128]


@pytest.mark.parametrize('mode,context', train_helpers.fast_first(
    [('exact', 'absent'), ('dnc', 'absent'), ('dnc', 'random')]))
@pytest.mark.parametrize('depth', train_helpers.fast_first([1, 2, 3]))
def test_fn_sees_exactly_the_formula_many_distinct_inputs(mode, context,
                                                          depth):
  image, speech = _inputs(seed=7)
  seen, calls = [], []

  def record(images, spectrograms):
    calls.append(images.shape[0])
    for i in range(images.shape[0]):
      seen.append(np.asarray(images[i]).tobytes()
                  + np.asarray(spectrograms[i]).tobytes())

  def counting(images, spectrograms):
    jax.debug.callback(record, images, spectrograms)
    return NONLINEAR(images, spectrograms)

  max_batch = 10
  e = dncshap(counting, image, speech, depth=depth, mode=mode,
              context=context, key=jax.random.key(0), max_batch=max_batch)
  jax.block_until_ready(e.node_values)
  want = num_evaluations(depth, mode)
  assert e.num_evaluations == want
  assert len(set(seen)) == want
  assert calls == [min(max_batch, want)] * -(-want // max_batch)


@pytest.mark.parametrize('mode,context', train_helpers.fast_first(
    [('exact', 'absent'), ('dnc', 'random')]))
@pytest.mark.slow
def test_results_identical_whatever_max_batch(mode, context):
  """Bitwise identical when fn's rows do not depend on the batch size.

  XLA may round a reduction differently for different batch shapes, which is
  fn's doing, not ours. So the bitwise check uses a fn whose sums are exact
  (dyadic inputs, integer weights: no rounding in any order); the nonlinear
  model is checked to float32 round-off.
  """
  image, speech = _inputs(seed=3)
  image, speech = np.round(image * 8) / 8, np.round(speech * 8) / 8
  rng = np.random.default_rng(1)
  w = rng.integers(-3, 4, size=(H * W * 3 + T * F, 3)).astype(np.float32)

  def polynomial(images, spectrograms):
    logits = jnp.sum(_flat(images, spectrograms)[:, :, None] * w, axis=1)
    return logits + (logits[:, :1] * logits[:, 1:2])**2

  for fn, atol, sizes in ((polynomial, 0.0, (3, 7, 256)),
                          (NONLINEAR, 1e-6, (3, 256))):
    runs = [dncshap(fn, image, speech, depth=2, mode=mode, context=context,
                    key=jax.random.key(4), max_batch=mb)
            for mb in sizes]
    for other in runs[1:]:
      assert int(other.target) == int(runs[0].target)
      for k, level in enumerate(runs[0].node_values):
        np.testing.assert_allclose(level, other.node_values[k], rtol=0,
                                   atol=atol)
      np.testing.assert_allclose(runs[0].image_map, other.image_map, rtol=0,
                                 atol=atol)
      np.testing.assert_allclose(runs[0].speech_map, other.speech_map,
                                 rtol=0, atol=atol)


@pytest.mark.slow
def test_random_context_is_deterministic_and_unbiased():
  image, speech = _inputs(seed=9)
  depth = 2
  exact = dncshap(NONLINEAR, image, speech, depth=depth, mode='exact')
  one = lambda key: dncshap(NONLINEAR, image, speech, depth=depth,
                            context='random', key=key)
  a, b = one(jax.random.key(5)), one(jax.random.key(5))
  np.testing.assert_array_equal(a.node_values[-1], b.node_values[-1])

  draws = 512
  e = dncshap_batch(NONLINEAR, np.stack([image] * draws),
                    np.stack([speech] * draws), depth=depth,
                    context='random', key=jax.random.key(6))
  leaves = np.asarray(e.node_values[-1], np.float64)  # (draws, 8)
  assert leaves.std(0).max() > 1e-4  # The coin really changes the answer.
  # Every draw is exactly efficient.
  np.testing.assert_allclose(leaves.sum(1), exact.node_values[0][0], atol=1e-6)
  # Unbiased: the mean lies within 5 standard errors of the Owen value (CLT;
  # a false alarm has probability ~6e-7 per leaf; the keys are fixed, so the
  # test is deterministic anyway).
  stderr = leaves.std(0, ddof=1) / np.sqrt(draws)
  gap = np.abs(leaves.mean(0) - np.asarray(exact.node_values[-1]))
  assert np.all(gap <= 5 * stderr + 1e-6), (gap, stderr)
  # And it is closer to exact than the deterministic absent-context dnc.
  absent = dncshap(NONLINEAR, image, speech, depth=depth)
  assert gap.max() < np.abs(np.asarray(absent.node_values[-1])
                            - np.asarray(exact.node_values[-1])).max()


@pytest.mark.parametrize('mode,context', train_helpers.fast_first(
    [('exact', 'absent'), ('dnc', 'random')]))
@pytest.mark.slow
def test_batch_equals_per_example(mode, context):
  pairs = [_inputs(seed=s) for s in range(3)]
  images = np.stack([p[0] for p in pairs])
  speeches = np.stack([p[1] for p in pairs])
  base_images = np.stack([np.full((H, W, 3), 0.1 * i, np.float32)
                          for i in range(3)])
  base_speech = np.full((T, F, 1), 0.05, np.float32)  # Shared.
  key = jax.random.key(8)
  for target in (None, np.array([2, 0, 1])):
    batch = dncshap_batch(NONLINEAR, images, speeches, depth=2, mode=mode,
                          context=context, key=key, target=target,
                          baseline=(base_images, base_speech), max_batch=12)
    keys = jax.random.split(key, 3)
    for i in range(3):
      single = dncshap(NONLINEAR, images[i], speeches[i], depth=2, mode=mode,
                       context=context, key=keys[i],
                       target=None if target is None else int(target[i]),
                       baseline=(base_images[i], base_speech))
      got = batch.example(i)
      assert int(got.target) == int(single.target)
      for k, level in enumerate(single.node_values):
        np.testing.assert_allclose(got.node_values[k], level, atol=1e-6)
      np.testing.assert_allclose(got.image_map, single.image_map, atol=1e-7)
      np.testing.assert_allclose(got.probability, single.probability,
                                 atol=1e-6)


# --------------------------------------------------------------------------
# A Flax model, as the explain driver passes it.
# --------------------------------------------------------------------------


class _TinyNet(nn.Module):

  @nn.compact
  def __call__(self, image, spectrogram, train=False):
    x = nn.relu(nn.Conv(4, (3, 3))(image))
    y = nn.relu(nn.Conv(4, (3, 3))(spectrogram))
    x = nn.BatchNorm(use_running_average=not train)(x)
    z = jnp.concatenate([x.reshape(x.shape[0], -1),
                         y.reshape(y.shape[0], -1)], 1)
    return nn.Dense(NUM_CLASSES)(z), {}


def _probs(model, variables, images, spectrograms):
  return jax.nn.softmax(model.apply(variables, images, spectrograms)[0])


@pytest.mark.slow
def test_flax_model_closure_and_partial_agree():
  model = _TinyNet()
  image, speech = _inputs(seed=11)
  # Filled from numpy: a random initialiser, run op by op, compiles each op.
  variables = train_helpers.quick_variables(
      lambda k: model.init(k, image[None], speech[None]))
  closure = lambda im, sp: jax.nn.softmax(
      model.apply(variables, im, sp, train=False)[0])
  partial = jax.tree_util.Partial(functools.partial(_probs, model), variables)
  a = dncshap(closure, image, speech, depth=1, mode='exact')
  b = dncshap(partial, image, speech, depth=1, mode='exact')
  np.testing.assert_allclose(a.node_values[-1], b.node_values[-1], atol=1e-6)
  np.testing.assert_allclose(a.modality_scores.sum(),
                             a.probability - a.baseline_probability, atol=1e-6)
  full = np.asarray(jax.jit(closure)(image[None], speech[None]))[0]
  assert int(a.target) == int(np.argmax(full))
  np.testing.assert_allclose(a.probability, full.max(), atol=1e-6)


# --------------------------------------------------------------------------
# Bad arguments.
# --------------------------------------------------------------------------


@pytest.mark.parametrize('kwargs,message', [
    (dict(depth=0), 'depth must be an integer >= 1'),
    (dict(depth=1.5), 'depth must be an integer >= 1'),
    (dict(depth=1, mode='approx'), 'Unknown mode'),
    (dict(depth=1, context='sometimes'), 'Unknown context'),
    (dict(depth=1, context='random'), 'needs a jax.random key'),
    (dict(depth=1, target=3), r'outside the classes \[0, 3\)'),
    (dict(depth=1, target=-1), 'outside the classes'),
    (dict(depth=1, target=1.0), 'integer class index'),
    (dict(depth=1, max_batch=0), 'max_batch'),
    (dict(depth=1, baseline=(np.zeros((H, W, 1)), None)),
     'image baseline must have shape'),
    (dict(depth=1, baseline=(None, np.zeros((T, F)))),
     'spectrogram baseline must have shape'),
    (dict(depth=1, baseline=np.zeros((H, W, 3))), 'baseline must be None or'),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
  image, speech = _inputs()
  with pytest.raises(ValueError, match=message):
    dncshap(NONLINEAR, image, speech, **kwargs)


def test_bad_shapes_are_clear_errors():
  image, speech = _inputs()
  with pytest.raises(ValueError, match=r'image must have shape \(H, W, 3\)'):
    dncshap(NONLINEAR, image[..., 0], speech, depth=1)
  with pytest.raises(ValueError, match='spectrogram must have shape'):
    dncshap(NONLINEAR, image, np.repeat(speech, 3, -1), depth=1)
  with pytest.raises(ValueError, match=r'image must have shape \(E, H, W, 3\)'):
    dncshap_batch(NONLINEAR, image, speech, depth=1)
  with pytest.raises(ValueError, match='disagree on the batch size'):
    dncshap_batch(NONLINEAR, np.stack([image] * 2), np.stack([speech] * 3),
                  depth=1)
  with pytest.raises(ValueError, match='target must have shape'):
    dncshap_batch(NONLINEAR, np.stack([image] * 2), np.stack([speech] * 2),
                  depth=1, target=np.array([0, 1, 2]))
  with pytest.raises(ValueError, match=r'shape \(batch, num_classes\)'):
    dncshap(lambda im, sp: im.sum((1, 2, 3)), image, speech, depth=1)
