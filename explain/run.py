"""The `--mode=explain` driver: DnCShap for test examples or a user's pair.

Writes under `<workdir>/explain/`:
  <id>.png       Fig. 5-style figure (explain/figures.py).
  <id>.npz       image_map, speech_map, frame_importance, modality_scores,
                 target, probability, segments (+ region values and boxes).
  <id>_kept.wav  the kept speech (explain/speech.py).
  <id>.wav       the whole clip, to hear beside the kept speech.
  summary.json   settings, per-example results and, on the demo corpus
                 (examples with `image_cue_box` / `speech_cue_span`), how
                 often the top-ranked leaf region hits the planted cue.

Only this module of `explain/` imports the rest of the project.
"""

import dataclasses
import functools
import os
import time
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageOps

import input_pipeline
from input_pipeline import audio as audio_lib
from explain.dncshap import average_explanations
from explain.dncshap import dncshap
from explain.dncshap import dncshap_batch
from explain.dncshap import FactorizedFn
from explain.dncshap import num_evaluations
from explain import figures
from parallelnet.core import paths
from parallelnet.core import progress
from parallelnet.core import scaling as core_scaling
from parallelnet.core.errors import UserError
from parallelnet import inference
from parallelnet import mesh
from parallelnet import modality
from parallelnet.models import scaling as model_scaling
from explain import speech as speech_lib


def probability_fn(model, variables, *, factorized=True):
  """The model as DnCShap's fn: softmax probabilities, weights as arguments.

  factorized=True: an `explain.FactorizedFn` over the model's
  `encode_image` / `encode_speech` / `fuse` methods (every ParallelNet
  variant has them), so DnCShap encodes each distinct masked input once.
  For crossing 'before' / 'both' the N2 branches read both modalities, so
  only N1, the adapter and the 1x1 projections P are cached per modality
  and `fuse` runs N2 per coalition (fewer savings, same values).
  factorized=False (or a model without those methods): a
  `jax.tree_util.Partial` of the full forward pass.
  Either way the weights reach the compiled program as arguments, not
  constants, and the functions are reused per model (one compilation).
  """
  encode_image, encode_speech, fuse, full = _model_functions(model)
  if not (factorized and all(hasattr(model, m) for m in _FACTOR_METHODS)):
    return jax.tree_util.Partial(full, variables)
  return FactorizedFn(encode_image, encode_speech, fuse, variables)


_FACTOR_METHODS = ('encode_image', 'encode_speech', 'fuse')


@functools.lru_cache(maxsize=16)
def _model_functions(model):
  """(encode_image, encode_speech, fuse, full) for `model` (cached per model:
  the same function objects give the same jit cache entries)."""
  def encode_image(variables, images):
    return model.apply(variables, images, method='encode_image')

  def encode_speech(variables, spectrograms):
    return model.apply(variables, spectrograms, method='encode_speech')

  def fuse(variables, image_feats, speech_feats):
    logits, _ = model.apply(variables, image_feats, speech_feats,
                            method='fuse')
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  return encode_image, encode_speech, fuse, inference.probabilities_fn(model)


# --------------------------------------------------------------------------
# Baselines: what an absent player takes (config.explain.baseline).
# --------------------------------------------------------------------------

BASELINES = ('zeros', 'mean', 'blur', 'background')


@dataclasses.dataclass(frozen=True)
class Baseline:
  """The values absent players take, resolved from config.explain.baseline.

  name: 'zeros' | 'mean' | 'blur' | 'background' | the .npz path.
  images, spectrograms: (K, H, W, 3), (K, T, F, 1) fixed baselines in model
    input space (K = 1 for 'zeros', 'mean' and an .npz, K = background_size
    for 'background'); None for 'blur' (made from each input). A 'zeros'
    Baseline built without arrays means model-input zeros (the core's
    default).
  blur_sigma: Gaussian sigma, in array cells along both axes, for 'blur'.
  """
  name: str
  images: Optional[np.ndarray] = None
  spectrograms: Optional[np.ndarray] = None
  blur_sigma: float = 0.0

  @property
  def num_baselines(self):
    """Explanations averaged per example: the cost multiplier."""
    return 1 if self.images is None else int(self.images.shape[0])


def blur(x, sigma):
  """Gaussian blur of a batch (E, A, B, C) along A and B (each channel
  alone): rows/columns of an image, time/mel bins of a spectrogram."""
  import scipy.ndimage  # pylint: disable=g-import-not-at-top
  x = np.asarray(x, np.float32)
  return scipy.ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0),
                                       mode='nearest').astype(np.float32)


def baseline_arrays(baseline, images, spectrograms):
  """(K, E, ...) image and spectrogram baselines of a `Baseline` for a batch
  of examples (what Masked / the gradient peers take)."""
  e = images.shape[0]
  if baseline.name == 'zeros':
    return (np.zeros((1,) + images.shape, np.float32),
            np.zeros((1,) + spectrograms.shape, np.float32))
  if baseline.name == 'blur':
    return (blur(images, baseline.blur_sigma)[None],
            blur(spectrograms, baseline.blur_sigma)[None])
  rep = lambda x: np.repeat(np.asarray(x, np.float32)[:, None], e, axis=1)
  return rep(baseline.images), rep(baseline.spectrograms)


def load_baseline_npz(path, image_shape, speech_shape):
  """(image, spectrogram) baselines from an .npz with keys image and
  spectrogram of the model's input shapes; never unpickles."""
  if not paths.isfile(path):
    raise UserError(f'config.explain.baseline: {path} is not a file; give '
                    f'zeros, mean, blur, background or an existing .npz.')
  try:
    arrays = paths.read_npz(path)
  except Exception as e:  # Re-raised naming the file: corrupt, pickled, ...
    raise UserError(f'{path}: cannot read it as an .npz of plain arrays '
                    f'({e}).') from e
  out = []
  for key, want in (('image', tuple(image_shape)),
                    ('spectrogram', tuple(speech_shape))):
    if key not in arrays:
      raise UserError(f'{path}: no array {key!r} (it holds '
                      f'{sorted(arrays)}); a baseline .npz needs image '
                      f'{tuple(image_shape)} and spectrogram '
                      f'{tuple(speech_shape)}.')
    a = arrays[key]
    if a.shape != want or not np.issubdtype(a.dtype, np.number):
      raise UserError(f'{path}: {key!r} has shape {a.shape} ({a.dtype}); the '
                      f'model takes {want} numbers.')
    out.append(a.astype(np.float32))
  return tuple(out)


def _training_inputs(config):
  """Yields (images, spectrograms) batches of the training split, streamed
  (model-scaled, as the model sees them; nothing held beyond a batch)."""
  ds = input_pipeline.eval_dataset(config, 'train', process_index=0,
                                   process_count=1)
  for batch in ds.as_numpy_iterator():
    keep = np.asarray(batch['mask'], bool)
    yield (np.asarray(batch['image'], np.float32)[keep],
           np.asarray(batch['spectrogram'], np.float32)[keep])


def _mean_input(config, train):
  if train is not None:
    return (np.asarray(train['image'], np.float64).mean(0),
            np.asarray(train['spectrogram'], np.float64).mean(0))
  sums, count = None, 0
  for images, speech in _training_inputs(config):
    part = (images.astype(np.float64).sum(0), speech.astype(np.float64).sum(0))
    sums = part if sums is None else (sums[0] + part[0], sums[1] + part[1])
    count += len(images)
  if not count:
    raise ValueError('The training split is empty: no mean baseline.')
  return sums[0] / count, sums[1] / count


def _pick_training_inputs(config, k, train):
  """k training inputs drawn without replacement with config.seed."""
  if train is not None:
    images = np.asarray(train['image'], np.float32)
    speech = np.asarray(train['spectrogram'], np.float32)
    size = len(images)
  else:
    size = int(input_pipeline.num_examples(config, 'train'))
  if not 1 <= k <= size:
    raise UserError(f'config.explain.background_size={k}; it must be in '
                    f'[1, {size}] (the training split\'s size).')
  pick = np.sort(np.random.default_rng(config.seed).choice(size, k,
                                                           replace=False))
  if train is not None:
    return images[pick], speech[pick]
  got_i, got_s, start = [], [], 0
  for images, speech in _training_inputs(config):
    rows = pick[(pick >= start) & (pick < start + len(images))] - start
    got_i.append(images[rows])
    got_s.append(speech[rows])
    start += len(images)
  return np.concatenate(got_i), np.concatenate(got_s)


def blank_input(config, image_shape, speech_shape):
  """Algorithm 1's blank pair in model-input space: a black image (RGB 0)
  under config.input.image_scaling (e.g. caffe: minus the ImageNet mean
  colour, not 0) and a silent spectrogram (0 in the [0, 1] dB mapping of
  input_pipeline/audio.py). `config` has a resolved scaling."""
  black = np.zeros(tuple(image_shape), np.uint8)
  image = core_scaling.scale_image(black, config.input.image_scaling)
  return image.astype(np.float32), np.zeros(tuple(speech_shape), np.float32)


def make_baseline(config, image_shape, speech_shape, *, train=None,
                  workdir=None):
  """Resolves config.explain.baseline into a `Baseline`.

  'zeros' is the blank pair of raw inputs, a black image and silence, put
  through the same preprocessing as the data (`blank_input`).
  'mean' and 'background' read the training split, streamed (or `train`, a
  dict with 'image' and 'spectrogram' arrays, when given): the per-pixel
  mean input, or background_size inputs drawn without replacement with
  config.seed. With `workdir`, the mean is cached in
  <workdir>/explain/baseline_mean.npz (an .npz baseline file), so that
  explaining one's own files later needs only the workdir.
  """
  config = model_scaling.resolve_config(config)
  c = config.explain
  name = str(c.baseline)
  if name == 'zeros':
    image, speech = blank_input(config, image_shape, speech_shape)
    return Baseline('zeros', image[None], speech[None])
  if name == 'blur':
    sigma = float(c.blur_sigma)
    if not sigma > 0:
      raise UserError(f'config.explain.blur_sigma={c.blur_sigma!r}; it must '
                      f'be > 0 for baseline=blur.')
    return Baseline('blur', blur_sigma=sigma)
  if name == 'mean':
    cache = (None if workdir is None or train is not None else
             paths.join(workdir, 'explain', 'baseline_mean.npz'))
    if cache and paths.exists(cache):
      image, speech = load_baseline_npz(cache, image_shape, speech_shape)
    else:
      image, speech = _mean_input(config, train)
      if cache and jax.process_index() == 0:
        # Atomic: another process may be reading the cache meanwhile.
        paths.write_npz_atomic(cache, image=image.astype(np.float32),
                               spectrogram=speech.astype(np.float32))
    return Baseline('mean', image[None].astype(np.float32),
                    speech[None].astype(np.float32))
  if name == 'background':
    images, speech = _pick_training_inputs(config, int(c.background_size),
                                           train)
    return Baseline('background', images, speech)
  if name.endswith('.npz') or os.sep in name:
    image, speech = load_baseline_npz(name, image_shape, speech_shape)
    return Baseline(name, image[None], speech[None])
  raise UserError(f'config.explain.baseline={name!r}; expected one of '
                  f'{", ".join(BASELINES)} or a path to an .npz with image '
                  f'and spectrogram arrays.')


def explain_batch(fn, images, spectrograms, baseline, *, depth, mode,
                  context='absent', key=None, max_batch=256, target=None):
  """`dncshap_batch` with a `Baseline`: blur made per input, a background
  explained once per baseline and averaged (K times the evaluations)."""
  kwargs = dict(depth=depth, mode=mode, context=context, max_batch=max_batch)
  if baseline.name == 'zeros' and baseline.images is None:
    return dncshap_batch(fn, images, spectrograms, key=key, target=target,
                         **kwargs)
  if baseline.name == 'blur':
    pair = (blur(images, baseline.blur_sigma),
            blur(spectrograms, baseline.blur_sigma))
    return dncshap_batch(fn, images, spectrograms, baseline=pair, key=key,
                         target=target, **kwargs)
  out = []
  for k in range(baseline.num_baselines):
    pair = (baseline.images[k], baseline.spectrograms[k])
    sub_key = None if key is None else jax.random.fold_in(key, k)
    e = dncshap_batch(fn, images, spectrograms, baseline=pair, key=sub_key,
                      target=target, **kwargs)
    target = e.target  # One class for every baseline.
    out.append(e)
  return out[0] if len(out) == 1 else average_explanations(out)


def _intersects(a0, a1, b0, b1):
  return min(a1, b1) > max(a0, b0)


def top_image_hit(regions_values, boxes, cue_box):
  """(hit, chance): top-ranked image leaf overlaps the cue box; and the
  share of leaves that overlap it (what a random pick would score)."""
  overlap = np.array([
      _intersects(y0, y1, cue_box[0], cue_box[2])
      and _intersects(x0, x1, cue_box[1], cue_box[3])
      for y0, x0, y1, x1 in boxes])
  return bool(overlap[int(np.argmax(regions_values))]), float(overlap.mean())


def leaf_time_spans(boxes, hop_length, sample_rate, num_samples):
  """(L, 2) seconds covered by each speech leaf's frames (t0, t1 of a box)."""
  num_frames = int(boxes[:, 2].max())
  ranges = speech_lib.frame_sample_ranges(num_frames, hop_length, num_samples)
  return np.stack([ranges[boxes[:, 0], 0], ranges[boxes[:, 2] - 1, 1]],
                  axis=1) / sample_rate


def top_speech_hit(regions_values, spans, cue_span):
  """(hit, chance) for the top-ranked speech leaf's time span vs the cue."""
  overlap = np.array([_intersects(a, b, cue_span[0], cue_span[1])
                      for a, b in spans])
  return bool(overlap[int(np.argmax(regions_values))]), float(overlap.mean())


def _write_example(config, out_dir, ex_id, e, *, image_raw, waveform,
                   label=None, write=True, missing='', **figure_kwargs):
  """Speech post-processing, figure and npz for one explained example; the
  record only (no files) when not `write`. `missing` ('image' | 'speech'):
  the modality the pair lacked, left out of the figure and the modality
  scores. `figure_kwargs`: display_size, cue_box, cue_span of
  figures.make_figure."""
  classes = list(config.dataset.classes)
  used = tuple(m for m in _used_modalities(config) if m != missing)
  if not used:
    raise UserError(f'The pair lacks its {missing}, the only modality this '
                    f'model reads (config.model.modalities='
                    f'{config.model.modalities}).')
  name = paths.safe_name(ex_id)
  e = jax.device_get(e)
  sp = speech_lib.explain_speech(
      e.speech_map, waveform, hop_length=config.input.hop_length,
      sample_rate=config.input.sample_rate,
      keep_percentile=config.explain.keep_percentile,
      wav_path=paths.join(out_dir, f'{name}_kept.wav') if write else None,
      clip_wav_path=paths.join(out_dir, f'{name}.wav') if write else None)
  target = int(e.target)
  record = dict(
      id=str(ex_id), file=name, predicted=classes[target],
      probability=float(e.probability),
      baseline_probability=float(e.baseline_probability),
      modality_scores={m: float(e.modality_scores[i])
                       for i, m in enumerate(('image', 'speech'))
                       if m in used},
      segments_s=[[float(a), float(b)] for a, b in sp.segments],
      true=None if label is None else classes[int(label)],
      **({'missing': missing} if missing else {}))
  if not write:
    return record
  figures.save_figure(
      paths.join(out_dir, f'{name}.png'),
      image_raw=image_raw, image_map=e.image_map, waveform=waveform,
      sample_rate=config.input.sample_rate,
      hop_length=config.input.hop_length,
      frame_importance=sp.frame_importance, segments=sp.segments,
      predicted=classes[target], probability=float(e.probability),
      true_label=None if label is None else classes[int(label)],
      modality_scores=np.asarray(e.modality_scores),
      title=str(ex_id) + (f' ({missing} absent)' if missing else ''),
      baseline_probability=float(e.baseline_probability),
      image_regions=(np.asarray(e.image_regions.values),
                     e.image_regions.boxes),
      speech_regions=(np.asarray(e.speech_regions.values),
                      e.speech_regions.boxes),
      modalities=used, **figure_kwargs)
  paths.write_npz_atomic(
      paths.join(out_dir, f'{name}.npz'),
      image_map=np.asarray(e.image_map), speech_map=np.asarray(e.speech_map),
      frame_importance=sp.frame_importance,
      modality_scores=np.asarray(e.modality_scores),
      target=np.int32(target), probability=np.float32(e.probability),
      baseline_probability=np.float32(e.baseline_probability),
      segments=sp.segments,
      image_region_values=np.asarray(e.image_regions.values),
      image_region_boxes=e.image_regions.boxes,
      speech_region_values=np.asarray(e.speech_regions.values),
      speech_region_boxes=e.speech_regions.boxes, missing=np.str_(missing))
  return record


def _settings(config, step, baseline):
  c = config.explain
  return dict(checkpoint_step=int(step), depth=int(c.depth), mode=c.mode,
              context=c.context, max_batch=int(c.max_batch),
              keep_percentile=float(c.keep_percentile),
              baseline=baseline.name, num_baselines=baseline.num_baselines,
              blur_sigma=baseline.blur_sigma or None,
              evaluations_per_example=baseline.num_baselines * num_evaluations(
                  int(c.depth), c.mode))


def _used_modalities(config):
  """('image', 'speech'), or the one a unimodal model reads."""
  m = config.model.get('modalities', 'both')
  return ('image', 'speech') if m == 'both' else (m,)


def explain_dataset(config, workdir, *, split='test'):
  """Explains the first config.explain.num_examples examples of `split`.

  Batches of config.explain.batch_size examples go round-robin to the
  processes of a multi-process run (batch b to process b % count); each
  process spreads its batches over its local devices (`dncshap_batch`) and
  writes only its examples' files. The per-example records are then
  all-gathered and process 0 writes summary.json. A batch's key is
  `fold_in(key(seed), start)` whoever explains it, so results do not depend
  on the process or device count.

  Returns the summary dict (also written to <workdir>/explain/summary.json).
  """
  config = model_scaling.resolve_config(config)
  c = config.explain
  model, variables, step = inference.restore(config, workdir, which='best')
  fn = probability_fn(model, variables)
  ex = input_pipeline.load_examples(config, split, int(c.num_examples))
  baseline = make_baseline(config, ex['image'].shape[1:],
                           ex['spectrogram'].shape[1:], workdir=workdir)
  out_dir = paths.join(workdir, 'explain')
  paths.makedirs(out_dir)
  num = len(ex['id'])
  key = jax.random.key(config.seed)
  records = []
  seconds = 0.0
  # A unimodal model (SER/IER only) is scored on its own modality only.
  used = _used_modalities(config)
  cue_box = ex.get('image_cue_box') if 'image' in used else None
  cue_span = ex.get('speech_cue_span') if 'speech' in used else None
  starts = range(0, num, int(c.batch_size))
  mine = starts[jax.process_index()::jax.process_count()]
  bar = progress.Progress(
      sum(min(num, s + int(c.batch_size)) - s for s in mine), 'explaining',
      unit='examples', interval_s=20.0, enabled=jax.process_index() == 0)
  for start in mine:
    stop = min(num, start + int(c.batch_size))
    t0 = time.time()
    e = explain_batch(
        fn, ex['image'][start:stop], ex['spectrogram'][start:stop], baseline,
        depth=int(c.depth), mode=c.mode, context=c.context,
        key=jax.random.fold_in(key, start), max_batch=int(c.max_batch))
    e = jax.block_until_ready(e)
    seconds += time.time() - t0
    for i in range(stop - start):
      j = start + i
      one = e.example(i)
      rec = _write_example(config, out_dir, ex['id'][j], one,
                           image_raw=ex['image_raw'][j],
                           waveform=ex['waveform'][j], label=ex['label'][j],
                           cue_box=None if cue_box is None else cue_box[j],
                           cue_span=None if cue_span is None else cue_span[j])
      rec['correct'] = rec['predicted'] == rec['true']
      rec['_index'] = j
      if cue_box is not None and np.all(cue_box[j] >= 0):
        hit, chance = top_image_hit(np.asarray(one.image_regions.values),
                                    one.image_regions.boxes, cue_box[j])
        rec['top_image_region_hits_cue'] = hit
        rec['_image_chance'] = chance
      if cue_span is not None and np.all(cue_span[j] >= 0):
        spans = leaf_time_spans(one.speech_regions.boxes,
                                config.input.hop_length,
                                config.input.sample_rate,
                                ex['waveform'][j].shape[0])
        hit, chance = top_speech_hit(np.asarray(one.speech_regions.values),
                                     spans, cue_span[j])
        rec['top_speech_span_hits_cue'] = hit
        rec['_speech_chance'] = chance
      records.append(rec)
      bar.update()
  bar.close()
  gathered = mesh.allgather_json(dict(records=records, seconds=seconds))
  records = sorted((r for g in gathered for r in g['records']),
                   key=lambda r: r['_index'])
  assert [r['_index'] for r in records] == list(range(num)), 'lost examples'
  image_hits = [r['top_image_region_hits_cue'] for r in records
                if '_image_chance' in r]
  image_chance = [r.pop('_image_chance') for r in records
                  if '_image_chance' in r]
  speech_hits = [r['top_speech_span_hits_cue'] for r in records
                 if '_speech_chance' in r]
  speech_chance = [r.pop('_speech_chance') for r in records
                   if '_speech_chance' in r]
  for r in records:
    del r['_index']
  seconds = max(g['seconds'] for g in gathered)  # The slowest process.
  summary = dict(
      split=split, num_examples=num, **_settings(config, step, baseline),
      seconds_dncshap=seconds,
      accuracy_on_explained=float(np.mean([r['correct'] for r in records])),
      examples=records)
  if image_hits:
    summary['image_cue_hit_rate'] = float(np.mean(image_hits))
    summary['image_cue_chance_rate'] = float(np.mean(image_chance))
    summary['image_cue_examples'] = len(image_hits)
  if speech_hits:
    summary['speech_cue_hit_rate'] = float(np.mean(speech_hits))
    summary['speech_cue_chance_rate'] = float(np.mean(speech_chance))
    summary['speech_cue_examples'] = len(speech_hits)
  if jax.process_index() == 0:
    paths.write_json_atomic(paths.join(out_dir, 'summary.json'), summary)
  rates = ', '.join(
      f'{m} {summary[f"{m}_cue_hit_rate"]:.2f} (chance '
      f'{summary[f"{m}_cue_chance_rate"]:.2f})'
      for m in used if f'{m}_cue_hit_rate' in summary)
  logging.info('Explained %d examples in %.1f s (DnCShap only)%s.', num,
               seconds, f'; top region on the planted cue: {rates}'
               if rates else '')
  return summary


def _photo_size(path):
  """(height, width) of the photo as shown upright, or None if unreadable
  here (the figure then shows the model's square input)."""
  try:
    with Image.open(path) as photo:
      return ImageOps.exif_transpose(photo).size[::-1]
  except (OSError, ValueError):
    return None


def explain_files(config, workdir, image_path, audio_path):
  """Explains one user pair with the dataset's preprocessing; prints it.

  Every process of a multi-process run computes the explanation (the same
  one: same inputs, weights and key); process 0 alone writes the files and
  prints. Returns the summary dict on every process. One path None: the
  pair lacks that modality; the model reads its missing input there
  (parallelnet/modality.py), the figure shows the other modality only and
  the records say `missing`.
  """
  config = model_scaling.resolve_config(config)
  c = config.explain
  # The files first: a bad file is reported before the model loads.
  pair = input_pipeline.preprocess_pair(config, image_path, audio_path)
  if pair.get('audio_notice'):
    logging.info('%s', pair['audio_notice'])
  missing = pair.get('missing', '')
  if missing:
    absent = modality.missing_inputs(config)
    for key in ('image', 'spectrogram'):
      if pair[key] is None:
        pair[key] = absent[key]
    if pair['image_raw'] is None:
      pair['image_raw'] = np.zeros(pair['image'].shape, np.uint8)
    if pair['waveform'] is None:
      pair['waveform'] = np.zeros(audio_lib.num_samples(config.input),
                                  np.float32)
  model, variables, step = inference.restore(config, workdir, which='best')
  if missing:
    warning = modality.untrained_warning(config, workdir)
    if warning:
      logging.warning('%s', warning)
  baseline = make_baseline(config, pair['image'].shape,
                           pair['spectrogram'].shape, workdir=workdir)
  if missing and baseline.images is not None:
    # The absent modality is absent in every coalition: its baseline is the
    # missing input too, so it contributes nothing and the present one gets
    # f(x) - f(baseline, missing input).
    key = 'images' if missing == 'image' else 'spectrograms'
    fill = absent['image' if missing == 'image' else 'spectrogram']
    baseline = dataclasses.replace(baseline, **{key: np.broadcast_to(
        fill, getattr(baseline, key).shape).copy()})
  e = explain_batch(
      probability_fn(model, variables), pair['image'][None],
      pair['spectrogram'][None], baseline, depth=int(c.depth), mode=c.mode,
      context=c.context, key=jax.random.key(config.seed),
      max_batch=int(c.max_batch)).example(0)
  writer = jax.process_index() == 0
  out_dir = paths.join(workdir, 'explain')
  if writer:
    paths.makedirs(out_dir)
  ex_id = '__'.join(os.path.splitext(os.path.basename(p))[0]
                    for p in (image_path, audio_path) if p)
  display_size = _photo_size(image_path) if image_path else None
  rec = _write_example(config, out_dir, ex_id, e,
                       image_raw=pair['image_raw'], waveform=pair['waveform'],
                       write=writer, missing=missing,
                       display_size=display_size)
  summary = dict(image=image_path, audio=audio_path,
                 **_settings(config, step, baseline),
                 **dict(rec, missing=missing))
  if not writer:
    return summary
  name = paths.safe_name(ex_id)
  paths.write_json_atomic(paths.join(out_dir, f'{name}.json'), summary)
  print(f"prediction: {rec['predicted']} (softmax {rec['probability']:.4f}; "
        f"baseline input {rec['baseline_probability']:.4f})")
  print('modality scores: ' + '  '.join(
      f'{m} {v:+.4f}' for m, v in rec['modality_scores'].items()))
  if missing:
    print(f'{missing}: absent (the model read its missing input)')
  if missing != 'speech':
    print(f'kept speech segments (s): {rec["segments_s"]}')
  print(f'wrote {paths.join(out_dir, name)}.png/.npz/_kept.wav/.json')
  return summary

