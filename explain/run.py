"""The `--mode=explain` driver: DnCShap for test examples or a user's pair.

Writes under `<workdir>/explain/`:
  <id>.png       Fig. 5-style figure (explain/figures.py).
  <id>.npz       image_map, speech_map, frame_importance, modality_scores,
                 target, probability, segments (+ region values and boxes).
  <id>_kept.wav  the kept speech (explain/speech.py).
  summary.json   settings, per-example results and, on the demo corpus
                 (examples with `image_cue_box` / `speech_cue_span`), how
                 often the top-ranked leaf region hits the planted cue.

Only this module of `explain/` imports the rest of the project.
"""

import json
import os
import re
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from explain.dncshap import dncshap
from explain.dncshap import dncshap_batch
from explain.dncshap import num_evaluations
from explain import figures
from explain import speech as speech_lib


def probability_fn(model, variables):
  """fn(images, spectrograms) -> softmax probabilities, weights as arguments.

  A `jax.tree_util.Partial` keeps the weights out of the compiled program's
  constants (DnCShap passes them to its jitted core as arguments).
  """
  def probs(variables, images, spectrograms):
    logits, _ = model.apply(variables, images, spectrograms, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jax.tree_util.Partial(probs, variables)


def _safe_name(text):
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', str(text)).strip('_') or 'example'


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
                   label=None):
  """Speech post-processing, figure and npz for one explained example."""
  classes = list(config.dataset.classes)
  name = _safe_name(ex_id)
  e = jax.device_get(e)
  sp = speech_lib.explain_speech(
      e.speech_map, waveform, hop_length=config.input.hop_length,
      sample_rate=config.input.sample_rate,
      keep_percentile=config.explain.keep_percentile,
      wav_path=os.path.join(out_dir, f'{name}_kept.wav'))
  target = int(e.target)
  figures.save_figure(
      os.path.join(out_dir, f'{name}.png'),
      image_raw=image_raw, image_map=e.image_map, waveform=waveform,
      sample_rate=config.input.sample_rate,
      hop_length=config.input.hop_length,
      frame_importance=sp.frame_importance, segments=sp.segments,
      predicted=classes[target], probability=float(e.probability),
      true_label=None if label is None else classes[int(label)],
      modality_scores=np.asarray(e.modality_scores), title=str(ex_id))
  np.savez(
      os.path.join(out_dir, f'{name}.npz'),
      image_map=np.asarray(e.image_map), speech_map=np.asarray(e.speech_map),
      frame_importance=sp.frame_importance,
      modality_scores=np.asarray(e.modality_scores),
      target=np.int32(target), probability=np.float32(e.probability),
      baseline_probability=np.float32(e.baseline_probability),
      segments=sp.segments,
      image_region_values=np.asarray(e.image_regions.values),
      image_region_boxes=e.image_regions.boxes,
      speech_region_values=np.asarray(e.speech_regions.values),
      speech_region_boxes=e.speech_regions.boxes)
  return dict(
      id=str(ex_id), predicted=classes[target],
      probability=float(e.probability),
      baseline_probability=float(e.baseline_probability),
      modality_scores=dict(image=float(e.modality_scores[0]),
                           speech=float(e.modality_scores[1])),
      segments_s=[[float(a), float(b)] for a, b in sp.segments],
      true=None if label is None else classes[int(label)])


def _settings(config, step):
  c = config.explain
  return dict(checkpoint_step=int(step), depth=int(c.depth), mode=c.mode,
              context=c.context, max_batch=int(c.max_batch),
              keep_percentile=float(c.keep_percentile),
              evaluations_per_example=num_evaluations(
                  int(c.depth), c.mode))


def explain_dataset(config, workdir, *, split='test'):
  """Explains the first config.explain.num_examples examples of `split`.

  Returns the summary dict (also written to <workdir>/explain/summary.json).
  """
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  c = config.explain
  model, variables, step = checkpointing.restore_for_inference(
      config, workdir, which='best')
  fn = probability_fn(model, variables)
  ex = input_pipeline.load_examples(config, split, int(c.num_examples))
  out_dir = os.path.join(workdir, 'explain')
  os.makedirs(out_dir, exist_ok=True)
  num = len(ex['id'])
  key = jax.random.key(config.seed)
  records, image_hits, speech_hits = [], [], []
  image_chance, speech_chance = [], []
  seconds = 0.0
  for start in range(0, num, int(c.batch_size)):
    stop = min(num, start + int(c.batch_size))
    t0 = time.time()
    e = dncshap_batch(
        fn, ex['image'][start:stop], ex['spectrogram'][start:stop],
        depth=int(c.depth), mode=c.mode, context=c.context,
        key=jax.random.fold_in(key, start), max_batch=int(c.max_batch))
    e = jax.block_until_ready(e)
    seconds += time.time() - t0
    for i in range(stop - start):
      j = start + i
      one = e.example(i)
      rec = _write_example(config, out_dir, ex['id'][j], one,
                           image_raw=ex['image_raw'][j],
                           waveform=ex['waveform'][j], label=ex['label'][j])
      rec['correct'] = rec['predicted'] == rec['true']
      cue_box = ex.get('image_cue_box')
      if cue_box is not None and np.all(cue_box[j] >= 0):
        hit, chance = top_image_hit(np.asarray(one.image_regions.values),
                                    one.image_regions.boxes, cue_box[j])
        rec['top_image_region_hits_cue'] = hit
        image_hits.append(hit)
        image_chance.append(chance)
      cue_span = ex.get('speech_cue_span')
      if cue_span is not None and np.all(cue_span[j] >= 0):
        spans = leaf_time_spans(one.speech_regions.boxes,
                                config.input.hop_length,
                                config.input.sample_rate,
                                ex['waveform'][j].shape[0])
        hit, chance = top_speech_hit(np.asarray(one.speech_regions.values),
                                     spans, cue_span[j])
        rec['top_speech_span_hits_cue'] = hit
        speech_hits.append(hit)
        speech_chance.append(chance)
      records.append(rec)
  summary = dict(
      split=split, num_examples=num, **_settings(config, step),
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
    with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  logging.info('Explained %d examples in %.1f s (DnCShap only); cue hit '
               'rates image=%s speech=%s', num, seconds,
               summary.get('image_cue_hit_rate'),
               summary.get('speech_cue_hit_rate'))
  return summary


def explain_files(config, workdir, image_path, audio_path):
  """Explains one user pair with the dataset's preprocessing; prints it."""
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  c = config.explain
  model, variables, step = checkpointing.restore_for_inference(
      config, workdir, which='best')
  pair = input_pipeline.preprocess_pair(config, image_path, audio_path)
  e = dncshap(
      probability_fn(model, variables), pair['image'], pair['spectrogram'],
      depth=int(c.depth), mode=c.mode, context=c.context,
      key=jax.random.key(config.seed), max_batch=int(c.max_batch))
  out_dir = os.path.join(workdir, 'explain')
  os.makedirs(out_dir, exist_ok=True)
  ex_id = (f'{os.path.splitext(os.path.basename(image_path))[0]}__'
           f'{os.path.splitext(os.path.basename(audio_path))[0]}')
  rec = _write_example(config, out_dir, ex_id, e,
                       image_raw=pair['image_raw'], waveform=pair['waveform'])
  summary = dict(image=image_path, audio=audio_path, **_settings(config, step),
                 **rec)
  name = _safe_name(ex_id)
  with open(os.path.join(out_dir, f'{name}.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print(f"prediction: {rec['predicted']} (softmax {rec['probability']:.4f})")
  print(f"modality scores: image {rec['modality_scores']['image']:+.4f}  "
        f"speech {rec['modality_scores']['speech']:+.4f}")
  print(f'kept speech segments (s): {rec["segments_s"]}')
  print(f'wrote {os.path.join(out_dir, name)}.png/.npz/_kept.wav/.json')
  return summary

