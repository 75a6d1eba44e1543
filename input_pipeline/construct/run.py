"""A construction run: chunks in source order, the journal that lets an
interrupted run resume, and the outputs written when every chunk is done
(the package docstring describes the run)."""

import csv
import json
import os
import shutil
import time

import numpy as np

from input_pipeline.construct import labels
from input_pipeline.construct import sources
from input_pipeline.construct import stats as stats_lib
from input_pipeline.construct import teachers as teachers_lib
from input_pipeline.construct import workers as workers_lib
from parallelnet.core import paths
from parallelnet.core import progress as progress_lib
from parallelnet.core.classes import EMOTIONS
from parallelnet.core.errors import UserError

STATE_DIR = '.construct'  # Journal of a run in progress; removed at the end.


def _settings_record(tts, ser, ier, classes, label_from, batch_size,
                     class_map, class_merge):
  """What the run's outputs depend on; `ser_classes`/`ier_classes` give the
  order of decisions.csv's speech_probs/image_probs."""
  return dict(
      tts=tts.describe(),
      ser_teacher=ser.description if ser else None,
      ier_teacher=ier.description if ier else None,
      ser_classes=list(ser.classes) if ser else None,
      ier_classes=list(ier.classes) if ier else None,
      classes=list(classes), label_from=label_from, batch_size=batch_size,
      class_map=dict(sorted(class_map.items())), class_merge=class_merge)


def _prepare_out(out, settings):
  """Creates OUT (refusing a finished or foreign folder) and its state dir;
  returns the journal's accepted chunk records {k: record}."""
  state = os.path.join(out, STATE_DIR)
  settings_path = os.path.join(state, 'settings.json')
  if os.path.isdir(out) and os.listdir(out) and not os.path.isdir(state):
    what = ('a finished construction (manifest.csv)'
            if os.path.exists(os.path.join(out, 'manifest.csv'))
            else 'files of something else')
    raise UserError(f'--out={out} is not empty and holds {what}; choose a new '
                    'or empty folder.')
  os.makedirs(state, exist_ok=True)
  for sub in ('audio', 'images'):
    os.makedirs(os.path.join(out, sub), exist_ok=True)
  if os.path.exists(settings_path):
    with open(settings_path, encoding='utf-8') as f:
      before = json.load(f)
    if before != json.loads(json.dumps(settings)):
      diffs = [f'{k}: {before.get(k)!r} then, {settings[k]!r} now'
               for k in settings if before.get(k) != json.loads(
                   json.dumps(settings[k]))]
      raise UserError(
          f'--out={out} holds an interrupted run with other settings '
          f'({"; ".join(diffs)}); resume with the same settings, or choose a '
          'new --out.')
  else:
    paths.write_json_atomic(settings_path, settings, indent=1, sort_keys=True)
  # Left-over temporary files of an interrupted run.
  for sub in ('audio', 'images'):
    for name in os.listdir(os.path.join(out, sub)):
      if name.startswith('.') and '.tmp' in name:
        os.remove(os.path.join(out, sub, name))
  records = {}
  journal = os.path.join(state, 'chunks.jsonl')
  if os.path.exists(journal):
    with open(journal, encoding='utf-8') as f:
      for line in f:
        try:
          rec = json.loads(line)
        except ValueError:
          continue  # A line cut short by the interruption.
        records[rec['chunk']] = rec
  return records


def _fmt_probs(p):
  return '' if p is None else ' '.join(f'{x:.6f}' for x in p)


def construct_dataset(source, out, *, tts, ser_teacher=None, ier_teacher=None,
                      classes=EMOTIONS, class_map=None, class_merge='max',
                      threshold=0.5, require_agreement=False,
                      label_from='teachers',
                      skip_bad=False, workers=1, batch_size=32,
                      show_progress=True, on_chunk=None):
  """Builds the dataset folder `out` from `source` (see the package doc).

  `tts`: EspeakTTS or CommandTTS (or anything with check/synthesize/
  describe, picklable). Teachers: see the package doc; both are required with
  label_from='teachers', optional with 'source' (then only recorded).
  `class_map` ('teacher_class:target_class,...' or a dict) and
  `class_merge` ('max': the paper's rule; 'sum') say how the teachers'
  classes become the targets (labels.py).
  `on_chunk(k)` is called after chunk k is journaled (tests interrupt there).
  Returns the stats dict (as in stats.json) plus `timing` (seconds: tts and
  decode summed over rows, teachers, wall).
  """
  t_start = time.perf_counter()
  classes = tuple(classes)
  if label_from not in ('teachers', 'source'):
    raise UserError(f'--label_from={label_from!r}; use teachers or source.')
  if label_from == 'teachers' and (ser_teacher is None or ier_teacher is None):
    raise UserError('--label_from=teachers needs both --ser_teacher and '
                    '--ier_teacher.')
  if not 0.0 <= threshold <= 1.0:
    raise UserError(f'--threshold={threshold} must be in [0, 1].')
  if batch_size < 1 or workers < 1:
    raise UserError('--batch_size and --workers must be at least 1.')
  if class_merge not in labels.CLASS_MERGES:
    raise UserError(f'--class_merge={class_merge!r}; use max (the paper\'s '
                    'rule) or sum.')
  if class_map is None:
    class_map = labels.DEFAULT_CLASS_MAP
  class_map = (labels.parse_class_map(class_map) if isinstance(class_map, str)
               else dict(class_map))
  teachers, mappings = {}, {}
  for who, t, modality in (('SER teacher', ser_teacher, 'speech'),
                           ('IER teacher', ier_teacher, 'image')):
    if t is None:
      continue
    if t.modality != modality:
      raise UserError(f'The {who} ({t.description}) is a {t.modality} model; '
                      f'expected a {modality} one.')
    teachers[modality] = t
    if label_from == 'teachers':
      mappings[modality] = labels.ClassMapping(t.classes, classes, class_map,
                                               class_merge, who)
  tts.check()
  header, rows = sources.read_source(source, classes=classes,
                                     label_from=label_from)
  if not rows:
    raise UserError(f'{source}/source.csv has no rows.')
  settings = _settings_record(tts, ser_teacher, ier_teacher, classes,
                              label_from, batch_size, class_map, class_merge)
  records = _prepare_out(out, settings)
  journal_path = os.path.join(out, STATE_DIR, 'chunks.jsonl')

  chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
  prints = [sources.chunk_fingerprint(c) for c in chunks]
  todo = [k for k in range(len(chunks))
          if records.get(k, {}).get('fingerprint') != prints[k]]
  # The resume unit is the chunk: audio of unfinished chunks is redone (the
  # source rows may have changed since).
  for k in todo:
    for r in chunks[k]:
      wav = os.path.join(out, 'audio', r['_name'] + '.wav')
      if os.path.exists(wav):
        os.remove(wav)
  # Without a teacher, files are still checked to decode ('path').
  speech_spec = (teachers['speech'].input_spec if 'speech' in teachers
                 else {'kind': 'path'})
  image_spec = (teachers['image'].input_spec if 'image' in teachers
                else {'kind': 'path'})

  def tasks_of(k):
    return [dict(bad=r['_bad'], text=r.get('text', ''), tts=tts,
                 image_path=r['_image_path'],
                 audio_path=os.path.join(out, 'audio', r['_name'] + '.wav'),
                 speech_spec=speech_spec, image_spec=image_spec)
            for r in chunks[k]]

  timing = dict(tts_s=0.0, decode_s=0.0, teachers_s=0.0)
  runner = workers_lib.Runner(min(workers, max(1, len(todo) * batch_size)),
                              speech_spec)
  bar = progress_lib.Progress(sum(len(chunks[k]) for k in todo),
                              'constructing', unit='rows',
                              enabled=show_progress)
  try:
    with open(journal_path, 'a', encoding='utf-8') as journal:
      for k, results in zip(todo, runner.map_chunks(tasks_of(k) for k in todo)):
        probs = {}
        t0 = time.perf_counter()
        for modality, t in teachers.items():
          ok = [i for i, res in enumerate(results) if res['ok']]
          if not ok:
            continue
          inputs = [results[i][modality] for i in ok]
          if t.input_spec['kind'] != 'path':
            inputs = np.stack(inputs)
          p = teachers_lib.teacher_probs(
              t, inputs,
              'SER teacher' if modality == 'speech' else 'IER teacher')
          probs[modality] = dict(zip(ok, p))
        timing['teachers_s'] += time.perf_counter() - t0
        rec_rows = []
        for i, res in enumerate(results):
          timing['tts_s'] += res['tts_s']
          timing['decode_s'] += res['decode_s']
          rec_rows.append(dict(
              id=chunks[k][i]['id'], ok=res['ok'], reason=res['reason'],
              speech=[float(x) for x in probs['speech'][i]]
              if i in probs.get('speech', {}) else None,
              image=[float(x) for x in probs['image'][i]]
              if i in probs.get('image', {}) else None))
        journal.write(json.dumps(dict(chunk=k, fingerprint=prints[k],
                                      rows=rec_rows)) + '\n')
        journal.flush()
        os.fsync(journal.fileno())
        records[k] = dict(chunk=k, fingerprint=prints[k], rows=rec_rows)
        bar.update(len(results))
        if on_chunk is not None:
          on_chunk(k)
  finally:
    runner.close()
  bar.close()

  stats = _finish(source, out, header, rows, chunks, records, classes,
                  mappings, threshold, require_agreement, label_from,
                  skip_bad, settings)
  timing['wall_s'] = time.perf_counter() - t_start
  stats['timing'] = timing
  return stats


def _decide(mappings, p_image, p_speech, threshold, require_agreement):
  """(decision, label index or None, labelling modality, reason) of a pair
  from the teachers' own probabilities (labels.py's rule)."""
  votes = {'image': mappings['image'].vote(p_image),
           'speech': mappings['speech'].vote(p_speech)}
  label, decision = labels.combine(votes['image'], votes['speech'],
                                   threshold=threshold,
                                   require_agreement=require_agreement)
  who = 'image' if votes['image'][1] >= votes['speech'][1] else 'speech'
  reason = ''
  if decision == 'unmapped':
    p = p_image if who == 'image' else p_speech
    name = mappings[who].classes[int(np.argmax(p))]
    reason = (f'the {who} teacher\'s class {name!r} ({max(p):.3f}) is none '
              'of the target classes')
  return decision, label, (who if label is not None else None), reason


def _finish(source, out, header, rows, chunks, records, classes, mappings,
            threshold, require_agreement, label_from, skip_bad, settings):
  """Decisions, then decisions.csv, stats, images, manifest.csv (last)."""
  results = [rec_row for k in range(len(chunks))
             for rec_row in records[k]['rows']]
  bad = [(r['id'] or f'(line {r["_line"]})', res['reason'])
         for r, res in zip(rows, results) if not res['ok']]
  if bad and not skip_bad:
    raise sources.ConstructError(bad, os.path.join(source, 'source.csv'))
  decisions = []  # (decision, label index or None, labeller, reason)
  for r, res in zip(rows, results):
    if not res['ok']:
      decisions.append(('bad_input', None, None, res['reason']))
    elif label_from == 'source':
      decisions.append(('kept', classes.index(r['label'].strip()), 'source',
                        ''))
    else:
      decisions.append(_decide(mappings, res['image'], res['speech'],
                               threshold, require_agreement))

  with paths.atomic_open(os.path.join(out, 'decisions.csv')) as f:
    w = csv.writer(f, lineterminator='\n')
    w.writerow(['id', 'decision', 'label', 'image_probs', 'speech_probs',
                'reason'])
    for r, res, (decision, label, _, reason) in zip(rows, results, decisions):
      w.writerow([r['id'], decision, '' if label is None else classes[label],
                  _fmt_probs(res['image']), _fmt_probs(res['speech']),
                  reason])

  kept = [(r, label) for r, (d, label, _, _) in zip(rows, decisions)
          if d == 'kept']
  stats = dict(
      rows=len(rows), kept=len(kept),
      decisions={d: sum(x[0] == d for x in decisions)
                 for d in labels.DECISIONS},
      classes={c: sum(label == i for _, label in kept)
               for i, c in enumerate(classes)},
      label_modality={m: sum(x[2] == m for x in decisions)
                      for m in (('source',) if label_from == 'source'
                                else ('image', 'speech'))},
      threshold=threshold, require_agreement=require_agreement,
      settings=settings)
  paths.write_json_atomic(os.path.join(out, 'stats.json'), stats)
  stats_lib.plot_stats(stats, os.path.join(out, 'stats.png'))

  # Images of kept rows copied; audio of the others removed (the folder holds
  # exactly the dataset its manifest describes).
  keep_names = set()
  extra = [c for c in header if c not in ('id', 'image', 'label', 'text')]
  manifest_rows = []
  for r, label in kept:
    ext = os.path.splitext(r['_image_path'])[1].lower()
    image_rel = f'images/{r["_name"]}{ext}'
    dst = os.path.join(out, image_rel)
    if not os.path.exists(dst):
      with paths.atomic_open(dst, 'wb') as f, open(r['_image_path'],
                                                  'rb') as src:
        shutil.copyfileobj(src, f)
    keep_names.add(r['_name'])
    row = [r['id'], image_rel, f'audio/{r["_name"]}.wav', classes[label],
           r.get('text', '')]
    if label_from == 'teachers' and 'label' in header:
      row.append(r.get('label', ''))
    manifest_rows.append(row + [r.get(c, '') for c in extra])
  for name in sorted(os.listdir(os.path.join(out, 'audio'))):
    if os.path.splitext(name)[0] not in keep_names:
      os.remove(os.path.join(out, 'audio', name))
  columns = ['id', 'image', 'audio', 'label', 'text']
  if label_from == 'teachers' and 'label' in header:
    columns.append('source_label')
  with paths.atomic_open(os.path.join(out, 'manifest.csv')) as f:
    w = csv.writer(f, lineterminator='\n')
    w.writerow(columns + extra)
    w.writerows(manifest_rows)
  shutil.rmtree(os.path.join(out, STATE_DIR))
  return stats
