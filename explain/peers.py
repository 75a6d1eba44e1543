"""Peer attribution methods on DnCShap's leaf regions, and masked evaluation.

Every method ranks the same 2L leaf regions (DnCShap's hierarchy: image
leaves then speech leaves, L = 2**depth) for a fixed target class, so the
evaluation metrics (explain/evaluation.py) compare them on equal terms.

  Masked     v(masks): fn on inputs where each leaf is kept or takes the
             baseline, averaged over K baselines (also the removal used by
             deletion / insertion, faithfulness correlation, interaction).
  occlusion  each leaf replaced by the baseline alone: v(all) - v(all - l);
             2L + 1 evaluations.
  integrated gradients / gradient x input  pixel attributions summed over
             each leaf (`gradient_fn`, `ig_alphas`).

Baselines are arrays (K, E, ...) (K baselines per example); nothing here
imports the rest of the project.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from explain.dncshap import leaf_id_map


class Masked:
  """v(masks) for a batch of examples: fn on inputs where each leaf is kept
  or takes the baseline, averaged over K baselines, for the target class."""

  def __init__(self, fn, image_shape, speech_shape, depth):
    self.leaves = 2**depth
    self.image_leaf = jnp.asarray(leaf_id_map(tuple(image_shape[:2]), depth))
    self.speech_leaf = jnp.asarray(leaf_id_map(tuple(speech_shape[:2]),
                                               depth))
    self.fn = fn
    self._jit = jax.jit(self._values)

  def _values(self, fn, images, specs, base_i, base_s, masks, target):
    # images (E, H, W, 3); base_i (K, E, H, W, 3); masks (E, M, 2L) bool.
    n = self.leaves

    def one(image, spec, bi, bs, m, t):
      keep_i = jnp.take(m[:, :n], self.image_leaf, axis=1)[..., None]
      keep_s = jnp.take(m[:, n:], self.speech_leaf, axis=1)[..., None]

      def per_base(bi_k, bs_k):
        x = jnp.where(keep_i, image, bi_k)
        y = jnp.where(keep_s, spec, bs_k)
        return fn(x, y)[:, t]
      return jnp.mean(jax.vmap(per_base)(bi, bs), axis=0)

    return jax.vmap(one, in_axes=(0, 0, 1, 1, 0, 0))(
        images, specs, base_i, base_s, masks, target)

  def __call__(self, images, specs, base_i, base_s, masks, target, fn=None):
    """(E, M) values of the M leaf masks (E, M, 2L) per example; `fn`
    (default the one given at construction) of the same structure reuses
    the compilation."""
    return np.asarray(self._jit(self.fn if fn is None else fn, images, specs, base_i, base_s,
                                jnp.asarray(masks, bool),
                                jnp.asarray(target, jnp.int32)), np.float64)


def modality_sums(values):
  """(E, 2) [image, speech]: a peer's leaf values summed per modality."""
  n = values.shape[1] // 2
  return np.stack([values[:, :n].sum(1), values[:, n:].sum(1)], 1)


def occlusion(masked, images, specs, base_i, base_s, target, fn=None):
  """(E, 2L) occlusion values: v(all) - v(all but leaf l)."""
  n2 = 2 * masked.leaves
  masks = np.concatenate([np.ones((1, n2), bool), ~np.eye(n2, dtype=bool)])
  masks = np.broadcast_to(masks, (len(images),) + masks.shape)
  v = masked(images, specs, base_i, base_s, masks, target, fn)
  return v[:, :1] - v[:, 1:]


def gradient_fn(fn, image_shape, speech_shape, depth, group=8):
  """jitted (fn, images, specs, bases, target, alphas) -> (E, 2L) leaf sums
  of (x - x') * mean over alphas and baselines of grad f(x' + a (x - x')).

  The (baseline, alpha) pairs go through `jax.lax.map` in groups of at most
  `group`, as even as the count allows (the last padded with zero weight), so
  memory holds E * group backward passes and gradient x input (one pair)
  pays for one.
  """
  image_leaf = jnp.asarray(leaf_id_map(tuple(image_shape[:2]), depth))
  speech_leaf = jnp.asarray(leaf_id_map(tuple(speech_shape[:2]), depth))
  n = 2**depth

  @jax.jit
  def run(fn, images, specs, base_i, base_s, target, alphas):
    k, p = base_i.shape[0], alphas.shape[0]
    pairs = k * p
    size = math.ceil(pairs / math.ceil(pairs / group))  # Pairs per group.
    padded = -(-pairs // size) * size
    kk = jnp.arange(padded) // p % k
    aa = alphas[jnp.arange(padded) % p]
    ww = (jnp.arange(padded) < pairs).astype(jnp.float32)

    e = images.shape[0]

    def total(x, y):  # Sum of each row's target probability: one backward.
      out = fn(x.reshape((-1,) + x.shape[2:]), y.reshape((-1,) + y.shape[2:]))
      return out.reshape(size, e, -1)[:, jnp.arange(e), target].sum()
    grad = jax.grad(total, argnums=(0, 1))

    def one_group(g):
      k_g, a_g, w_g = g
      bi, bs = base_i[k_g], base_s[k_g]  # (G, E, ...)
      a = a_g[:, None, None, None, None]
      gx, gy = grad(bi + a * (images - bi), bs + a * (specs - bs))
      px = ((images - bi) * gx).sum(-1)  # (G, E, H, W)
      py = ((specs - bs) * gy).sum(-1)
      return (jnp.einsum('g,geij->eij', w_g, px),
              jnp.einsum('g,geij->eij', w_g, py))

    groups = (kk.reshape(-1, size), aa.reshape(-1, size),
              ww.reshape(-1, size))
    px, py = jax.lax.map(one_group, groups)
    px, py = px.sum(0) / pairs, py.sum(0) / pairs  # (E, H, W), (E, T, F)
    ix = jax.vmap(lambda m: jax.ops.segment_sum(
        m.reshape(-1), image_leaf.reshape(-1), n))(px)
    iy = jax.vmap(lambda m: jax.ops.segment_sum(
        m.reshape(-1), speech_leaf.reshape(-1), n))(py)
    return jnp.concatenate([ix, iy], 1)
  return run


def ig_alphas(budget, num_baselines):
  """(alphas, gradients per example) of Integrated Gradients with `budget`
  evaluations (a gradient costs 2) spread over the baselines, midpoint
  rule; budget <= 2 is gradient x input (alpha 1, one gradient)."""
  if budget <= 2:
    return jnp.ones((1,), jnp.float32), 1
  per_base = max(1, budget // 2 // num_baselines)
  alphas = (jnp.arange(per_base, dtype=jnp.float32) + 0.5) / per_base
  return alphas, per_base * num_baselines


def gradients(grad_fn, fn, images, specs, base_i, base_s, target, budget):
  """(E, 2L) Integrated Gradients (or gradient x input for budget <= 2 at
  the mean baseline) leaf values; the evaluations used per example."""
  k = base_i.shape[0]
  alphas, grads = ig_alphas(budget, k)
  if budget <= 2 and k > 1:  # grad x input: one gradient, mean baseline.
    base_i, base_s = base_i.mean(0, keepdims=True), base_s.mean(
        0, keepdims=True)
  values = np.asarray(grad_fn(fn, images, specs, base_i, base_s,
                              jnp.asarray(target, jnp.int32), alphas),
                      np.float64)
  return values, 2 * grads


def _linkage(num_leaves):
  """scipy linkage matrix of the balanced binary tree over the leaves in tree
  order (our hierarchy), for shap's Partition masker."""
  rows, nodes, size, level = [], list(range(num_leaves)), [1] * num_leaves, 1
  while len(nodes) > 1:
    merged = []
    for a, c in zip(nodes[::2], nodes[1::2]):
      size.append(size[a] + size[c])
      rows.append([a, c, float(level), size[-1]])
      merged.append(len(size) - 1)
    nodes, level = merged, level + 1
  return np.asarray(rows, np.float64)


class Shap:
  """shap's PartitionExplainer (kind='partition', clustered as our
  hierarchy, an Owen-value estimate) or KernelExplainer (kind='kernel',
  l1_reg=False) over the 2L leaf players of one example at a time: the
  model sees 0/1 coalition rows, which `Masked` turns into inputs (absent =
  the baseline). Python per example: slow. `calls` counts evaluations."""

  PAD = 64  # Rows padded to a multiple (fewer compiled shapes; not charged).

  def __init__(self, kind, masked, budget):
    import shap  # pylint: disable=g-import-not-at-top
    if kind not in ('partition', 'kernel'):
      raise ValueError(f'shap kind {kind!r}; expected partition or kernel.')
    self.shap, self.kind, self.masked, self.budget = shap, kind, masked, budget
    self.n2 = 2 * masked.leaves
    self.calls = 0
    self.background = np.zeros((1, self.n2))
    if kind == 'partition':
      self.masker = shap.maskers.Partition(self.background,
                                           clustering=_linkage(self.n2))

  def __call__(self, image, spec, base_i, base_s, target, fn=None):
    """(2L,) values for one example (image (1, H, W, 3), bases (K, 1, ...),
    target (1,))."""
    def f(m):
      m = np.asarray(m) > 0.5
      self.calls += len(m)
      rows = -(-len(m) // self.PAD) * self.PAD
      full = np.concatenate([m, np.ones((rows - len(m), self.n2), bool)])
      return self.masked(image, spec, base_i, base_s, full[None],
                         target, fn)[0, :len(m)]
    x = np.ones((1, self.n2))
    if self.kind == 'partition':
      out = self.shap.PartitionExplainer(f, self.masker)(
          x, max_evals=self.budget, silent=True)
      return np.asarray(out.values[0], np.float64)
    return np.asarray(self.shap.KernelExplainer(f, self.background)
                      .shap_values(x, nsamples=self.budget, silent=True,
                                   l1_reg=False)[0], np.float64)
