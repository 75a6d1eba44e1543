"""Gathers a workdir's files into the sections of the run report.

Every section is drawn from files alone. A part that is absent becomes one
line saying which command makes it; a file that is damaged (JSON that does
not parse, a media file that is gone) is named in the page's "Problems" box
and in the log, and the rest of the page is drawn regardless.
"""

import csv
import datetime
import html
import io
import importlib.util
import json
import math
import os
import re
import string
import time
from urllib import parse

from absl import logging
import numpy as np

from configs import parallelnet as paper_config
from parallelnet.core import paths
from parallelnet.core import plotting
from parallelnet.core.errors import UserError
from parallelnet import history
from parallelnet import metrics as metrics_lib

REPORT_DIR = 'report'
RUNS_FILE = 'runs.jsonl'  # One JSON line per main.py run (mode, config, time).
_HERE = os.path.dirname(os.path.abspath(__file__))
_MODALITIES = ('image', 'speech')


def _esc(x):
  return html.escape(str(x), quote=True)


def _fmt(v, digits=4):
  if v is None:
    return '–'
  if isinstance(v, float):
    return 'nan' if math.isnan(v) else f'{v:.{digits}g}'
  return str(v)


def _href(rel):
  return parse.quote(rel.replace(os.sep, '/'))


def _table(header, rows, cls=''):
  head = ''.join(f'<th>{_esc(h)}</th>' for h in header)
  body = ''.join('<tr>' + ''.join(
      c if isinstance(c, _Raw) else f'<td>{_esc(c)}</td>' for c in row)
                 + '</tr>' for row in rows)
  return (f'<table class="{cls}"><thead><tr>{head}</tr></thead>'
          f'<tbody>{body}</tbody></table>')


class _Raw(str):
  """A cell already written as HTML (`<td ...>...</td>`)."""


class _Workdir:
  """The workdir's files, read once, with the problems and gaps met."""

  def __init__(self, workdir):
    self.workdir = paths.abspath(workdir)
    self.out = os.path.join(self.workdir, REPORT_DIR)
    self.problems = []  # Damaged or missing files: named in page and log.
    self.missing = []  # (part, command that makes it).

  def path(self, *parts):
    return os.path.join(self.workdir, *parts)

  def rel(self, *parts):
    """`parts` relative to report/ (links in the page)."""
    return _href('/'.join(('..',) + parts))

  def problem(self, text):
    logging.warning('report: %s', text)
    self.problems.append(text)

  def json(self, *parts):
    """The parsed JSON file, or None when absent or damaged (a problem)."""
    p = self.path(*parts)
    if not paths.isfile(p):
      return None
    try:
      return json.loads(paths.read_text(p))
    except (OSError, ValueError) as e:
      self.problem(f'{p}: damaged JSON ({e}); its section is left out.')
      return None

  def jsonl(self, name):
    p = self.path(name)
    out = []
    if not paths.isfile(p):
      return out
    text = paths.read_bytes(p).decode('utf-8', errors='replace')
    for n, line in enumerate(text.splitlines(), 1):
      if line.strip():
        try:
          out.append(json.loads(line))
        except ValueError as e:
          self.problem(f'{p}:{n}: damaged JSON line ({e}); skipped.')
    return out

  def command(self, mode):
    """The main.py command line for `mode` on this workdir."""
    cfg = '<config file>'
    for run in reversed(self.runs):
      if run.get('config_file'):
        cfg = run['config_file']
        break
    extra = '' if mode == 'train' else f' --mode={mode}'
    return f'python main.py --config={cfg} --workdir={self.workdir}{extra}'


# ----------------------------------------------------------------- run --


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = json.loads(json.dumps(v))  # Tuples as lists.
  return out


def _config_file_defaults(spec):
  """get_config(arg).to_dict() of a config file given as path[:arg], or
  the config of a config.json (local or a URL)."""
  path, _, arg = paths.split_spec(spec)
  if path.endswith('.json'):
    return paper_config.config_from_json(path).to_dict()
  module_spec = importlib.util.spec_from_file_location('_report_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None).to_dict()


def _run_section(w):
  config = w.json('config.json')
  parts = []
  if config is None:
    w.missing.append(('the run\'s config (config.json)', w.command('train')))
    config = {}
  dataset = config.get('dataset', {})
  model = config.get('model', {})
  facts = [('workdir', w.workdir),
           ('dataset', dataset.get('name', '?')),
           ('classes', ', '.join(dataset.get('classes', []))),
           ('model', f"{model.get('name', '?')}: modalities "
                     f"{model.get('modalities', '?')}, crossing "
                     f"{model.get('crossing', '?')}, N2 "
                     f"{model.get('speech_backbone', '?')} / "
                     f"{model.get('image_backbone', '?')}")]
  train_runs = [r for r in w.runs if r.get('splits')]
  if train_runs:
    facts.append(('split sizes', ', '.join(
        f'{k} {v}' for k, v in train_runs[-1]['splits'].items())))
  best = w.path('checkpoints', 'best')
  steps = sorted(int(s) for s in paths.listdir(best) if s.isdigit()) if (
      paths.isdir(best)) else []
  if steps:
    facts.append(('checkpoint', f'best at step {steps[-1]}'))
  else:
    w.missing.append(('a checkpoint (checkpoints/best)', w.command('train')))
  if w.history:
    seconds = sum(r.get('seconds', 0.0) for r in w.history)
    facts.append(('training', f'{len(w.history)} epochs, '
                              f'{seconds:.1f} s of epochs, last epoch ended '
                              f'{_when(w.history[-1].get("time"))}'))
  parts.append(_table(('', ''), facts, 'facts'))
  if w.runs:
    parts.append('<h3>Runs of main.py on this workdir</h3>' + _table(
        ('mode', 'config', 'overrides', 'started', 'took'),
        [(r.get('mode', '?'), r.get('config_file', '?'),
          ' '.join(f'{k}={v}' for k, v in (r.get('overrides') or {}).items()),
          _when(r.get('started')), f"{r.get('seconds', 0):.1f} s")
         for r in w.runs]))
  if config:
    parts.append(_config_diff(w, config, paper_config.get_config().to_dict()))
  return ''.join(parts)


def _when(t):
  if not isinstance(t, (int, float)):
    return '?'
  return datetime.datetime.fromtimestamp(t).strftime('%Y-%m-%d %H:%M:%S')


def _config_diff(w, config, paper):
  run = _flatten(config)
  paper = _flatten(paper)
  spec = next((r['config_file'] for r in reversed(w.runs)
               if r.get('config_file')), None)
  file_defaults, note = None, ''
  if spec:
    try:
      file_defaults = _flatten(_config_file_defaults(spec))
    except Exception as e:  # pylint: disable=broad-except
      note = (f'<p class="note">The config file {_esc(spec)} could not be '
              f'loaded ({_esc(type(e).__name__)}: {_esc(e)}); compared with '
              f'configs/parallelnet.py only.</p>')
  rows = []
  for key in sorted(run):
    ref = [paper.get(key)] + ([file_defaults.get(key)] if file_defaults else [])
    if any(run[key] != r for r in ref):
      rows.append((key, json.dumps(run[key]), json.dumps(paper.get(key)))
                  + ((json.dumps(file_defaults.get(key)),)
                     if file_defaults else ()))
  header = ('field', 'this run', 'configs/parallelnet.py') + (
      (f'{spec} defaults',) if file_defaults else ())
  return ('<h3>Config: the fields that differ from the defaults</h3>' + note
          + (_table(header, rows, 'config') if rows else
             '<p>Every field is the default.</p>'))


# -------------------------------------------------------------- curves --


def _curves_section(w):
  if not w.history:
    w.missing.append(('training curves (history.jsonl, written per epoch by '
                      'training)', w.command('train')))
    return None
  plt = plotting.pyplot()
  epochs = [r['epoch'] for r in w.history]
  panels = [('loss', ('train/loss', 'val/loss')),
            ('accuracy', ('train/accuracy', 'val/accuracy')),
            ('macro-F1 / kappa', ('val/macro_f1', 'val/cohen_kappa')),
            ('learning rate', ('lr',))]
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3))
  for ax, (title, keys) in zip(axes, panels):
    for k in keys:
      ys = [r.get(k) for r in w.history]
      ys = [np.nan if y is None else y for y in ys]
      ax.plot(epochs, ys, marker='o', label=k)
    ax.set_title(title)
    ax.set_xlabel('epoch')
    ax.legend(fontsize=8)
    if title == 'learning rate':
      ax.set_yscale('log')
  fig.tight_layout()
  plotting.save(fig, os.path.join(w.out, 'curves.png'), dpi=90)
  keys = ('train/loss', 'train/accuracy', 'val/loss', 'val/accuracy',
          'val/macro_f1', 'lr', 'seconds')
  table = _table(('epoch', 'step') + keys, [
      (r['epoch'], r.get('step', '?')) + tuple(_fmt(r.get(k)) for k in keys)
      for r in w.history])
  return ('<img class="chart" src="curves.png" alt="training curves">'
          f'<details><summary>per-epoch values</summary>{table}</details>')


# ------------------------------------------------------------- metrics --


def _cm_table(cm, classes, normalise):
  cm = np.asarray(cm, np.float64)
  shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalise else cm
  peak = max(float(shown.max()), 1e-12)
  rows = []
  for i, name in enumerate(classes):
    cells = []
    for j in range(len(classes)):
      a = shown[i, j] / peak
      text = f'{shown[i, j]:.2f}' if normalise else f'{int(cm[i, j])}'
      cells.append(_Raw(
          f'<td class="cm" style="background:rgba(33,102,172,{a:.2f});'
          f'color:{"#fff" if a > 0.5 else "#000"}">{text}</td>'))
    rows.append([name] + cells)
  return _table(['true \\ predicted'] + list(classes), rows, 'cm')


def _metrics_section(w):
  m = w.json('eval_metrics.json')
  parts = []
  cv = w.json('cv_metrics.json')
  if cv:
    parts.append('<h3>Cross-validation</h3>' + _table(
        ('metric', 'mean', 'std'),
        [(k, _fmt(cv[k]['mean']), _fmt(cv[k]['std']))
         for k in ('accuracy', 'macro_f1', 'cohen_kappa') if k in cv]))
  if m is None:
    w.missing.append(('test metrics (eval_metrics.json)', w.command('eval')))
    return ''.join(parts) or None
  try:
    cm = np.asarray(m['confusion_matrix'], np.int64)
    classes = list(m.get('per_class') or w.classes)
    s = metrics_lib.summarize(cm, classes)
  except (KeyError, TypeError, ValueError) as e:
    w.problem(f'{w.path("eval_metrics.json")}: no usable confusion matrix '
              f'({e}); test metrics left out.')
    return ''.join(parts) or None
  parts.insert(0, _table(
      ('split', 'checkpoint step', 'examples', 'accuracy', 'macro-F1',
       "Cohen's kappa"),
      [(m.get('split', '?'), m.get('checkpoint_step', '?'), s['num_examples'],
        _fmt(s['accuracy']), _fmt(s['macro_f1']), _fmt(s['cohen_kappa']))],
      'headline'))
  parts.append('<h3>Per class</h3>' + _table(
      ('class', 'precision', 'recall', 'F1', 'support'),
      [(c, _fmt(v['precision']), _fmt(v['recall']), _fmt(v['f1']),
        v['support']) for c, v in s['per_class'].items()]))
  parts.append('<div class="row"><div><h3>Confusion matrix (counts)</h3>'
               + _cm_table(cm, classes, False) + '</div><div><h3>Row-'
               'normalised (recall per true class)</h3>'
               + _cm_table(cm, classes, True) + '</div></div>')
  return ''.join(parts)


# --------------------------------------------------------------- study --


def _study_section(w):
  p = w.path('study.csv')
  if not paths.isfile(p):
    return None
  try:
    rows = list(csv.DictReader(io.StringIO(paths.read_text(p), newline='')))
  except (OSError, csv.Error, UnicodeDecodeError) as e:
    w.problem(f'{p}: unreadable CSV ({e}); the study table is left out.')
    return None
  if not rows:
    return '<p>study.csv has no rows.</p>'
  header = list(rows[0])
  body = []
  for r in rows:
    folder = _row_folder(r.get('row', ''))
    cells = [(_Raw(f'<td><a href="{w.rel(folder, REPORT_DIR, "index.html")}">'
                   f'{_esc(v)}</a></td>')
              if k == 'row' and folder and paths.isdir(w.path(folder))
              else _fmt(_num(v))) for k, v in r.items()]
    body.append(cells)
  out = _table(header, body, 'study')
  if paths.isfile(w.path('study.png')):
    out += f'<img class="chart" src="{w.rel("study.png")}" alt="study">'
  return out


def _row_folder(row):
  """The row's folder (parallelnet.study.row_folder), or '' if none."""
  folder = str(row).replace('=', '_')
  return folder if re.fullmatch(r'[A-Za-z0-9_.-]+', folder) and folder not in (
      '.', '..') else ''


def _num(v):
  try:
    return float(v) if '.' in str(v) else int(v)
  except ValueError:
    return v


# -------------------------------------------------------- explanations --


def _examples(w):
  """(summary, examples) from explain/summary.json, or (None, [])."""
  s = w.json('explain', 'summary.json')
  if s is None:
    if not paths.isfile(w.path('explain', 'summary.json')):
      w.missing.append(('explanations (explain/summary.json)',
                        w.command('explain')))
    return None, []
  examples = s.get('examples') if isinstance(s, dict) else None
  if not isinstance(examples, list):
    w.problem(f'{w.path("explain", "summary.json")}: no list of examples; '
              'the explanations are left out.')
    return None, []
  return s, [e for e in examples if isinstance(e, dict) and 'id' in e]


def _file_name(e):
  """The file stem explain/run.py gave an example (its `file` field; older
  summaries: the id with unsafe characters replaced)."""
  if e.get('file'):
    return str(e['file'])
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', str(e['id'])).strip('_') or 'example'


def _shares(e):
  """(image score, speech score, image share of |score|) or Nones."""
  ms = e.get('modality_scores') or {}
  img, sp = ms.get('image'), ms.get('speech')
  if img is None or sp is None:
    return img, sp, None
  total = abs(img) + abs(sp)
  return img, sp, (abs(img) / total if total > 0 else 0.5)


def _media(w, rel_in_workdir, tag):
  """The HTML for one media file, or a line naming it as missing."""
  if not paths.isfile(w.path(rel_in_workdir)):
    w.problem(f'{w.path(rel_in_workdir)}: missing media file.')
    return f'<p class="missing">missing: {_esc(rel_in_workdir)}</p>'
  src = w.rel(rel_in_workdir)
  if tag == 'img':
    return f'<img loading="lazy" decoding="async" src="{src}" alt="figure">'
  return (f'<audio controls preload="none"><source src="{src}" '
          'type="audio/wav"></audio>')


def _card(w, e, used):
  name = _file_name(e)
  img, sp, share = _shares(e)
  p, v0 = e.get('probability'), e.get('baseline_probability')
  true, pred = e.get('true'), e.get('predicted', '?')
  correct = e.get('correct', None if true is None else true == pred)
  attrs = {'data-example-id': e['id'], 'data-true': true or '',
           'data-pred': pred,
           'data-correct': '' if correct is None else int(bool(correct)),
           'data-p': _fmt(p, 6), 'data-gain': _fmt(
               None if p is None or v0 is None else p - v0, 6),
           'data-image-share': '' if share is None else f'{share:.4f}'}
  attr = ' '.join(f'{k}="{_esc(v)}"' for k, v in attrs.items())
  verdict = ('' if correct is None else
             '<span class="ok">right</span>' if correct else
             '<span class="bad">wrong</span>')
  rows = [('p (predicted class)', _fmt(p)), ('v(∅) baseline', _fmt(v0)),
          ('p − v(∅)', _fmt(None if p is None or v0 is None else p - v0))]
  for m, val in zip(_MODALITIES, (img, sp)):
    if m in used:
      rows.append((f'{m} score', _fmt(val)))
  if share is not None:
    rows.append(('image share of |scores|', f'{share:.2f}'))
  for m in _MODALITIES:
    key = f'top_{m}_{"region" if m == "image" else "span"}_hits_cue'
    if key in e:
      rows.append((f'top {m} region on the cue', 'yes' if e[key] else 'no'))
  audio = ''
  if 'speech' in used:
    clip = (_media(w, os.path.join('explain', f'{name}.wav'), 'audio')
            if paths.isfile(w.path('explain', f'{name}.wav')) else
            '<p class="note">clip not saved (explanations older than the '
            'report; rerun --mode=explain)</p>')
    # Players are made when the card nears the viewport (report.js): a
    # thousand <audio> elements at once take seconds to lay out.
    audio = ('<div class="audio"><template><span>clip</span>' + clip +
             '<span>kept speech</span>' +
             _media(w, os.path.join('explain', f'{name}_kept.wav'), 'audio')
             + '</template></div>')
    segs = e.get('segments_s') or []
    rows.append(('kept segments (s)', ', '.join(
        f'{a:.2f}–{b:.2f}' for a, b in segs) or 'none'))
  return (f'<article class="card" {attr}><h3>{_esc(e["id"])} '
          f'<small>true {_esc(true or "?")} → predicted {_esc(pred)}</small> '
          f'{verdict}</h3>'
          + _media(w, os.path.join('explain', f'{name}.png'), 'img') + audio
          + _table(('', ''), rows, 'facts') + '</article>')


def _used(w, examples):
  modalities = (w.config.get('model') or {}).get('modalities', 'both')
  if modalities in _MODALITIES:
    return (modalities,)
  if examples:  # Without config.json: what the scores name.
    seen = set().union(*((e.get('modality_scores') or {}).keys()
                         for e in examples))
    if seen and seen <= set(_MODALITIES):
      return tuple(m for m in _MODALITIES if m in seen)
  return _MODALITIES


def _options(values):
  return ''.join(f'<option value="{_esc(v)}">{_esc(v)}</option>'
                 for v in values)


def _explanations_section(w, summary, examples, used):
  if summary is None:
    return None
  classes = [c for c in w.classes if any(
      c in (e.get('true'), e.get('predicted')) for e in examples)] or sorted(
          {e.get('predicted', '?') for e in examples})
  share = ('<label>modality <select id="f-share"><option value="">any'
           '</option><option value="image">image carries more</option>'
           '<option value="speech">speech carries more</option></select>'
           '</label>') if len(used) == 2 else ''
  sorts = [('', 'as explained'), ('p', 'p, high first'),
           ('gain', 'p − v(∅), high first')]
  if len(used) == 2:
    sorts += [('image', 'image share, high first'),
              ('speech', 'speech share, high first')]
  controls = (
      '<form id="filters" class="filters" onsubmit="return false">'
      f'<label>true <select id="f-true"><option value="">any</option>'
      f'{_options(classes)}</select></label>'
      f'<label>predicted <select id="f-pred"><option value="">any</option>'
      f'{_options(classes)}</select></label>'
      '<label>outcome <select id="f-correct"><option value="">any</option>'
      '<option value="right">right</option><option value="wrong">wrong'
      '</option></select></label>' + share +
      '<label>sort <select id="f-sort">' + ''.join(
          f'<option value="{k}">{_esc(t)}</option>' for k, t in sorts) +
      '</select></label><span id="shown"></span></form>')
  settings = ', '.join(f'{k} {summary[k]}' for k in (
      'split', 'mode', 'depth', 'context', 'baseline', 'checkpoint_step',
      'evaluations_per_example') if k in summary)
  cards = ''.join(_card(w, e, used) for e in examples)
  return (f'<p>{len(examples)} explained examples ({_esc(settings)}). Each '
          'figure shows the image with its region scores and the speech with '
          'its time-band scores; green pushes towards the predicted class, '
          f'purple away.</p>{controls}<div id="cards">{cards}</div>')


def _aggregates_section(w, summary, examples, used):
  if summary is None or not examples:
    return None
  parts = []
  if len(used) == 2:
    per = {}
    for e in examples:
      img, sp, share = _shares(e)
      if share is not None:
        per.setdefault(e.get('true') or e.get('predicted', '?'), []).append(
            (img, sp, share))
    order = [c for c in w.classes if c in per] + sorted(
        set(per) - set(w.classes))
    rows = [(c, len(per[c]), _fmt(np.mean([x[0] for x in per[c]])),
             _fmt(np.mean([x[1] for x in per[c]])),
             f'{np.mean([x[2] for x in per[c]]):.2f}') for c in order]
    parts.append('<h3>Modality share per true class</h3>' + _table(
        ('class', 'examples', 'mean image score', 'mean speech score',
         'mean image share of |scores|'), rows))
    if order:
      plt = plotting.pyplot()
      fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(order), 2.8))
      img = np.array([np.mean([x[2] for x in per[c]]) for c in order])
      ax.bar(order, img, label='image', color='#5aae61')
      ax.bar(order, 1 - img, bottom=img, label='speech', color='#9970ab')
      ax.set_ylim(0, 1)
      ax.set_ylabel('share of |scores|')
      ax.legend(fontsize=8, loc='upper right')
      fig.tight_layout()
      plotting.save(fig, os.path.join(w.out, 'modality_share.png'), dpi=90)
      parts.append('<img class="chart" src="modality_share.png" '
                   'alt="modality share per class">')
  cue_rows = []
  for m in used:
    key = f'{m}_cue_hit_rate'
    if key in summary:
      flag = f'top_{m}_{"region" if m == "image" else "span"}_hits_cue'
      per_class = {}
      for e in examples:
        if flag in e:
          per_class.setdefault(e.get('true', '?'), []).append(bool(e[flag]))
      cue_rows.append((m, _fmt(summary[key], 3),
                       _fmt(summary.get(f'{m}_cue_chance_rate'), 3),
                       summary.get(f'{m}_cue_examples', '?'),
                       ', '.join(f'{c} {np.mean(v):.2f}'
                                 for c, v in sorted(per_class.items()))))
  if cue_rows:
    parts.append('<h3>Planted cues: how often the top region hits them</h3>'
                 + _table(('modality', 'hit rate', 'chance', 'examples',
                           'per true class'), cue_rows))
  return ''.join(parts) or None


# ---------------------------------------------------------------- page --


def _section(w, sid, title, fn, *args):
  """One <section>; an error inside becomes a problem, not a traceback."""
  try:
    body = fn(w, *args)
  except Exception as e:  # pylint: disable=broad-except
    w.problem(f'section "{title}" could not be drawn ({type(e).__name__}: '
              f'{e}).')
    body = None
  if body is None:
    return ''
  return f'<section id="{sid}"><h2>{_esc(title)}</h2>{body}</section>'


def _asset(name):
  with open(os.path.join(_HERE, name), encoding='utf-8') as f:
    return f.read()


def write_report(workdir: str, *, run: dict | None = None,
                 rows: bool = True) -> str:
  """Writes `<workdir>/report/index.html`; returns its path.

  run: a record of the main.py run that calls this (mode, config_file,
    overrides, started, seconds, splits), appended to `<workdir>/runs.jsonl`
    first.
  rows: with a study.csv, first write each row folder's own report.
  """
  t0 = time.time()
  w = _Workdir(workdir)
  if not paths.isdir(w.workdir):
    raise UserError(f'--workdir={workdir}: no such folder, so nothing to '
                    'report on.')
  paths.makedirs(w.out)
  if run is not None:
    paths.append_text(w.path(RUNS_FILE), json.dumps(run, default=str) + '\n')
  if rows and paths.isfile(w.path('study.csv')):
    _row_reports(w)
  w.runs = w.jsonl(RUNS_FILE)
  w.config = w.json('config.json') or {}
  w.classes = list((w.config.get('dataset') or {}).get('classes') or [])
  w.history, problems = history.read(w.workdir)
  for p in problems:
    w.problem(p)
  summary, examples = _examples(w)
  used = _used(w, examples)
  sections = [
      _section(w, 'run', 'The run', _run_section),
      _section(w, 'curves', 'Training curves', _curves_section),
      _section(w, 'metrics', 'Test metrics', _metrics_section),
      _section(w, 'study', 'Study', _study_section),
      _section(w, 'aggregates', 'Explanations: aggregates',
               _aggregates_section, summary, examples, used),
      _section(w, 'explanations', 'Explanations', _explanations_section,
               summary, examples, used),
  ]
  notes = ''
  if w.missing:
    notes += ('<section id="missing"><h2>Not in this workdir yet</h2><ul>'
              + ''.join(f'<li>No {_esc(part)}: <code>{_esc(cmd)}</code></li>'
                        for part, cmd in w.missing) + '</ul></section>')
  if w.problems:
    notes += ('<section id="problems"><h2>Problems</h2><ul>'
              + ''.join(f'<li>{_esc(p)}</li>' for p in w.problems)
              + '</ul></section>')
  nav = ''.join(f'<a href="#{sid}">{t}</a>' for sid, t in (
      ('run', 'run'), ('curves', 'curves'), ('metrics', 'metrics'),
      ('study', 'study'), ('aggregates', 'aggregates'),
      ('explanations', 'explanations')) if f'id="{sid}"' in ''.join(sections))
  page = string.Template(_asset('template.html')).substitute(
      title=_esc(f'ParallelNet run: {os.path.basename(w.workdir.rstrip("/"))}'),
      css=_asset('report.css'), js=_asset('report.js'), nav=nav,
      generated=_esc(datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')),
      notes=notes, body=''.join(sections))
  out = os.path.join(w.out, 'index.html')
  paths.write_bytes_atomic(out, page.encode('utf-8'))
  logging.info('Wrote the run report %s in %.1f s (%d problems, %d parts '
               'missing).', out, time.time() - t0, len(w.problems),
               len(w.missing))
  return out


def _row_reports(w):
  try:
    names = [r.get('row', '') for r in csv.DictReader(
        io.StringIO(paths.read_text(w.path('study.csv')), newline=''))]
  except (OSError, csv.Error, UnicodeDecodeError):
    return  # The study section names the problem.
  for name in names:
    folder = _row_folder(name)
    if folder and paths.isdir(w.path(folder)):
      write_report(w.path(folder), rows=False)
