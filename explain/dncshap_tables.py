"""DnCShap's tables: the hierarchy of players, the coalitions of each mode.

PAPER.md, "DnCShap" (paper §3.3, Eq. 3-5, Algorithm 1). Static structure in
numpy, built once per input shape and depth and cached; only dnc mode's
context-dependent rows (`dnc_masks`, `dnc_factors`) are JAX arrays.

Players form a binary hierarchy. The root is the whole input; level 1 holds
the two modalities (image, speech); below each modality its array is halved
`depth` times, alternating the two spatial axes and always splitting axis 0
first: for the image that is rows (a top and a bottom half), for the
(time, frequency) spectrogram that is time (an early and a late half). Odd
sizes split as n // 2 and n - n // 2, so the 2**depth leaf regions of each
modality tile its array exactly.

Notation: D = depth + 1 levels below the root. Leaves are numbered in tree
order over both modalities: leaves 0 .. L-1 are the image's, L .. 2L-1 the
speech's (L = 2**depth); node i at level k covers the leaves
[i * 2**(D-k), (i+1) * 2**(D-k)). A coalition is a boolean mask over the 2L
leaves; `leaf_id_map` (pixel -> leaf) turns it into pixel masks by a gather.

Coalitions per example:
  exact: 2 + 2 (4**D - 1) / 3 distinct masks (`exact_tables`).
  dnc: 2**(D+1) masks, two per node plus the empty and the full one
    (`dnc_masks`).
For a model split by modality, a coalition is a pair (image part, speech
part), and far fewer distinct parts than pairs exist: below the modalities
every coalition keeps the other modality entirely present or absent
(`exact_factors`, `dnc_factors`, counted by `num_encodings`).
"""

import functools
from typing import Tuple

import jax.numpy as jnp
import numpy as np

MODES = ('exact', 'dnc')
CONTEXTS = ('absent', 'present', 'random')

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


def leaf_areas(shape, depth):
  """(2**depth,) pixel counts of the leaf regions, in tree order."""
  boxes = region_boxes(shape, depth)
  return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


@functools.lru_cache(maxsize=16)
def node_masks(d: int) -> Tuple[np.ndarray, ...]:
  """node_masks[k]: (2**k, 2**d) bool, leaves covered by each level-k node."""
  leaves = np.arange(2**d)
  return tuple((leaves[None, :] >> (d - k)) == np.arange(2**k)[:, None]
               for k in range(d + 1))


@functools.lru_cache(maxsize=16)
def exact_tables(d: int):
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
  nodes = node_masks(d)
  offsets = [0, 2]
  for j in range(1, d + 1):
    offsets.append(offsets[-1] + 2**j * 2**(j - 1))
  masks = [np.zeros((1, 2**d), bool), np.ones((1, 2**d), bool)]
  for j in range(1, d + 1):
    # Canonical (j, node m, bits bp over levels 1..j-1), bp bit t-1 = level t.
    m = np.repeat(np.arange(2**j), 2**(j - 1))
    bp = np.tile(np.arange(2**(j - 1)), 2**j)
    mask = nodes[j][m].copy()
    for t in range(1, j):
      sibling_t = (m >> (j - t)) ^ 1  # Sibling of m's ancestor at level t.
      present = ((bp >> (t - 1)) & 1).astype(bool)
      mask |= nodes[t][sibling_t] & present[:, None]
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
def exact_factors(d: int):
  """Exact mode's distinct image / speech parts (static, from the table).

  Returns (image_table (Mi, L), image_index (M,), speech_table (Ms, L),
  speech_index (M,)): row r of the coalition table is the pair
  (image_table[image_index[r]], speech_table[speech_index[r]]).
  """
  masks = exact_tables(d)[0]
  half = masks.shape[1] // 2
  out = []
  for part in (masks[:, :half], masks[:, half:]):
    table, index = np.unique(part, axis=0, return_inverse=True)
    out += [table, index.reshape(-1).astype(np.int32)]
  return tuple(out)


def dnc_masks(coins, d: int):
  """dnc mode's (2**(d+1), 2**d) coalitions for the given context coins.

  coins[k - 1]: (2**k,) bool per level-k node, whether its context includes
  its sibling. Rows: 0 empty, 1 full, then level k's 2**k rows from row
  2**k: C_N u A, C_N u B for each level-(k-1) node N with children A, B.
  The rows depend on the coins only, never on model outputs.
  """
  nodes = node_masks(d)
  ctx = jnp.zeros((1, 2**d), bool)  # The root's context: nobody.
  rows = [jnp.zeros((1, 2**d), bool), jnp.ones((1, 2**d), bool)]
  for k in range(1, d + 1):
    parent_ctx = jnp.repeat(ctx, 2, axis=0)
    rows.append(parent_ctx | nodes[k])  # C_N u A, C_N u B.
    sibling = nodes[k][np.arange(2**k) ^ 1]
    ctx = parent_ctx | (coins[k - 1][:, None] & sibling)
  return jnp.concatenate(rows)


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


def dnc_factors(masks, d):
  """dnc's distinct parts from its (dynamic) mask rows; see exact_factors.

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
    factors = exact_factors(d)
    return len(factors[0]), len(factors[2])
  if mode == 'dnc':
    return 2**d, 2**d
  raise ValueError(f'Unknown mode {mode!r}; expected one of {MODES}.')

