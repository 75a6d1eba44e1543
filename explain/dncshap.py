"""DnCShap: hierarchical Shapley attribution for an image + speech model.

Paper §3.3, Eq. 3-5 and Algorithm 1, as read in PAPER.md, "DnCShap". The
public API: `dncshap` (one example), `dncshap_batch` (a batch, over the
local devices), `average_explanations` (several baselines) and what they
return; argument checks happen here, at the edge.

Players form a binary hierarchy: the whole input, the two modalities, then
each modality's array halved `depth` times (`region_boxes`; the tables of
coalitions are in `explain.dncshap_tables`). A player that is absent takes
the baseline value (zeros by default, as in Algorithm 1). The value of a
coalition S is v(S) = fn(x_S)[target], with the target class fixed once
from the unmasked input. Two modes, D = depth + 1:
  exact: the Owen values of the nested binary hierarchy (PAPER.md, "DnCShap"),
    phi(N) = 2**-k sum_b [v(C_b u N) - v(C_b)], every distinct coalition
    evaluated once: 2 + 2 (4**D - 1) / 3 masked inputs.
  dnc: the paper's two-evaluations-per-node recursion, made exactly efficient
    (PAPER.md, "DnCShap"): 2**(D+1) masked inputs. Exact for additive models;
    not null-player respecting (a region without effect can receive part of
    an interaction residual). With context='random' its mean over keys is an
    unbiased estimate of exact mode.
The evaluation (chunks of `max_batch`, vmap over examples, shard_map over
devices, and the encode-once path of a `FactorizedFn`) is in
`explain.dncshap_engine`. Nothing here imports the rest of the project.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from explain import dncshap_engine as engine
from explain import dncshap_tables as tables
# The names users import from here, defined in the tables and the engine.
from explain.dncshap_engine import FactorizedFn
from explain.dncshap_tables import CONTEXTS
from explain.dncshap_tables import leaf_id_map  # pylint: disable=unused-import
from explain.dncshap_tables import MODES
from explain.dncshap_tables import num_encodings
from explain.dncshap_tables import num_evaluations
from explain.dncshap_tables import region_boxes


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
      encodings (`explain.dncshap_engine`). For a large model pass
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
    sizes = tables.leaf_areas(tuple(shape[:2]), depth)
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

  num_classes = engine.num_classes(fn, tuple(one_image), tuple(one_speech))

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
    chunk = tuple(engine.chunk_size(n, max_batch, num_examples)
                  for n in num_encodings(depth, mode) + (pairs,))
  else:
    chunk = (engine.chunk_size(pairs, max_batch, num_examples),)
  static = dict(depth=depth, mode=mode, context=context, chunk=chunk,
                batched=batched, base_axes=tuple(base_axes),
                target_axis=target_axis, spread=spread)
  out = engine.run(fn, image, spectrogram, bases[0], bases[1], target, key,
                   **static)

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
