"""DnCShap: hierarchical Shapley attribution for an image + speech model.

Paper §3.3, Eq. 3-5 and Algorithm 1, as read in PAPER.md, "DnCShap".

Players form a binary hierarchy. The root is the whole input; level 1 holds
the two modalities (image, speech); below each modality its array is halved
`depth` times, alternating the two spatial axes and always splitting axis 0
first: for the image that is rows (a top and a bottom half), for the
(time, frequency) spectrogram that is time (an early and a late half). Odd
sizes split as n // 2 and n - n // 2, so the 2**depth leaf regions of each
modality tile its array exactly. A player that is absent takes the baseline
value (zeros by default, as in Algorithm 1). The value of a coalition S is
v(S) = fn(x_S)[target], with the target class fixed once from the unmasked
input.

Notation: D = depth + 1 levels below the root. Leaves are numbered in tree
order over both modalities: leaves 0 .. L-1 are the image's, L .. 2L-1 the
speech's (L = 2**depth); node i at level k covers the leaves
[i * 2**(D-k), (i+1) * 2**(D-k)). A coalition is a boolean mask over the 2L
leaves; a precomputed pixel -> leaf map turns it into pixel masks by a gather.

Two modes:
  exact: the Owen values of the nested binary hierarchy (PAPER.md, "DnCShap"),
    phi(N) = 2**-k sum_b [v(C_b u N) - v(C_b)], every distinct coalition
    evaluated once: 2 + 2 (4**D - 1) / 3 masked inputs.
  dnc: the paper's two-evaluations-per-node recursion, made exactly efficient
    (PAPER.md, "DnCShap"): 2**(D+1) masked inputs. Exact for additive models; not
    null-player respecting (a region without effect can receive part of an
    interaction residual). With context='random' its mean over keys is an
    unbiased estimate of exact mode.

All masked inputs of an explanation are built as one array of leaf masks (in
dnc mode too: its coalitions depend on the context coins only, never on model
outputs, so every level goes into the same batched evaluation) and
evaluated in jit-compiled chunks of `max_batch` (`jax.lax.map` over chunks,
the last one padded with a repeat of an already-evaluated coalition so that
one compiled shape serves every chunk). Nothing here imports the rest of the
project: `fn` is any traceable `fn(images, spectrograms) -> (batch, C)`.

Modality-factorized evaluation. When `fn` is a `FactorizedFn` (the model
split into encode_image, encode_speech and fuse), each coalition is a pair
(image part, speech part) of its leaf mask, and far fewer distinct parts
than pairs exist: below the modalities every coalition keeps the other
modality entirely present or absent. The distinct parts are known from the
mask structure (exact mode: the static table, deduplicated once in numpy;
dnc mode: per level, the rows of the image subtree own an image part and
take the speech all-or-nothing, and the other way round). Each distinct
masked image / spectrogram is encoded once, in chunks of at most `max_batch`,
and `fuse` runs for every pair on features gathered by index, again in
chunks. The values equal fn's on the full masked inputs (same arithmetic per
row). Encodings per example (image + speech), D = depth + 1: exact
2 * (2 + (4**D - 4) / 6) (24 instead of 44 pairs at depth 2, 88 instead of
172 at depth 3, each encoding about half a forward pass); dnc 2 * 2**D
(half of its 2**(D+1) pairs).
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

MODES = ('exact', 'dnc')
CONTEXTS = ('absent', 'present', 'random')


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=('variables',),
                   meta_fields=('encode_image', 'encode_speech', 'fuse'))
@dataclasses.dataclass(frozen=True, eq=False)
class FactorizedFn:
  """A model split by modality: fn = fuse(encode_image, encode_speech).

  `encode_image(variables, images (B, H, W, 3))` and
  `encode_speech(variables, spectrograms (B, T, F, 1))` return pytrees whose
  leaves have the leading batch axis B (an empty dict when the model ignores
  that modality); `fuse(variables, image_features, speech_features)` returns
  (B, C) probabilities. Calling the object runs all three, so it is also a
  plain `fn(images, spectrograms)`. A pytree: `variables` (any pytree of
  arrays) reaches the compiled core as an argument, the three functions are
  static (reuse the same function objects to reuse the compilation).
  """
  encode_image: Callable
  encode_speech: Callable
  fuse: Callable
  variables: Any = None

  def __call__(self, images, spectrograms):
    return self.fuse(self.variables,
                     self.encode_image(self.variables, images),
                     self.encode_speech(self.variables, spectrograms))


# --------------------------------------------------------------------------
# Results.
# --------------------------------------------------------------------------


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=('values', 'boxes'), meta_fields=())
@dataclasses.dataclass(frozen=True)
class Regions:
  """Leaf regions of one modality: their values and their boxes.

  `values[..., l]` is leaf l's attribution (tree order); `boxes[l]` is
  (y0, x0, y1, x1) for the image and (t0, f0, t1, f1) for the spectrogram,
  half-open, axis 0 first (rows / time).
  """
  values: Any  # (L,) or (E, L) float32.
  boxes: np.ndarray  # (L, 4) int, shared by all examples.


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=('target', 'probability', 'baseline_probability',
                 'modality_scores', 'image_map', 'speech_map', 'image_regions',
                 'speech_regions', 'node_values'),
    meta_fields=('num_evaluations', 'depth', 'mode', 'context'))
@dataclasses.dataclass(frozen=True)
class Explanation:
  """What `dncshap` / `dncshap_batch` return (leading (E,) axis for a batch).

  A pytree (so `jax.device_get` / `jax.block_until_ready` work on it).

  Attributes:
    target: class explained (argmax of the unmasked prediction unless given).
    probability: fn at the full input, for `target`.
    baseline_probability: fn at the all-baseline input, for `target`.
    modality_scores: (2,) [image, speech]; they sum to
      probability - baseline_probability (Eq. 5).
    image_map: (H, W) per-pixel attribution (region value / region area),
      summing to the image score.
    speech_map: (T, F) per-pixel attribution, summing to the speech score.
    image_regions, speech_regions: leaf values with their boxes.
    node_values: tuple of D + 1 arrays, level k of shape (2**k,): the value of
      every node of the hierarchy in tree order (level 0 is the root,
      level 1 is [image, speech], level D the leaves). Children sum to their
      parent at every level.
    num_evaluations: distinct masked inputs evaluated per example.
    depth, mode, context: the settings used.
  """
  target: Any
  probability: Any
  baseline_probability: Any
  modality_scores: Any
  image_map: Any
  speech_map: Any
  image_regions: Regions
  speech_regions: Regions
  node_values: Tuple[Any, ...]
  num_evaluations: int
  depth: int
  mode: str
  context: str

  def example(self, i: int) -> 'Explanation':
    """The i-th example of a batch explanation, as a single explanation."""
    take = lambda x: x[i]
    return dataclasses.replace(
        self,
        target=take(self.target),
        probability=take(self.probability),
        baseline_probability=take(self.baseline_probability),
        modality_scores=take(self.modality_scores),
        image_map=take(self.image_map),
        speech_map=take(self.speech_map),
        image_regions=Regions(take(self.image_regions.values),
                              self.image_regions.boxes),
        speech_regions=Regions(take(self.speech_regions.values),
                               self.speech_regions.boxes),
        node_values=tuple(take(v) for v in self.node_values))


# --------------------------------------------------------------------------
# Static structure (numpy, built once per shape and depth).
# --------------------------------------------------------------------------


def num_evaluations(depth: int, mode: str) -> int:
  """Distinct masked inputs per example (PAPER.md, "DnCShap"), D = depth + 1."""
  d = depth + 1
  if mode == 'exact':
    return 2 + 2 * (4**d - 1) // 3
  if mode == 'dnc':
    return 2**(d + 1)
  raise ValueError(f'Unknown mode {mode!r}; expected one of {MODES}.')


def region_boxes(shape: Tuple[int, int], depth: int) -> np.ndarray:
  """(2**depth, 4) half-open boxes (a0, b0, a1, b1) of the leaf regions.

  Halves `depth` times, axis 0 first then alternating; sizes n // 2 then
  n - n // 2. Leaves are in tree order (first half first at every split).
  """
  return _region_boxes(tuple(int(n) for n in shape[:2]), int(depth))


@functools.lru_cache(maxsize=64)
def _region_boxes(shape, depth):
  boxes = [(0, 0, shape[0], shape[1])]
  for level in range(depth):
    axis = level % 2
    split = []
    for a0, b0, a1, b1 in boxes:
      if axis == 0:
        mid = a0 + (a1 - a0) // 2
        split += [(a0, b0, mid, b1), (mid, b0, a1, b1)]
      else:
        mid = b0 + (b1 - b0) // 2
        split += [(a0, b0, a1, mid), (a0, mid, a1, b1)]
    boxes = split
  boxes = np.asarray(boxes, dtype=np.int32)
  boxes.flags.writeable = False  # Cached and shared: read-only.
  return boxes


@functools.lru_cache(maxsize=64)
def leaf_id_map(shape: Tuple[int, int], depth: int) -> np.ndarray:
  """(shape) int32 map pixel -> leaf index (tree order) of `region_boxes`."""
  ids = np.full(shape, -1, dtype=np.int32)
  for leaf, (a0, b0, a1, b1) in enumerate(region_boxes(shape, depth)):
    ids[a0:a1, b0:b1] = leaf
  ids.flags.writeable = False  # Cached and shared: read-only.
  return ids


def _areas(shape, depth):
  boxes = region_boxes(shape, depth)
  return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


@functools.lru_cache(maxsize=16)
def _node_masks(d: int) -> Tuple[np.ndarray, ...]:
  """node_masks[k]: (2**k, 2**d) bool, leaves covered by each level-k node."""
  leaves = np.arange(2**d)
  return tuple((leaves[None, :] >> (d - k)) == np.arange(2**k)[:, None]
               for k in range(d + 1))


@functools.lru_cache(maxsize=16)
def _exact_tables(d: int):
  """Distinct coalitions of exact mode and, per level, where to find terms.

  Every coalition C_b (u N) that the Owen formula needs is, after removing
  redundancy, 'node M present, its sibling absent, each of M's ancestors'
  siblings present or not' for some level j >= 1, plus the empty and the
  full coalition. These canonical forms are distinct by construction (the
  deepest node split by the coalition is M's parent, and M is its present
  child), and there are 2 + sum_j 2**j * 2**(j-1) = 2 + 2 (4**d - 1) / 3.

  Returns:
    masks: (M, 2**d) bool, row 0 = empty, row 1 = full, then level j blocks
      ordered by (node, ancestor-sibling bits).
    plus, minus: tuple over levels k = 1..d of (2**k, 2**k) int arrays:
      rows of `masks` holding v(C_b u N) and v(C_b) for node N, context b.
  """
  node_masks = _node_masks(d)
  offsets = [0, 2]
  for j in range(1, d + 1):
    offsets.append(offsets[-1] + 2**j * 2**(j - 1))
  masks = [np.zeros((1, 2**d), bool), np.ones((1, 2**d), bool)]
  for j in range(1, d + 1):
    # Canonical (j, node m, bits bp over levels 1..j-1), bp bit t-1 = level t.
    m = np.repeat(np.arange(2**j), 2**(j - 1))
    bp = np.tile(np.arange(2**(j - 1)), 2**j)
    mask = node_masks[j][m].copy()
    for t in range(1, j):
      sibling_t = (m >> (j - t)) ^ 1  # Sibling of m's ancestor at level t.
      present = ((bp >> (t - 1)) & 1).astype(bool)
      mask |= node_masks[t][sibling_t] & present[:, None]
    masks.append(mask)
  masks = np.concatenate(masks)

  def lookup(k, node, b, n):
    """Row of C_b u (node if n) for level-k nodes, vectorised over node, b."""
    row = np.full(np.broadcast(node, b).shape, n, dtype=np.int64)  # 0 or 1.
    # The deepest level whose bit differs from n wins.
    for j in range(1, k + 1):
      bit = (b >> (j - 1)) & 1
      anc = node >> (k - j)
      m = anc if n else anc ^ 1
      idx = offsets[j] + m * 2**(j - 1) + (b & (2**(j - 1) - 1))
      row = np.where(bit != n, idx, row)
    return row

  plus, minus = [], []
  for k in range(1, d + 1):
    node = np.arange(2**k)[:, None]
    b = np.arange(2**k)[None, :]
    plus.append(lookup(k, node, b, 1))
    minus.append(lookup(k, node, b, 0))
  return masks, tuple(plus), tuple(minus)


@functools.lru_cache(maxsize=16)
def _exact_factors(d: int):
  """Exact mode's distinct image / speech parts (static, from the table).

  Returns (image_table (Mi, L), image_index (M,), speech_table (Ms, L),
  speech_index (M,)): row r of the coalition table is the pair
  (image_table[image_index[r]], speech_table[speech_index[r]]).
  """
  masks = _exact_tables(d)[0]
  half = masks.shape[1] // 2
  out = []
  for part in (masks[:, :half], masks[:, half:]):
    table, index = np.unique(part, axis=0, return_inverse=True)
    out += [table, index.reshape(-1).astype(np.int32)]
  return tuple(out)


def _dnc_own_rows(d: int):
  """dnc rows whose image (speech) part is their own, in table order.

  Rows: 0 empty, 1 full, then level k's 2**k rows start at row 2**k, image
  subtree first. Rows 0-3 and the other subtree's rows at levels >= 2 keep
  that modality entirely present or absent (their context holds it whole or
  not at all).
  """
  image = [r for k in range(2, d + 1)
           for r in range(2**k, 2**k + 2**(k - 1))]
  speech = [r for k in range(2, d + 1)
            for r in range(2**k + 2**(k - 1), 2**(k + 1))]
  return np.asarray(image, np.int32), np.asarray(speech, np.int32)


def _dnc_factors(masks, d):
  """dnc's distinct parts from its (dynamic) mask rows; see _exact_factors.

  Table = [empty, full] + the rows' own parts; every other row's part is
  all-present or all-absent by construction, so its index is 1 or 0.
  """
  half = masks.shape[1] // 2
  out = []
  for part, own in zip((masks[:, :half], masks[:, half:]), _dnc_own_rows(d)):
    table = jnp.concatenate([jnp.zeros((1, half), bool),
                             jnp.ones((1, half), bool), part[own]])
    index = jnp.all(part, axis=1).astype(jnp.int32)
    index = index.at[own].set(2 + np.arange(len(own), dtype=np.int32))
    out += [table, index]
  return tuple(out)


def num_encodings(depth: int, mode: str) -> Tuple[int, int]:
  """(distinct masked images, distinct masked spectrograms) per example."""
  d = depth + 1
  if mode == 'exact':
    factors = _exact_factors(d)
    return len(factors[0]), len(factors[2])
  if mode == 'dnc':
    return 2**d, 2**d
  raise ValueError(f'Unknown mode {mode!r}; expected one of {MODES}.')


# --------------------------------------------------------------------------
# The pure JAX core: one example.
# --------------------------------------------------------------------------


def _map_chunks(f, rows, chunk):
  """f over the leading axis of pytree `rows`, `chunk` rows at a time.

  `jax.lax.map` over chunks; the last chunk is padded with copies of the
  last row (an input already evaluated), so one compiled shape serves all
  chunks and no new coalition is introduced.
  """
  num = jax.tree.leaves(rows)[0].shape[0]
  num_chunks = -(-num // chunk)
  pad = num_chunks * chunk - num

  def split(x):
    x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
    return x.reshape((num_chunks, chunk) + x.shape[1:])

  out = jax.lax.map(f, jax.tree.map(split, rows))
  return jax.tree.map(
      lambda y: y.reshape((num_chunks * chunk,) + y.shape[2:])[:num], out)


def _map_rows(f, rows, chunk, axis=None):
  """`_map_chunks`, or, with `axis` = (mesh axis name, size) inside
  `shard_map`, each device maps its own block of the rows and the results
  are all-gathered (every device then holds every row's output)."""
  if axis is None:
    return _map_chunks(f, rows, chunk)
  name, n = axis
  num = jax.tree.leaves(rows)[0].shape[0]
  per = -(-num // n)
  index = jax.lax.axis_index(name)

  def local(x):
    x = jnp.concatenate([x, jnp.repeat(x[-1:], n * per - num, axis=0)])
    return jax.lax.dynamic_index_in_dim(
        x.reshape((n, per) + x.shape[1:]), index, keepdims=False)

  chunk = -(-per // -(-per // min(chunk, per)))  # Even chunks, <= chunk.
  out = _map_chunks(f, jax.tree.map(local, rows), chunk)
  return jax.tree.map(
      lambda y: jax.lax.all_gather(y, name, tiled=True)[:num], out)


def _evaluate(fn, image, spectrogram, base_image, base_spectrogram, masks,
              image_leaf, speech_leaf, chunk, factors=None, axis=None):
  """fn on every masked input: (M, 2L) leaf masks -> (M, C) outputs.

  Plain fn: chunks of `chunk[0]` full masked inputs. FactorizedFn: the
  distinct parts `factors` (see _exact_factors) are encoded in chunks of
  chunk[0] (images) and chunk[1] (spectrograms), then fused per row in
  chunks of chunk[2]. `axis`: spread the rows of every stage over a mesh
  axis (see _map_rows).
  """
  num_leaves = masks.shape[1] // 2
  image_leaf = jnp.asarray(image_leaf)
  speech_leaf = jnp.asarray(speech_leaf)

  def masked_images(m):  # (c, L) -> (c, H, W, 3)
    keep = jnp.take(m, image_leaf, axis=1)
    return jnp.where(keep[..., None], image, base_image)

  def masked_spectrograms(m):  # (c, L) -> (c, T, F, 1)
    keep = jnp.take(m, speech_leaf, axis=1)
    return jnp.where(keep[..., None], spectrogram, base_spectrogram)

  if not isinstance(fn, FactorizedFn):
    def one_chunk(m):
      out = fn(masked_images(m[:, :num_leaves]),
               masked_spectrograms(m[:, num_leaves:]))
      return out.astype(jnp.float32)
    return _map_rows(one_chunk, masks, chunk[0], axis)

  image_table, image_index, speech_table, speech_index = factors
  image_feats = _map_rows(
      lambda m: fn.encode_image(fn.variables, masked_images(m)),
      jnp.asarray(image_table), chunk[0], axis)
  speech_feats = _map_rows(
      lambda m: fn.encode_speech(fn.variables, masked_spectrograms(m)),
      jnp.asarray(speech_table), chunk[1], axis)

  def fuse_chunk(index):
    ii, si = index
    take = lambda i: lambda x: jnp.take(x, i, axis=0)
    out = fn.fuse(fn.variables, jax.tree.map(take(ii), image_feats),
                  jax.tree.map(take(si), speech_feats))
    return out.astype(jnp.float32)

  return _map_rows(fuse_chunk, (jnp.asarray(image_index),
                                jnp.asarray(speech_index)), chunk[2], axis)


def _explain_one(fn, image, spectrogram, base_image, base_spectrogram, target,
                 key, *, depth, mode, context, chunk, axis=None):
  """Explains one example; returns a dict of arrays (pure, jit/vmap-able)."""
  d = depth + 1
  image_shape = tuple(image.shape[:2])
  speech_shape = tuple(spectrogram.shape[:2])
  image_leaf = leaf_id_map(image_shape, depth)
  speech_leaf = leaf_id_map(speech_shape, depth)
  areas = np.concatenate([_areas(image_shape, depth),
                          _areas(speech_shape, depth)]).astype(np.float32)
  node_masks = _node_masks(d)

  if mode == 'exact':
    masks, plus, minus = _exact_tables(d)
    masks = jnp.asarray(masks)
  else:
    # Coin of node N (levels 1..D): does N's context include its sibling?
    sizes = [2**k for k in range(1, d + 1)]
    if context == 'random':
      coins = jax.random.bernoulli(key, 0.5, (sum(sizes),))
    else:
      coins = jnp.full((sum(sizes),), context == 'present')
    coins = jnp.split(coins, np.cumsum(sizes)[:-1])
    ctx = jnp.zeros((1, 2**d), bool)  # The root's context: nobody.
    rows = [jnp.zeros((1, 2**d), bool), jnp.ones((1, 2**d), bool)]
    for k in range(1, d + 1):
      parent_ctx = jnp.repeat(ctx, 2, axis=0)
      rows.append(parent_ctx | node_masks[k])  # C_N u A, C_N u B.
      sibling = node_masks[k][np.arange(2**k) ^ 1]
      ctx = parent_ctx | (coins[k - 1][:, None] & sibling)
    masks = jnp.concatenate(rows)

  factors = None
  if isinstance(fn, FactorizedFn):
    factors = _exact_factors(d) if mode == 'exact' else _dnc_factors(masks, d)
  out = _evaluate(fn, image, spectrogram, base_image, base_spectrogram, masks,
                  image_leaf, speech_leaf, chunk, factors, axis)  # (M, C)
  if target is None:
    target = jnp.argmax(out[1])  # Row 1 is the unmasked input.
  target = jnp.asarray(target, jnp.int32)
  values = jnp.take(out, target, axis=1)  # (M,)
  v_none, v_all = values[0], values[1]

  nodes = [(v_all - v_none)[None]]
  if mode == 'exact':
    for k in range(1, d + 1):
      nodes.append(jnp.mean(values[plus[k - 1]] - values[minus[k - 1]], axis=1))
  else:
    phi, b, f = nodes[0], v_none[None], v_all[None]
    start = 2
    for k in range(1, d + 1):
      v = values[start:start + 2**k]
      start += 2**k
      a, c = v[0::2], v[1::2]  # v(C_N u A), v(C_N u B).
      s_a = 0.5 * ((a - b) + (f - c))
      s_b = 0.5 * ((c - b) + (f - a))
      r = phi - (f - b)  # Interaction with the context the split cannot see.
      node_area = node_masks[k - 1].astype(np.float32) @ areas
      child_area = node_masks[k].astype(np.float32) @ areas
      w_a = child_area[0::2] / node_area
      w_b = child_area[1::2] / node_area
      phi = jnp.stack([s_a + r * w_a, s_b + r * w_b], axis=1).reshape(-1)
      coin_a, coin_b = coins[k - 1][0::2], coins[k - 1][1::2]
      new_b = jnp.stack([jnp.where(coin_a, c, b), jnp.where(coin_b, a, b)], 1)
      new_f = jnp.stack([jnp.where(coin_a, f, a), jnp.where(coin_b, f, c)], 1)
      b, f = new_b.reshape(-1), new_f.reshape(-1)
      nodes.append(phi)

  leaves = nodes[-1]
  num_leaves = 2**depth
  per_pixel = leaves / areas
  return dict(
      target=target,
      probability=v_all,
      baseline_probability=v_none,
      modality_scores=nodes[1],
      image_map=per_pixel[:num_leaves][image_leaf],
      speech_map=per_pixel[num_leaves:][speech_leaf],
      image_values=leaves[:num_leaves],
      speech_values=leaves[num_leaves:],
      node_values=tuple(nodes))


_STATIC = ('depth', 'mode', 'context', 'chunk', 'batched', 'base_axes',
           'target_axis', 'spread')


@functools.partial(jax.jit, static_argnames=('fn',) + _STATIC)
def _run_static(image, spectrogram, base_image, base_spectrogram, target, key,
                *, fn, **kwargs):
  return _run(fn, image, spectrogram, base_image, base_spectrogram, target,
              key, **kwargs)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _run_dynamic(fn, image, spectrogram, base_image, base_spectrogram, target,
                 key, **kwargs):
  return _run(fn, image, spectrogram, base_image, base_spectrogram, target,
              key, **kwargs)


def _run(fn, image, spectrogram, base_image, base_spectrogram, target, key, *,
         depth, mode, context, chunk, batched, base_axes, target_axis,
         spread=None):
  """The explanation(s), on one device or spread over a mesh.

  spread: None; ('examples', mesh): examples padded to a multiple of the
  device count (copies of the last one, dropped after) and split over the
  devices with `shard_map`; ('coalitions', mesh): every device holds every
  example and evaluates its block of each example's masked inputs.
  """
  kind, mesh = spread or (None, None)
  axis = None
  if kind == 'coalitions':
    axis = (mesh.axis_names[0], mesh.size)
  one = functools.partial(_explain_one, depth=depth, mode=mode,
                          context=context, chunk=chunk, axis=axis)
  pytree_fn = isinstance(fn, (jax.tree_util.Partial, FactorizedFn))
  static_fn = None if pytree_fn else fn  # No arrays: closed over.

  def explain(fn, *args):
    fn = static_fn if fn is None else fn
    if not batched:
      return one(fn, *args)
    return jax.vmap(functools.partial(one, fn),
                    in_axes=(0, 0) + base_axes + (target_axis, 0))(*args)

  if not pytree_fn:
    fn = None
  if batched:
    num = image.shape[0]
    # Keys before any padding: example i's key never depends on the mesh.
    key = None if key is None else jax.random.split(key, num)
  args = (image, spectrogram, base_image, base_spectrogram, target, key)
  if kind is None:
    return explain(fn, *args)
  name = mesh.axis_names[0]
  if kind == 'coalitions':
    # Replicated by the all-gathers of _map_rows, which check_vma cannot
    # see through the per-device row selection.
    return jax.shard_map(explain, mesh=mesh, in_specs=P(), out_specs=P(),
                         check_vma=False)(fn, *args)
  per_example = (True, True) + tuple(a == 0 for a in base_axes) + (
      target_axis == 0, True)
  pad = -num % mesh.size

  def padded(x, batch):
    if x is None or not batch or not pad:
      return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])

  args = tuple(padded(x, b) for x, b in zip(args, per_example))
  specs = tuple(P(name) if b else P() for b in per_example)
  out = jax.shard_map(explain, mesh=mesh, in_specs=(P(),) + specs,
                      out_specs=P(name))(fn, *args)
  return jax.tree.map(lambda x: x[:num], out)


# --------------------------------------------------------------------------
# Public API: argument checks at the edge, then the jitted core.
# --------------------------------------------------------------------------


def dncshap(fn: Callable, image, spectrogram, *, depth: int, mode: str = 'dnc',
            baseline=None, target: Optional[int] = None,
            context: str = 'absent', key=None,
            max_batch: int = 256) -> Explanation:
  """DnCShap explanation of one (image, spectrogram) example.

  Args:
    fn: `fn(images (B, H, W, 3), spectrograms (B, T, F, 1)) -> (B, C)` class
      probabilities, traceable by JAX; or a `FactorizedFn` (the model split
      by modality), which encodes each distinct masked image and
      spectrogram once and fuses per coalition: same values, fewer
      encodings (module docstring). For a large model pass
      `jax.tree_util.Partial(apply_probs, variables)`: its arrays then reach
      the compiled function as arguments instead of being baked in as
      constants (much faster compilation). A plain closure works too; it is
      compiled once per distinct function object, so reuse the same one.
    image: (H, W, 3).
    spectrogram: (T, F, 1), time first.
    depth: halvings per modality (>= 1); each modality gets 2**depth leaves.
    mode: 'exact' (Owen values of the hierarchy, 2 + 2 (4**D - 1) / 3
      evaluations, D = depth + 1) or 'dnc' (the paper's recursion, 2**(D+1)
      evaluations). dnc is exact for additive models (every region then
      gets its own effect, whatever the context); it is NOT null-player
      respecting: below the modalities a region with no effect can receive a
      share (in proportion to its area) of the interaction residual
      r = phi_N - (v(C_N u N) - v(C_N)) of its parent. exact mode is the
      reference. Both are exactly efficient at every node.
    baseline: None (zeros), or a pair (image_baseline, spectrogram_baseline)
      of arrays of the inputs' shapes (either may be None for zeros).
      Absent players take these values.
    target: class to explain; default the argmax of fn at the full input.
    context: dnc only. Context each node passes to a child: 'absent' (C_N),
      'present' (C_N u sibling), or 'random' (a fair coin per node from
      `key`; the average over keys is an unbiased estimate of exact mode).
    key: a `jax.random` key, required for context='random'.
    max_batch: at most this many masked inputs per forward pass (per
      encode / fuse pass for a `FactorizedFn`). Results do not depend on it.

  Returns:
    An `Explanation`.
  """
  return _explain(fn, image, spectrogram, depth=depth, mode=mode,
                  baseline=baseline, target=target, context=context, key=key,
                  max_batch=max_batch, batched=False)


def dncshap_batch(fn: Callable, images, spectrograms, *, depth: int,
                  mode: str = 'dnc', baseline=None, target=None,
                  context: str = 'absent', key=None,
                  max_batch: int = 256, devices=None) -> Explanation:
  """`dncshap` over a leading batch axis, vectorised with `jax.vmap`.

  `images` (E, H, W, 3), `spectrograms` (E, T, F, 1). Each baseline entry is
  per example (E, ...) or shared (the single-example shape). `target` is None
  or an (E,) int array. For context='random', example i uses
  `jax.random.split(key, E)[i]`. A forward pass holds at most
  max(1, max_batch // E) masked inputs per example (spread evenly over the
  chunks to keep padding small), so at most max_batch rows when
  E <= max_batch.
  Every field of the returned `Explanation` gains a leading (E,) axis (boxes
  excepted); `.example(i)` gives one example.

  `devices`: where to run, default every local device
  (`jax.local_devices()`; a multi-process driver gives each process its
  own examples). With several devices and E >= their number the examples
  are split over them (`shard_map` on a 1-D mesh; E padded to a multiple
  with copies of the last example, dropped from the result); with fewer
  examples than devices each device evaluates its share of every example's
  masked inputs and the outputs are all-gathered. max_batch then bounds
  the rows of a forward pass per device. Results do not depend on the
  devices (per-example keys are fixed before any split).
  """
  return _explain(fn, images, spectrograms, depth=depth, mode=mode,
                  baseline=baseline, target=target, context=context, key=key,
                  max_batch=max_batch, batched=True, devices=devices)


def _check_shape(name, x, trailing_channels, batched):
  rank = 4 if batched else 3
  what = ('(E, H, W, 3)' if trailing_channels == 3 else '(E, T, F, 1)')
  if not batched:
    what = what.replace('E, ', '')
  if x.ndim != rank or x.shape[-1] != trailing_channels:
    raise ValueError(f'{name} must have shape {what}; got {x.shape}.')


def _chunk_size(evals, max_batch, num_examples=None):
  """Masked inputs per example in one forward pass.

  One example: min(max_batch, evals), the last chunk padded. A batch of E:
  at most max(1, max_batch // E) per example, as evenly spread over the
  fewest chunks as that allows, so the padding of the last chunk (repeated
  rows that cost a forward pass each) stays below one row per chunk: 172
  evaluations at <= 64 per chunk run as 3 x 58 (174 rows), not 3 x 64 (192).
  """
  if num_examples is None:
    return min(max_batch, evals)
  limit = min(max(1, max_batch // num_examples), evals)
  return -(-evals // -(-evals // limit))


_NUM_CLASSES = {}  # Cache of _num_classes, keyed by _shape_key.


def _shape_key(fn, one_image, one_speech):
  """Hashable key under which fn's output shape cannot change, or None.

  For a `jax.tree_util.Partial` or `FactorizedFn` the function(s) and the shapes / dtypes of its
  arrays (new weights of the same shapes give the same output shape); for a
  plain callable the object itself.
  """
  if isinstance(fn, (jax.tree_util.Partial, FactorizedFn)):
    leaves, treedef = jax.tree_util.tree_flatten(fn)
    parts = (treedef, tuple(
        (np.shape(x), str(getattr(x, 'dtype', type(x).__name__)))
        for x in leaves))
  else:
    parts = (fn,)
  key = parts + (one_image, one_speech)
  try:
    hash(key)
  except TypeError:
    return None
  return key


def _num_classes(fn, one_image, one_speech):
  """Classes of fn's output, from its shape on a batch of 1 (no compute).

  `jax.eval_shape` traces fn whenever fn is a new object (35-50 ms for the
  demo Flax model, as much as a small explanation's whole evaluation), e.g.
  a new `Partial` per batch or per checkpoint; so the result is cached per
  function and shapes (a `Partial`'s weights by shape only) and repeated
  calls trace nothing.
  """
  key = _shape_key(fn, one_image, one_speech)
  if key is not None and key in _NUM_CLASSES:
    return _NUM_CLASSES[key]
  try:
    out = jax.eval_shape(fn,
                         jax.ShapeDtypeStruct((1,) + one_image, jnp.float32),
                         jax.ShapeDtypeStruct((1,) + one_speech, jnp.float32))
  except Exception as e:  # Re-raised with context: the user's fn failed.
    raise ValueError(f'fn failed on a batch of shape images {(1,) + one_image}'
                     f', spectrograms {(1,) + one_speech}: {e}') from e
  if not hasattr(out, 'shape') or len(out.shape) != 2 or out.shape[0] != 1:
    raise ValueError('fn must return an array of shape (batch, num_classes); '
                     f'got {getattr(out, "shape", type(out))} for batch 1.')
  if key is not None:
    if len(_NUM_CLASSES) >= 64:  # Bounded (keys hold fn): drop the oldest.
      _NUM_CLASSES.pop(next(iter(_NUM_CLASSES)))
    _NUM_CLASSES[key] = out.shape[1]
  return out.shape[1]


def _explain(fn, image, spectrogram, *, depth, mode, baseline, target,
             context, key, max_batch, batched, devices=None):
  if not callable(fn):
    raise TypeError(f'fn must be callable; got {type(fn).__name__}.')
  if not isinstance(depth, (int, np.integer)) or isinstance(depth, bool) or (
      depth < 1):
    raise ValueError(f'depth must be an integer >= 1; got {depth!r}.')
  depth = int(depth)
  if mode not in MODES:
    raise ValueError(f'Unknown mode {mode!r}; expected one of {MODES}.')
  if context not in CONTEXTS:
    raise ValueError(f'Unknown context {context!r}; expected one of '
                     f'{CONTEXTS}.')
  if mode == 'dnc' and context == 'random' and key is None:
    raise ValueError("context='random' needs a jax.random key (key=...).")
  if not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
    raise ValueError(f'max_batch must be an integer >= 1; got {max_batch!r}.')
  if mode == 'exact' or context != 'random':
    key = None  # Unused: keep it out of the compiled signature.

  image = jnp.asarray(image, jnp.float32)
  spectrogram = jnp.asarray(spectrogram, jnp.float32)
  _check_shape('image', image, 3, batched)
  _check_shape('spectrogram', spectrogram, 1, batched)
  if batched and image.shape[0] != spectrogram.shape[0]:
    raise ValueError(f'images and spectrograms disagree on the batch size: '
                     f'{image.shape[0]} vs {spectrogram.shape[0]}.')
  one_image = image.shape[-3:]
  one_speech = spectrogram.shape[-3:]
  for name, shape in (('image', one_image), ('spectrogram', one_speech)):
    sizes = _areas(tuple(shape[:2]), depth)
    if sizes.min() < 1:
      raise ValueError(f'depth={depth} is too deep for the {name} of shape '
                       f'{tuple(shape)}: some leaf regions would be empty.')

  # Baselines: per example or shared.
  if baseline is None:
    baseline = (None, None)
  if not isinstance(baseline, (tuple, list)) or len(baseline) != 2:
    raise ValueError('baseline must be None or a pair (image_baseline, '
                     'spectrogram_baseline).')
  bases, base_axes = [], []
  for name, b, x in (('image', baseline[0], image),
                     ('spectrogram', baseline[1], spectrogram)):
    one = x.shape[1:] if batched else x.shape
    if b is None:
      b = jnp.zeros(one, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if b.shape == one:
      base_axes.append(None)
    elif batched and b.shape == x.shape:
      base_axes.append(0)
    else:
      allowed = f'{one} or {x.shape}' if batched else f'{one}'
      raise ValueError(f'{name} baseline must have shape {allowed}; got '
                       f'{b.shape}.')
    bases.append(b)

  num_classes = _num_classes(fn, tuple(one_image), tuple(one_speech))

  target_axis = None
  if target is not None:
    t = np.asarray(target)
    if not np.issubdtype(t.dtype, np.integer):
      raise ValueError(
          f'target must be an integer class index; got {target!r}.')
    want = (image.shape[0],) if batched else ()
    if t.shape != want:
      raise ValueError(f'target must have shape {want}; got {t.shape}.')
    if np.any(t < 0) or np.any(t >= num_classes):
      raise ValueError(f'target {target!r} is outside the classes '
                       f'[0, {num_classes}).')
    target = jnp.asarray(t, jnp.int32)
    target_axis = 0 if batched else None

  num_examples = image.shape[0] if batched else None
  spread = None
  if batched:
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
      raise ValueError('devices must name at least one device.')
    if len(devices) > 1:
      mesh = jax.sharding.Mesh(np.asarray(devices), ('explain',))
      if num_examples >= len(devices):
        spread = ('examples', mesh)
        num_examples = -(-num_examples // len(devices))  # Per device.
      else:
        spread = ('coalitions', mesh)
  pairs = num_evaluations(depth, mode)
  if isinstance(fn, FactorizedFn):
    chunk = tuple(_chunk_size(n, max_batch, num_examples)
                  for n in num_encodings(depth, mode) + (pairs,))
  else:
    chunk = (_chunk_size(pairs, max_batch, num_examples),)
  static = dict(depth=depth, mode=mode, context=context, chunk=chunk,
                batched=batched, base_axes=tuple(base_axes),
                target_axis=target_axis, spread=spread)
  args = (image, spectrogram, bases[0], bases[1], target, key)
  if isinstance(fn, (jax.tree_util.Partial, FactorizedFn)):
    out = _run_dynamic(fn, *args, **static)
  else:
    out = _run_static(*args, fn=fn, **static)

  return Explanation(
      target=out['target'],
      probability=out['probability'],
      baseline_probability=out['baseline_probability'],
      modality_scores=out['modality_scores'],
      image_map=out['image_map'],
      speech_map=out['speech_map'],
      image_regions=Regions(out['image_values'],
                            region_boxes(tuple(one_image[:2]), depth)),
      speech_regions=Regions(out['speech_values'],
                             region_boxes(tuple(one_speech[:2]), depth)),
      node_values=out['node_values'],
      num_evaluations=num_evaluations(depth, mode),
      depth=depth, mode=mode, context=context)


def average_explanations(explanations) -> Explanation:
  """The mean of explanations of the same inputs under different baselines.

  SHAP's interventional explainers average over a background set of
  baselines; this is that average for DnCShap. Every field is averaged
  (target and probability do not depend on the baseline: they come from the
  unmasked input); efficiency survives it, since each explanation's node
  values sum to probability - its baseline_probability, so the mean ones sum
  to probability - the mean baseline_probability. num_evaluations is the
  total over the explanations: K baselines cost K times one.
  """
  explanations = list(explanations)
  if not explanations:
    raise ValueError('average_explanations needs at least one explanation.')
  first = explanations[0]
  for e in explanations[1:]:
    if (e.depth, e.mode, e.context) != (first.depth, first.mode,
                                         first.context):
      raise ValueError('average_explanations: explanations differ in depth, '
                       'mode or context.')
    if not np.array_equal(np.asarray(e.target), np.asarray(first.target)):
      raise ValueError('average_explanations: explanations explain different '
                       'target classes; pass target= to fix it.')
  mean = lambda *xs: functools.reduce(jnp.add, xs) / len(xs)
  return dataclasses.replace(
      first,
      baseline_probability=mean(*[e.baseline_probability
                                  for e in explanations]),
      modality_scores=mean(*[e.modality_scores for e in explanations]),
      image_map=mean(*[e.image_map for e in explanations]),
      speech_map=mean(*[e.speech_map for e in explanations]),
      image_regions=Regions(
          mean(*[e.image_regions.values for e in explanations]),
          first.image_regions.boxes),
      speech_regions=Regions(
          mean(*[e.speech_regions.values for e in explanations]),
          first.speech_regions.boxes),
      node_values=tuple(mean(*level) for level in zip(
          *[e.node_values for e in explanations])),
      num_evaluations=sum(e.num_evaluations for e in explanations))
