"""The explanation literature's tests, on DnCShap's leaf regions.

Every attribution is (E, 2L) leaf values (image leaves then speech leaves,
explain/peers.py), whatever method made it, so every metric applies to
DnCShap and to its peers alike.

  Randomisation sanity checks (Adebayo et al. 2018, "Sanity checks for
    saliency maps"): `rank_correlation` of the leaf values of each modality
    under a randomised model with those of the trained one; a method whose
    explanation survives randomising the model does not explain the model.
  ROAD (Rong et al. 2022, "A consistent and efficient evaluation strategy
    for attribution methods"): the leaves are removed most relevant first
    (MoRF; lower is better) or least relevant first (LeRF; higher is better)
    and filled by noisy linear imputation (`noisy_linear_impute`: each
    removed cell the weighted mean of its 8 neighbours, plus noise), which
    leaks far less of the removed shape than a constant fill.
  Faithfulness correlation (Bhatt et al. 2020, "Evaluating and aggregating
    feature-based model explanations"): the Pearson correlation, over random
    subsets S of leaves, of sum_S values with v(all) - v(all - S).
  Deletion / insertion AUC: the target probability as the leaves are
    removed most important first / added to an all-removed input.
  Localisation: pointing (the top leaf overlaps the planted cue) and energy
    pointing (the share of the positive attribution inside the cue).
  Modality interaction: v(both) - v(image) - v(speech) + v(∅), zero for a
    model additive in its modalities, and each modality's Shapley share of
    p - v(∅).

Nothing here imports the rest of the project.
"""

import functools

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import scipy.stats

from explain.dncshap import leaf_id_map
from explain.dncshap import region_boxes

MODALITIES = ('image', 'speech')


def split(values):
  """{'image': (E, L), 'speech': (E, L)} of (E, 2L) leaf values."""
  values = np.asarray(values, np.float64)
  n = values.shape[1] // 2
  return {'image': values[:, :n], 'speech': values[:, n:]}


# --------------------------------------------------------------------------
# Randomisation sanity checks.
# --------------------------------------------------------------------------


def rank_correlation(a, b):
  """(E,) Spearman rank correlation of each row of a with that row of b
  (scipy.stats.spearmanr). A constant row carries no ranking: its
  correlation counts as 0."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  out = np.zeros(len(a))
  for i, (x, y) in enumerate(zip(a, b)):
    if np.ptp(x) > 0 and np.ptp(y) > 0:
      out[i] = scipy.stats.spearmanr(x, y).statistic
  return out


def random_other_class(target, num_classes, rng):
  """(E,) a class drawn uniformly among those other than target."""
  target = np.asarray(target)
  shift = rng.integers(1, num_classes, size=target.shape)
  return ((target + shift) % num_classes).astype(np.int32)


# --------------------------------------------------------------------------
# ROAD.
# --------------------------------------------------------------------------

_NEIGHBOURS = ((-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
               (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12),
               (1, 1, 1 / 12))


def noisy_linear_impute(x, removed, rng, noise=0.01):
  """ROAD's fill: x (H, W, C) with the cells of `removed` (H, W) replaced.

  Every removed cell equals the weighted mean of its in-bounds 8-neighbours
  (weight 1/6 direct, 1/12 diagonal), known cells fixed: one sparse linear
  system for all channels (factorised once per removed pattern). Gaussian
  noise of std `noise` times x's std is added to the imputed cells. Needs
  at least one kept cell.
  """
  x = np.asarray(x, np.float64)
  removed = np.asarray(removed, bool)
  if not removed.any():
    return x.copy()
  if removed.all():
    raise ValueError('noisy_linear_impute needs at least one kept cell.')
  ys, xs, lu, known = _imputation_system(removed.shape, removed.tobytes())
  flat = x.reshape(-1, x.shape[-1])
  solved = lu.solve(np.asarray(known @ flat))
  out = x.copy()
  out[ys, xs] = solved + noise * (x.std() or 1.0) * rng.standard_normal(
      solved.shape)
  return out


@functools.lru_cache(maxsize=4096)
def _imputation_system(shape, removed_bytes):
  """(ys, xs, LU of A, B) with A x_removed = B x (x flattened, H * W rows)."""
  removed = np.frombuffer(removed_bytes, bool).reshape(shape)
  h, w = shape
  idx = -np.ones((h, w), np.int64)
  ys, xs = np.nonzero(removed)
  idx[ys, xs] = np.arange(len(ys))
  n = len(ys)
  rows, cols, vals = [], [], []
  k_rows, k_cols, k_vals = [], [], []
  weight = np.zeros(n)
  for dy, dx, wt in _NEIGHBOURS:
    ny, nx = ys + dy, xs + dx
    ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    me, ny, nx = np.nonzero(ok)[0], ny[ok], nx[ok]
    weight[me] += wt
    inner = removed[ny, nx]
    rows.append(me[inner])
    cols.append(idx[ny[inner], nx[inner]])
    vals.append(np.full(inner.sum(), -wt))
    k_rows.append(me[~inner])
    k_cols.append(ny[~inner] * w + nx[~inner])
    k_vals.append(np.full((~inner).sum(), wt))
  a = scipy.sparse.csc_matrix(
      (np.concatenate(vals + [weight]),
       (np.concatenate(rows + [np.arange(n)]),
        np.concatenate(cols + [np.arange(n)]))), shape=(n, n))
  known = scipy.sparse.csr_matrix(
      (np.concatenate(k_vals), (np.concatenate(k_rows),
                                np.concatenate(k_cols))), shape=(n, h * w))
  return ys, xs, scipy.sparse.linalg.splu(a), known


class Road:
  """ROAD curves for one batch of examples; imputations cached per (example,
  modality, removed leaves), so methods that remove the same leaves see the
  same imputed input (the noise seeded by that key)."""

  def __init__(self, predict, images, specs, target, depth, *, noise=0.01,
               seed=0):
    """predict(images, specs) -> (B, C) numpy probabilities."""
    self.predict = predict
    self.inputs = {'image': np.asarray(images), 'speech': np.asarray(specs)}
    self.target = np.asarray(target)
    self.leaf = {m: leaf_id_map(tuple(self.inputs[m].shape[1:3]), depth)
                 for m in MODALITIES}
    self.leaves = 2**depth
    self.noise, self.seed = noise, seed
    self._cache = {}

  def _imputed(self, i, modality, removed):
    key = (i, modality, removed)
    if key not in self._cache:
      bits = sum(1 << int(l) for l in removed)
      rng = np.random.default_rng([self.seed, i, MODALITIES.index(modality),
                                   bits])
      cells = np.isin(self.leaf[modality], np.asarray(removed, np.int64))
      self._cache[key] = noisy_linear_impute(
          self.inputs[modality][i], cells, rng, self.noise).astype(np.float32)
    return self._cache[key]

  def curves(self, values, modality, order):
    """(E, L - 1) target probability with the k = 1 .. L-1 leaves of
    `modality` ranked first by `order` ('morf': highest value first,
    'lerf': lowest first) removed and imputed; the other modality intact.
    Ties are broken by leaf index. `values` may cover only the first E
    examples (a method limited to fewer)."""
    v = split(values)[modality]
    if order not in ('morf', 'lerf'):
      raise ValueError(f'ROAD order {order!r}; expected morf or lerf.')
    ranking = np.argsort(-v if order == 'morf' else v, axis=1, kind='stable')
    e, n = v.shape
    xs_i, xs_s = [], []
    for i in range(e):
      for k in range(1, n):
        x = self._imputed(i, modality, tuple(sorted(ranking[i, :k])))
        xs_i.append(x if modality == 'image' else self.inputs['image'][i])
        xs_s.append(x if modality == 'speech' else self.inputs['speech'][i])
    probs = self.predict(np.stack(xs_i), np.stack(xs_s))
    t = np.repeat(self.target[:e], n - 1)
    return probs[np.arange(len(t)), t].reshape(e, n - 1)


# --------------------------------------------------------------------------
# Faithfulness correlation, deletion / insertion.
# --------------------------------------------------------------------------


def subsets(num_leaves, modality, num, size, rng):
  """(num, 2L) bool: random leaf subsets of `size` among the leaves of
  `modality` ('image', 'speech' or 'both'), each without repeats."""
  lo, hi = {'image': (0, num_leaves), 'speech': (num_leaves, 2 * num_leaves),
            'both': (0, 2 * num_leaves)}[modality]
  out = np.zeros((num, 2 * num_leaves), bool)
  for j in range(num):
    out[j, lo + rng.choice(hi - lo, size, replace=False)] = True
  return out


def faithfulness_correlation(values, full, removed_values, chosen):
  """(E,) Bhatt et al.'s faithfulness correlation: Pearson correlation over
  the subsets of sum_S values with v(all) - v(all - S).

  values (E, 2L); full (E,) v(all); removed_values (E, M) v(all - S_j);
  chosen (M, 2L) or (E, M, 2L) bool subsets. A constant side counts as 0.
  """
  values = np.asarray(values, np.float64)
  chosen = np.broadcast_to(chosen, (len(values),) + np.shape(chosen)[-2:])
  attr = np.einsum('eml,el->em', chosen.astype(np.float64), values)
  drop = np.asarray(full)[:, None] - np.asarray(removed_values)
  out = np.zeros(len(values))
  for i in range(len(values)):
    if np.ptp(attr[i]) > 0 and np.ptp(drop[i]) > 0:
      out[i] = scipy.stats.pearsonr(attr[i], drop[i]).statistic
  return out


def deletion_masks(values, rng):
  """(E, 2 (2L + 1), 2L) leaf masks: deletion (the top-i leaves removed,
  i = 0 .. 2L) then insertion (only the top-i kept); ties in random order."""
  values = np.asarray(values)
  order = np.lexsort((rng.random(values.shape), -values), axis=1)
  rank = np.argsort(order, 1)  # rank[e, l]: position of leaf l.
  steps = np.arange(values.shape[1] + 1)
  top = rank[:, None, :] < steps[None, :, None]
  return np.concatenate([~top, top], 1)


def auc(curve):
  """Area under each row of (E, S) curves, x scaled to [0, 1]."""
  curve = np.asarray(curve)
  return np.trapezoid(curve, np.linspace(0, 1, curve.shape[1]), axis=1)


# --------------------------------------------------------------------------
# Localisation.
# --------------------------------------------------------------------------


class Ground:
  """Per-example cue geometry against the leaf regions of one depth.

  image_shape (H, W); speech_spans (L, 2) seconds of each speech leaf;
  duration (s); cue_boxes (E, 4) y0 x0 y1 x1 in model pixels (negative: no
  cue); cue_spans (E, 2) seconds (negative: none).
  """

  def __init__(self, image_shape, depth, speech_spans, duration, cue_boxes,
               cue_spans):
    boxes = region_boxes(tuple(image_shape[:2]), depth).astype(np.float64)
    cue = np.asarray(cue_boxes, np.float64)
    self.has_image = np.all(cue >= 0, 1)
    oy = np.clip(np.minimum(boxes[None, :, 2], cue[:, None, 2])
                 - np.maximum(boxes[None, :, 0], cue[:, None, 0]), 0, None)
    ox = np.clip(np.minimum(boxes[None, :, 3], cue[:, None, 3])
                 - np.maximum(boxes[None, :, 1], cue[:, None, 1]), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    self.image_inside = oy * ox / area  # Fraction of each leaf in the cue.
    self.image_hit = self.image_inside > 0
    self.image_cue_share = ((cue[:, 2] - cue[:, 0]) * (cue[:, 3] - cue[:, 1])
                            / float(np.prod(image_shape[:2])))
    spans = np.asarray(speech_spans, np.float64)[None]  # (1, L, 2)
    span = np.asarray(cue_spans, np.float64)
    self.has_speech = np.all(span >= 0, 1)
    ov = np.clip(np.minimum(spans[..., 1], span[:, None, 1])
                 - np.maximum(spans[..., 0], span[:, None, 0]), 0, None)
    self.speech_inside = ov / (spans[..., 1] - spans[..., 0])
    self.speech_hit = ov > 0
    self.speech_cue_share = (np.clip(span[:, 1], 0, duration)
                             - np.clip(span[:, 0], 0, duration)) / duration

  def subset(self, num):
    """The first `num` examples."""
    out = object.__new__(Ground)
    for k, v in vars(self).items():
      setattr(out, k, v[:num])
    return out

  def chance(self):
    """What a random leaf (pointing) and a flat map (energy) score."""
    return dict(
        pointing_image=float(self.image_hit[self.has_image].mean())
        if self.has_image.any() else float('nan'),
        pointing_speech=float(self.speech_hit[self.has_speech].mean())
        if self.has_speech.any() else float('nan'),
        energy_image=float(self.image_cue_share[self.has_image].mean())
        if self.has_image.any() else float('nan'),
        energy_speech=float(self.speech_cue_share[self.has_speech].mean())
        if self.has_speech.any() else float('nan'))


def pointing(ground, values):
  """{modality: (E,) bool} whether the top leaf overlaps the cue (all
  examples; read them where ground.has_<modality>)."""
  v = split(values)
  rows = np.arange(len(values))
  return {'image': ground.image_hit[rows, np.argmax(v['image'], 1)],
          'speech': ground.speech_hit[rows, np.argmax(v['speech'], 1)]}


def energy(ground, values):
  """{modality: (E,)} share of the positive leaf values inside the cue
  (each leaf's value spread evenly over its area); 0 without any."""
  v = split(values)
  out = {}
  for m, inside in (('image', ground.image_inside),
                    ('speech', ground.speech_inside)):
    pos = np.clip(v[m], 0, None)
    total = pos.sum(1)
    out[m] = np.where(total > 0, (pos * inside).sum(1)
                      / np.where(total > 0, total, 1), 0.0)
  return out


def pointing_and_energy(ground, values, labels=None):
  """Mean pointing and energy per modality over the examples with a cue
  (and pointing per true class when `labels` are given)."""
  hits, share = pointing(ground, values), energy(ground, values)
  has = {'image': ground.has_image, 'speech': ground.has_speech}
  out = {}
  for m in MODALITIES:
    out[f'pointing_{m}'] = float(hits[m][has[m]].mean()) if has[m].any() \
        else float('nan')
    out[f'energy_{m}'] = float(share[m][has[m]].mean()) if has[m].any() \
        else float('nan')
    out[f'n_{m}'] = int(has[m].sum())
  if labels is not None:
    labels = np.asarray(labels)
    out['pointing_by_true_class'] = {
        int(c): [float(hits[m][(labels == c) & has[m]].mean())
                 if ((labels == c) & has[m]).any() else float('nan')
                 for m in MODALITIES] for c in np.unique(labels)}
  return out


# --------------------------------------------------------------------------
# Modality interaction.
# --------------------------------------------------------------------------


def modality_masks(num_leaves):
  """(4, 2L) leaf masks: ∅, image only, speech only, both."""
  n = num_leaves
  out = np.zeros((4, 2 * n), bool)
  out[1, :n] = True
  out[2, n:] = True
  out[3] = True
  return out


def interaction(v):
  """From (E, 4) values [v(∅), v(image), v(speech), v(both)]: dict of (E,)
  interaction v(both) - v(image) - v(speech) + v(∅), total p - v(∅) and the
  modalities' Shapley values (they sum to the total)."""
  v = np.asarray(v, np.float64)
  empty, image, speech, both = v.T
  return dict(
      interaction=both - image - speech + empty,
      total=both - empty,
      shapley_image=0.5 * ((image - empty) + (both - speech)),
      shapley_speech=0.5 * ((speech - empty) + (both - image)))


def interaction_by_class(v, target, classes):
  """Per class (and 'all') of the explained target: examples, mean
  interaction, mean p - v(∅), and each modality's share of it (the ratio
  of the mean Shapley value to the mean total: stable where single
  examples have p ≈ v(∅))."""
  parts = interaction(v)
  target = np.asarray(target)
  rows = []
  groups = [(c, target == i) for i, c in enumerate(classes)]
  groups.append(('all', np.ones(len(target), bool)))
  for name, keep in groups:
    if not keep.any():
      continue
    total = float(parts['total'][keep].mean())
    share = lambda m: (float(parts[f'shapley_{m}'][keep].mean()) / total
                       if abs(total) > 1e-12 else float('nan'))
    rows.append(dict(cls=name, examples=int(keep.sum()),
                     interaction=float(parts['interaction'][keep].mean()),
                     total=total, share_image=share('image'),
                     share_speech=share('speech')))
  return rows
