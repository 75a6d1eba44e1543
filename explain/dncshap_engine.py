"""DnCShap's engine: every masked input of an explanation, evaluated in batches.

PAPER.md, "DnCShap" (paper §3.3, Eq. 3-5, Algorithm 1). The coalitions come
from `explain.dncshap_tables`; the public entry points and their argument
checks are in `explain.dncshap`.

All masked inputs of an explanation are built as one array of leaf masks (in
dnc mode too: its coalitions depend on the context coins only, never on model
outputs, so every level goes into the same batched evaluation) and
evaluated in jit-compiled chunks (`jax.lax.map` over chunks, the last one
padded with a repeat of an already-evaluated coalition so that one compiled
shape serves every chunk). A batch of examples is vmapped; over several
devices it is split by example, or, with fewer examples than devices, by
coalition (`jax.shard_map` on a 1-D mesh). Nothing here imports the rest of
the project: `fn` is any traceable `fn(images, spectrograms) -> (batch, C)`.

Modality-factorized evaluation. When `fn` is a `FactorizedFn` (the model
split into encode_image, encode_speech and fuse), each coalition is a pair
(image part, speech part) of its leaf mask, with far fewer distinct parts
than pairs (`dncshap_tables.exact_factors` / `dnc_factors`). Each distinct
masked image / spectrogram is encoded once, in chunks, and `fuse` runs for
every pair on features gathered by index, again in chunks. The values equal
fn's on the full masked inputs (same arithmetic per row). Encodings per
example (image + speech), D = depth + 1: exact 2 * (2 + (4**D - 4) / 6) (24
instead of 44 pairs at depth 2, 88 instead of 172 at depth 3, each encoding
about half a forward pass); dnc 2 * 2**D (half of its 2**(D+1) pairs).
"""

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from explain import dncshap_tables as tables

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
  distinct parts `factors` (see `dncshap_tables.exact_factors`) are encoded
  in chunks of chunk[0] (images) and chunk[1] (spectrograms), then fused per
  row in chunks of chunk[2]. `axis`: spread the rows of every stage over a
  mesh axis (see _map_rows).
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
  image_leaf = tables.leaf_id_map(image_shape, depth)
  speech_leaf = tables.leaf_id_map(speech_shape, depth)
  areas = np.concatenate([tables.leaf_areas(image_shape, depth),
                          tables.leaf_areas(speech_shape, depth)]).astype(
                              np.float32)
  node_masks = tables.node_masks(d)

  if mode == 'exact':
    masks, plus, minus = tables.exact_tables(d)
    masks = jnp.asarray(masks)
  else:
    # Coin of node N (levels 1..D): does N's context include its sibling?
    sizes = [2**k for k in range(1, d + 1)]
    if context == 'random':
      coins = jax.random.bernoulli(key, 0.5, (sum(sizes),))
    else:
      coins = jnp.full((sum(sizes),), context == 'present')
    coins = jnp.split(coins, np.cumsum(sizes)[:-1])
    masks = tables.dnc_masks(coins, d)

  factors = None
  if isinstance(fn, FactorizedFn):
    factors = (tables.exact_factors(d) if mode == 'exact'
               else tables.dnc_factors(masks, d))
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


def run(fn, image, spectrogram, base_image, base_spectrogram, target, key,
        **static):
  """The explanation arrays (a dict), from the jitted core.

  A `jax.tree_util.Partial` or `FactorizedFn` reaches it as an argument (its
  arrays are not baked in as constants); any other fn is static, compiled
  once per function object.
  """
  args = (image, spectrogram, base_image, base_spectrogram, target, key)
  if isinstance(fn, (jax.tree_util.Partial, FactorizedFn)):
    return _run_dynamic(fn, *args, **static)
  return _run_static(*args, fn=fn, **static)


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


def chunk_size(evals, max_batch, num_examples=None):
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


_NUM_CLASSES = {}  # Cache of num_classes, keyed by _shape_key.


def _shape_key(fn, one_image, one_speech):
  """Hashable key under which fn's output shape cannot change, or None.

  For a `jax.tree_util.Partial` or `FactorizedFn` the function(s) and the
  shapes / dtypes of its arrays (new weights of the same shapes give the
  same output shape); for a plain callable the object itself.
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


def num_classes(fn, one_image, one_speech):
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

