"""`--mode=study`: the paper's Table 2, Table 3 and N2 sweep (§4.3) as one run.

`config.study.rows` is a comma-separated list of row names. A row is a
variant of the config file the run was given, written as it would be after
the colon of --config:
  proposed                 the model as configured (no variant).
  ser_only, ier_only       Table 2's unimodal rows.
  baseline1 ... baseline3  Table 2's crossing baselines (EfficientNet-B0 N2).
  sentiment                Table 3: B-T4SA, three sentiment classes; its data
                           folder is config.study.sentiment_dir (else
                           dataset.manual_dir).
  n2=<backbone>            §4.3.2's sweep: <backbone> in both N2 trunks.

Row config = the config file's get_config(<variants after the colon>,<row>)
with the command line's --config.* overrides applied again on top, so
`--config=configs/demo.py:runlocal --config.train.num_epochs=3` trains every
row at runlocal size for 3 epochs. (Overrides win over the row: overriding
model.crossing would undo the baselines.)

Each row trains and evaluates in `<workdir>/<row folder>/` exactly as
--mode=train (or, with config.study.cv, --mode=cv) would there; explanations
are not run (use --mode=explain on a row's folder). Row folders are the row
names with '=' replaced by '_' (`n2=vgg16` -> `n2_vgg16`). A row whose
eval_metrics.json (cv_metrics.json with cv) exists is reused, not retrained;
an interrupted row resumes from its checkpoint. A row folder trained with
another config (its config.json differs from the row's config now in a field
that changes the result, `changed_fields`) stops the study naming the
fields, before anything trains; with config.study.retrain_changed the folder
is moved aside to <row folder>.stale[N] and the row retrained. Every row name
is checked (and every row config built) before anything trains.

The paper's Table 2 reports validation accuracy; its Table 3 and our
eval_metrics.json the test split. Each row therefore gets both: the best
checkpoint's test metrics (eval_metrics.json) and its validation accuracy and
macro-F1 (eval_metrics_validation.json, from `train.evaluate`; per fold with
cv).

Outputs in `<workdir>/`: study.csv (rows in the given order; row,
test_accuracy, test_macro_f1, test_cohen_kappa, val_accuracy, val_macro_f1,
trainable_params, frozen_params, train_seconds; with cv also <column>_std
over folds after the metric columns; train_seconds is the wall time of the
call that finished the row, kept in <row>/study_row.json: an interrupted row
counts only its last call, a row trained by --mode=train has none; without
cv also interaction, share_image, share_speech: the mean modality
interaction v(both) - v(image) - v(speech) + v(∅) of the row's best
checkpoint on its test split (the predicted class's probability, an absent
modality all zeros as in Algorithm 1; 0 for a model additive in its
modalities) and each modality's Shapley share of p - v(∅), see
`modality_interaction`), study.md (a Markdown table laid out like the
paper's Table 2: its rows in Table 2's order, then the N2 sweep and the
sentiment row; the header names each column's split) and study.png (test
accuracy and macro-F1 per row; error bars are the std over folds with cv).
With config.study.robustness, each row's best checkpoint is also scored
with the image and with the speech missing (--mode=robustness's no_image
and no_speech, written to <row>/robustness.csv), and study.csv gains the
columns no_image_accuracy and no_speech_accuracy.
"""

import copy
import csv
import functools
import importlib.util
import json
import math
import os
import re
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import parallelnet as default_config
import input_pipeline
from parallelnet.core import paths
from parallelnet.core import plotting
from parallelnet.core.errors import UserError
from parallelnet import checkpointing
from parallelnet import mesh as mesh_lib
from parallelnet import models
from parallelnet import robustness
from parallelnet import summary
from parallelnet.models import scaling as model_scaling
from parallelnet import train

FIXED_ROWS = ('proposed', 'ser_only', 'ier_only', 'baseline1', 'baseline2',
              'baseline3', 'sentiment')
SWEEP_PREFIX = 'n2='
ROBUSTNESS = ('no_image', 'no_speech')  # Conditions of config.study.robustness.
METRICS = train.METRIC_KEYS  # accuracy, macro_f1, cohen_kappa.
VAL_METRICS = ('accuracy', 'macro_f1')  # Table 2 reports validation accuracy.
# Config fields that do not change a row's numbers: where the data are
# cached, how often training logs or checkpoints, the eval batch (padded and
# masked) and the other modes' settings.
NOT_RESULT_FIELDS = ('explain.', 'study.', 'predict.', 'dataset.data_dir',
                     'train.log_every_steps', 'train.checkpoint_every_steps',
                     'train.eval_batch_size')

# The paper's names for the rows (Table 2, Table 3), and Table 2's grouping.
_LABELS = {'proposed': "Proposed ('ParallelNet')", 'ser_only': 'SER Only',
           'ier_only': 'IER Only', 'baseline1': 'Baseline 1',
           'baseline2': 'Baseline 2', 'baseline3': 'Baseline 3',
           'sentiment': 'ParallelNet, sentiment (B-T4SA, 3 classes; Table 3)'}
_GROUPS = (('ser_only', 'ier_only'), ('baseline1', 'baseline2', 'baseline3'),
           ('proposed',), (SWEEP_PREFIX,), ('sentiment',))


def parse_rows(text: str) -> list[str]:
  """Row names from config.study.rows; UserError for unknown or repeated
  names (n2=<backbone> must name a registered backbone)."""
  rows = [r.strip() for r in str(text).split(',') if r.strip()]
  if not rows:
    raise UserError('config.study.rows is empty; give comma-separated rows, '
                    f'e.g. {",".join(FIXED_ROWS[:3])}.')
  known = models.known_backbones()
  for row in rows:
    if row.startswith(SWEEP_PREFIX):
      backbone = row[len(SWEEP_PREFIX):]
      if backbone not in known:
        raise UserError(
            f'config.study.rows: {row!r} names no known backbone; known: '
            f'{", ".join(known)} (e.g. n2=vgg16).')
    elif row not in FIXED_ROWS:
      raise UserError(
          f'config.study.rows: unknown row {row!r}; known rows: '
          f'{", ".join(FIXED_ROWS)}, n2=<backbone>.')
  folders = [row_folder(r) for r in rows]
  for f in folders:
    if folders.count(f) > 1:
      raise UserError(f'config.study.rows lists {f!r} twice ({text!r}).')
  return rows


def row_folder(row: str) -> str:
  """The row's folder under the workdir: `n2=vgg16` -> `n2_vgg16`."""
  folder = row.replace('=', '_')
  if not re.fullmatch(r'[A-Za-z0-9_.-]+', folder) or folder in ('.', '..'):
    raise UserError(f'config.study.rows: {row!r} does not make a folder name.')
  return folder


def row_label(row: str) -> str:
  if row.startswith(SWEEP_PREFIX):
    return f'N2 = {row[len(SWEEP_PREFIX):]} (both trunks)'
  return _LABELS[row]


def _load_config_module(path: str):
  """The config file at `path` as a module (what ml_collections does)."""
  if not os.path.isfile(path):
    raise UserError(f'Config file {path!r} does not exist.')
  name = f'_study_config_{abs(hash(os.path.abspath(path)))}'
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def row_configs(config: ml_collections.ConfigDict, config_file: str,
                overrides: dict | None, rows: list[str]
                ) -> dict[str, ml_collections.ConfigDict]:
  """{row: config}: get_config(base variants + row) + `overrides`.

  `config_file` is --config's value ('path/to/file.py[:variants]') and
  `overrides` the flat {'a.b': value} of the --config.a.b flags
  (config_flags' `override_values`). The base (no row) rebuilt the same way
  must equal `config`, else the reconstruction is not trustworthy and this
  raises.
  """
  path, _, base = config_file.partition(':')
  module = _load_config_module(path)
  overrides = dict(overrides or {})

  def build(row):
    arg = ','.join(v for v in (base, '' if row == 'proposed' else row) if v)
    try:
      c = module.get_config(arg or None)
    except ValueError as e:
      raise UserError(f'config.study.rows: row {row!r} is not a variant of '
                      f'{path} ({e})') from e
    c.update_from_flattened_dict(overrides)
    return c

  rebuilt = build('proposed')
  if rebuilt.to_dict() != config.to_dict():
    a, b = _flat(rebuilt), _flat(config)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    raise ValueError(
        f'Rebuilding the config from {config_file} and the overrides '
        f'{sorted(overrides)} does not give the run\'s config (differs in '
        f'{diff[:5]}); the study cannot derive its rows from it.')
  out = {row: build(row) for row in rows}
  for row, c in out.items():
    if row == 'sentiment':
      with c.unlocked():
        c.dataset.manual_dir = (c.study.sentiment_dir
                                or c.dataset.manual_dir)
      if not c.dataset.manual_dir:
        raise UserError(
            'The sentiment row needs a b_t4sa manifest folder (Table 3): '
            'set --config.study.sentiment_dir=/path/to/folder.')
  return out


def _flat(c):
  return _flat_dict(c.to_dict())


def _flat_dict(d):
  out = {}

  def walk(prefix, d):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(f'{prefix}{k}.', v)
      else:
        out[prefix + k] = v
  walk('', d)
  return out


_ABSENT = '<absent>'


def changed_fields(saved: dict, config, ignore=()) -> list[tuple]:
  """[(field, saved value, value now)] for the fields that change the
  result (all but NOT_RESULT_FIELDS and `ignore`) and differ between a
  row's saved config.json (`saved`) and `config`. A field the saved file
  lacks (added to the code after that run) counts as
  configs/parallelnet.py's default, as checkpointing.read_config reads it."""
  now = _flat_dict(json.loads(config.to_json()))
  old = _flat_dict(saved)
  default = _flat_dict(json.loads(default_config.get_config().to_json()))
  skip = NOT_RESULT_FIELDS + tuple(ignore)
  out = []
  for k in sorted(set(now) | set(old)):
    if k.startswith(skip):
      continue
    was = old.get(k, default.get(k, _ABSENT))
    if was != now.get(k, _ABSENT):
      out.append((k, was, now.get(k, _ABSENT)))
  return out


def _saved_config_path(row_dir, cv):
  """The config.json a row folder's training wrote (cv: fold 0's)."""
  return os.path.join(row_dir, 'fold_0' if cv else '', 'config.json')


def check_row_folder(row: str, config, row_dir: str, cv: bool) -> bool:
  """False when `row_dir` holds nothing or a run of `config`; True when it
  holds a run of another config and config.study.retrain_changed allows
  retraining it; UserError naming the differing fields otherwise."""
  path = _saved_config_path(row_dir, cv)
  if not paths.exists(path):
    return False
  diff = changed_fields(_read_json(path), config,
                        ignore=('dataset.fold',) if cv else ())
  if not diff:
    return False
  if config.study.get('retrain_changed', False):
    logging.warning('Study row %s: %s was trained with another config '
                    '(%s); retraining it.', row, row_dir,
                    ', '.join(k for k, *_ in diff))
    return True
  shown = '; '.join(f'{k}: {a!r} then, {b!r} now' for k, a, b in diff[:6])
  more = f' (and {len(diff) - 6} more)' if len(diff) > 6 else ''
  raise UserError(
      f'Study row {row}: {row_dir} was trained with another config ({path}): '
      f'{shown}{more}. Its numbers are not this row\'s. Use another '
      f'--workdir, or set --config.study.retrain_changed=True to move the '
      f'folder aside (to {os.path.basename(row_dir)}.stale) and retrain.')


def _move_aside(row_dir):
  """Renames a stale row folder to <folder>.stale (or .staleN if taken)."""
  if jax.process_index() == 0:
    target, n = f'{row_dir}.stale', 1
    while paths.exists(target):
      n += 1
      target = f'{row_dir}.stale{n}'
    paths.move(row_dir, target)
    logging.info('Moved %s to %s.', row_dir, target)
  mesh_lib.allgather_json(None)  # Every process waits for the rename.


def trainable_params(config) -> int:
  """Parameters that training changes (frozen N2 trunks excluded)."""
  return summary.param_counts(config)[0]


def validation_metrics(config, row_dir: str, cv: bool, data=None) -> dict:
  """{metric: value} of VAL_METRICS for the best checkpoint on the
  validation split (with cv: {metric: mean, metric_std: std} over folds).

  Read from <dir>/eval_metrics_validation.json when it belongs to the same
  checkpoint as the dir's test metrics, else computed with `train.evaluate`
  (which writes it).
  """
  if cv:
    dirs = [(os.path.join(row_dir, f'fold_{k}'), k)
            for k in range(int(config.dataset.num_folds))]
  else:
    dirs = [(row_dir, None)]
  got = []
  for d, fold in dirs:
    cached = os.path.join(d, 'eval_metrics_validation.json')
    test = os.path.join(d, 'eval_metrics.json')
    if (paths.exists(cached) and paths.exists(test)
        and _read_json(cached).get('checkpoint_step')
        == _read_json(test).get('checkpoint_step')):
      got.append(_read_json(cached))
      continue
    cfg = config
    if fold is not None:
      cfg = copy.deepcopy(config)
      with cfg.unlocked():
        cfg.dataset.fold = fold
    got.append(train.evaluate(cfg, d, which='best', split='validation',
                              data=data))
  if not cv:
    return {m: got[0][m] for m in VAL_METRICS}
  out = {}
  for m in VAL_METRICS:
    values = np.array([g[m] for g in got], np.float64)
    out[m], out[f'{m}_std'] = float(values.mean()), float(values.std())
  return out


def _read_json(path):
  return paths.read_json(path)


def run_row(row: str, config, row_dir: str, cv: bool, data=None) -> dict:
  """Trains and evaluates one row in `row_dir` unless its metrics exist
  (and were made with this config: `check_row_folder`).
  Returns {row, test_<metric>, val_<metric> [and their _std],
  trainable_params, frozen_params, train_seconds, reused}."""
  if check_row_folder(row, config, row_dir, cv):
    _move_aside(row_dir)
  metrics_path = os.path.join(
      row_dir, 'cv_metrics.json' if cv else 'eval_metrics.json')
  info_path = os.path.join(row_dir, 'study_row.json')
  reused = paths.exists(metrics_path)
  if reused:
    logging.info('Study row %s: reusing %s.', row, metrics_path)
    seconds = (_read_json(info_path)['train_seconds']
               if paths.exists(info_path) else float('nan'))
  else:
    logging.info('Study row %s: training in %s.', row, row_dir)
    t0 = time.time()
    if cv:
      train.cross_validate(config, row_dir, data=data)
    else:
      train.train_and_evaluate(config, row_dir, data=data)
    seconds = time.time() - t0
    if jax.process_index() == 0:
      paths.write_json_atomic(info_path,
                              {'row': row, 'train_seconds': seconds})
  saved = _read_json(metrics_path)
  out = {'row': row}
  for m in METRICS:
    if cv:
      out[f'test_{m}'] = saved[m]['mean']
      out[f'test_{m}_std'] = saved[m]['std']
    else:
      out[f'test_{m}'] = saved[m]
  val = validation_metrics(config, row_dir, cv, data)
  out.update({f'val_{k}': v for k, v in val.items()})
  if config.study.get('robustness', False):
    out.update(_robustness(config, row_dir))
  out['trainable_params'], out['frozen_params'] = summary.param_counts(
      config)
  out['train_seconds'] = seconds
  out['reused'] = reused
  return out


def _robustness(config, row_dir):
  """{<condition>_accuracy} of ROBUSTNESS for a row's best checkpoint."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.robustness.conditions = ','.join(ROBUSTNESS)
  rows = robustness.run_robustness(cfg, row_dir)
  return {f"{r['condition']}_accuracy": r['accuracy'] for r in rows}


@functools.partial(jax.jit, static_argnums=0)
def _four_coalitions(model, variables, image, spec):
  """(4, B, C): v at ∅, image only, speech only, both. `model` is static
  (get_model gives one instance per model), so study rows of the same model
  share the compilation."""
  zi, zs = jnp.zeros_like(image), jnp.zeros_like(spec)
  x = jnp.concatenate([zi, image, zi, image])
  y = jnp.concatenate([zs, zs, spec, spec])
  logits, _ = model.apply(variables, x, y, train=False)
  return jax.nn.softmax(logits.astype(jnp.float32)).reshape(
      (4, image.shape[0], -1))


def modality_interaction(config, row_dir: str, data=None) -> dict:
  """{interaction, share_image, share_speech} of the best checkpoint in
  `row_dir` over the test split (NaN without a checkpoint, or in a
  multi-process run).

  For the predicted class, v(S) is its probability with the modalities
  outside S set to zeros (Algorithm 1's absence): interaction = mean of
  v(both) - v(image) - v(speech) + v(∅); a modality's share = the mean of
  its Shapley value (v(m) - v(∅) + v(both) - v(other)) / 2 over the mean
  of p - v(∅) (the shares sum to 1). The explain_eval mode reports the same
  with DnCShap's baseline, per class.
  """
  nan = {'interaction': math.nan, 'share_image': math.nan,
         'share_speech': math.nan}
  if jax.process_count() > 1 or not checkpointing.has_checkpoint(row_dir):
    return nan
  config = model_scaling.resolve_config(config)
  data = data or input_pipeline
  model, variables, _ = checkpointing.restore_for_inference(config, row_dir)

  values = []
  for batch in data.eval_batches(config, mesh_lib.make_mesh(), split='test'):
    p = np.asarray(_four_coalitions(model, variables, batch['image'],
                                    batch['spectrogram']))
    keep = np.asarray(batch['mask'], bool)
    t = np.argmax(p[3], 1)
    values.append(p[:, np.arange(len(t)), t].T[keep])  # (B, 4)
  if not values:
    return nan
  empty, image, speech, both = np.concatenate(values).T.astype(np.float64)
  total = float(np.mean(both - empty))
  share = lambda a, b: (float(np.mean(a - empty + both - b)) / 2 / total
                        if abs(total) > 1e-12 else math.nan)
  return {'interaction': float(np.mean(both - image - speech + empty)),
          'share_image': share(image, speech),
          'share_speech': share(speech, image)}


def run_study(config: ml_collections.ConfigDict, workdir: str, *,
              config_file: str, overrides: dict | None = None,
              data=None) -> list[dict]:
  """Trains and evaluates every row of config.study.rows (see the module
  docstring), then writes study.csv, study.md and study.png to `workdir`.
  Returns one dict per row, in the rows' order."""
  rows = parse_rows(config.study.rows)
  cv = bool(config.study.cv)
  if cv and config.study.get('robustness', False):
    raise UserError('config.study.robustness scores each row\'s best '
                    'checkpoint, which cross-validation (config.study.cv=True)'
                    ' does not keep; set one of them to False.')
  configs = row_configs(config, config_file, overrides, rows)  # All checked.
  for row in rows:  # A folder of another config stops the study up front.
    check_row_folder(row, configs[row],
                     os.path.join(workdir, row_folder(row)), cv)
  results = []
  for i, row in enumerate(rows):
    logging.info('Study: row %d of %d (%s).', i + 1, len(rows), row)
    row_dir = os.path.join(workdir, row_folder(row))
    results.append(run_row(row, configs[row], row_dir, cv, data))
    if not cv:
      results[-1].update(modality_interaction(configs[row], row_dir, data))
  if jax.process_index() == 0:
    write_csv(results, os.path.join(workdir, 'study.csv'), cv,
              bool(config.study.get('robustness', False)))
    paths.write_text_atomic(os.path.join(workdir, 'study.md'),
                            markdown_table(results, cv))
    plot(results, os.path.join(workdir, 'study.png'), cv)
  return results


def _metric_columns():
  return ([f'test_{m}' for m in METRICS]
          + [f'val_{m}' for m in VAL_METRICS])


def _columns(cv, robust=False):
  cols = ['row'] + _metric_columns()
  if cv:
    cols += [f'{m}_std' for m in _metric_columns()]
  if robust:
    cols += [f'{c}_accuracy' for c in ROBUSTNESS]
  cols += ['trainable_params', 'frozen_params', 'train_seconds']
  return cols if cv else cols + ['interaction', 'share_image', 'share_speech']


def write_csv(results, path, cv, robust=False):
  with paths.atomic_open(path) as f:
    w = csv.DictWriter(f, fieldnames=_columns(cv, robust),
                       extrasaction='ignore')
    w.writeheader()
    for r in results:
      w.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v)
                  for k, v in r.items()})


def _ordered(results):
  """(results, group index of each) in Table 2's order: SER, IER | the
  baselines | proposed | the N2 sweep (in the given order) | sentiment."""
  def key(r):
    for g, names in enumerate(_GROUPS):
      if r['row'] in names:
        return g, names.index(r['row'])
      if names == (SWEEP_PREFIX,) and r['row'].startswith(SWEEP_PREFIX):
        return g, 0  # sorted() is stable: the sweep keeps its order.
    raise ValueError(f'No group for row {r["row"]!r}.')
  ordered = sorted(results, key=key)
  return ordered, [key(r)[0] for r in ordered]


def _pct(r, m, cv):
  if cv:
    return f'{100 * r[m]:.2f} ± {100 * r[m + "_std"]:.2f}%'
  return f'{100 * r[m]:.2f}%'


def _num(r, m, cv):
  if cv:
    return f'{r[m]:.3f} ± {r[m + "_std"]:.3f}'
  return f'{r[m]:.3f}'


def markdown_table(results, cv) -> str:
  """Table 2's layout (Model, Accuracy; groups in its order, a rule between
  groups): validation accuracy (Table 2's) and macro-F1, then the test
  split's accuracy, macro-F1 and Cohen's kappa, trainable and frozen
  parameters, time. The header names each column's split."""
  ordered, groups = _ordered(results)
  lines = ['| Model | Accuracy (validation) | Macro-F1 (validation) '
           '| Accuracy (test) | Macro-F1 (test) | Cohen\'s κ (test) '
           '| Trainable params | Frozen params | Train time |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for k, r in enumerate(ordered):
    if k and groups[k] != groups[k - 1]:
      lines.append('| | | | | | | | | |')  # Table 2's dashed rule.
    secs = r['train_seconds']
    time_text = ('n/a' if secs is None or math.isnan(secs)
                 else f'{secs / 60:.1f} min')
    label = row_label(r['row'])
    if r['row'] == 'proposed':
      label = f'**{label}**'
    lines.append(f'| {label} (`{r["row"]}`) | '
                 f'{_pct(r, "val_accuracy", cv)} | '
                 f'{_num(r, "val_macro_f1", cv)} | '
                 f'{_pct(r, "test_accuracy", cv)} | '
                 f'{_num(r, "test_macro_f1", cv)} | '
                 f'{_num(r, "test_cohen_kappa", cv)} | '
                 f'{r["trainable_params"]:,} | {r["frozen_params"]:,} | '
                 f'{time_text} |')
  return '\n'.join(lines) + '\n'


def plot(results, path, cv):
  """Bar chart: accuracy and macro-F1 per row (error bars: std over folds)."""
  plt = plotting.pyplot()
  ordered, _ = _ordered(results)
  x = np.arange(len(ordered))
  fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(ordered) + 2), 3.6))
  for k, (m, name) in enumerate((('test_accuracy', 'accuracy'),
                                 ('test_macro_f1', 'macro-F1'))):
    values = [r[m] for r in ordered]
    err = [r[m + '_std'] for r in ordered] if cv else None
    bars = ax.bar(x + (k - 0.5) * 0.38, values, 0.38, yerr=err, capsize=3,
                  label=name)
    for b, v, e in zip(bars, values, err or [0.0] * len(values)):
      ax.text(b.get_x() + b.get_width() / 2, v + e + 0.01, f'{v:.2f}',
              ha='center', va='bottom', fontsize=7)
  ax.set_xticks(x, [r['row'] for r in ordered], rotation=30, ha='right')
  ax.set_ylim(0, 1.1)
  ax.set_ylabel('test split')
  if cv:
    ax.set_title('mean ± std over the folds', fontsize=9)
  ax.legend(loc='upper left', ncols=2, fontsize=8)
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  plotting.save(fig, path, dpi=100)
