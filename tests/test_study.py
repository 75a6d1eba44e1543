"""--mode=study (parallelnet/study.py): rows are checked before training, row
configs are the config file's variants plus the command line's overrides,
two rows write study.csv/md/png and a second call retrains nothing, an
interrupted row resumes, cv columns, and the sentiment row on a b_t4sa
manifest folder (Table 3) through the real input pipeline. The two-row run
trains with frozen trunks (train.trunk_lr_multiplier=0) and checks them."""

import csv
import json
import os
import sys

from absl import flags
import jax
from ml_collections import config_flags
import numpy as np
from PIL import Image
import pytest
import soundfile as sf

from parallelnet.core.errors import UserError
from parallelnet import checkpointing
from parallelnet import models
from parallelnet import study
from parallelnet import train
from parallelnet import summary
import train_helpers

pytestmark = pytest.mark.usefixtures('fast_compile')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'configs', 'demo.py')
PAPER = os.path.join(ROOT, 'configs', 'parallelnet.py')

# The tests' tiny model (train_helpers.TINY) as --config.* overrides.
TINY = dict(train_helpers.TINY, **{'train.num_epochs': 1})


def _tiny_trunks(trunk):
  """TINY with the tiny N2 trunk `trunk` (conftest's `tiny_trunk` fixture)
  in both trunks, for the tests that train rows: none is about the trunk."""
  return dict(TINY, **{'model.speech_backbone': trunk,
                       'model.image_backbone': trunk})


def summary_params(config, key='trainable_params'):
  """A total line of --mode=summary (trainable_params=N, frozen_params=N)."""
  lines = summary.summarize(config).splitlines()
  return int(next(l for l in lines if l.startswith(f'{key}=')).split('=')[1])


def _parse(argv):
  """(config, config_file, overrides) exactly as main.py gets them."""
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, 'c',
                                           flag_values=fv, lock_config=True)
  saved, sys.argv = sys.argv, ['prog'] + argv  # config_flags reads sys.argv.
  try:
    fv(sys.argv)
  finally:
    sys.argv = saved
  return holder.value, fv['config'].config_filename, fv['config'].override_values


def _flags(overrides):
  return [f'--config.{k}={v}' for k, v in overrides.items()]


def test_rows_are_checked_before_anything_trains(tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'train_and_evaluate', None)  # Must not be called.
  for rows, match in (('proposed,baseline4', "unknown row 'baseline4'"),
                      ('n2=vgg17', "'n2=vgg17' names no known backbone"),
                      ('ser_only,,ser_only', "'ser_only' twice"),
                      ('sentiment', 'study.sentiment_dir')):
    config, file, over = _parse([f'--config={PAPER}:runlocal',
                                 f'--config.study.rows={rows}'])
    with pytest.raises(UserError, match=match):
      study.run_study(config, str(tmp_path / 'w'), config_file=file,
                      overrides=over)
  assert not (tmp_path / 'w').exists()
  assert study.row_folder('n2=mobilenet_v2') == 'n2_mobilenet_v2'
  assert study.parse_rows(' proposed, n2=vgg16 ') == ['proposed', 'n2=vgg16']


@pytest.mark.slow
def test_row_configs_are_variants_plus_command_line_overrides():
  config, file, over = _parse([
      f'--config={DEMO}:runlocal', '--config.train.num_epochs=3',
      '--config.model.speech_backbone=resnet34',
      '--config.study.rows=baseline1,n2=vgg16'])
  assert over == {'train.num_epochs': 3, 'model.speech_backbone': 'resnet34',
                  'study.rows': 'baseline1,n2=vgg16'}
  rows = study.row_configs(config, file, over,
                           ['proposed', 'baseline1', 'n2=mobilenet_v2'])
  assert rows['proposed'].to_dict() == config.to_dict()
  b1 = rows['baseline1']
  # demo, then runlocal, then the row, then the command line.
  assert (b1.dataset.name, b1.input.image_size, b1.model.width) == (
      'synthetic_sier', 32, 1 / 16)
  assert (b1.model.crossing, b1.model.image_backbone) == (
      'both', 'efficientnet_b0')
  assert b1.model.speech_backbone == 'resnet34'  # The override wins.
  assert b1.train.num_epochs == 3
  sweep = rows['n2=mobilenet_v2']
  assert (sweep.model.image_backbone, sweep.model.crossing,
          sweep.train.num_epochs) == ('mobilenet_v2', 'after', 3)
  # Frozen trunks (train.trunk_lr_multiplier=0) are not trainable.
  tiny = rows['proposed']
  with tiny.unlocked():
    tiny.train.trunk_lr_multiplier = 0.0
  shapes = summary.variable_shapes(tiny)['params']
  trunks = sum(models.count_params(shapes[b]['backbone'])
               for b in ('N2_s', 'N2_i'))
  assert study.trainable_params(tiny) == summary_params(tiny) == (
      models.count_params(shapes) - trunks)
  assert summary_params(tiny, 'frozen_params') == trunks
  # A config that the file and overrides do not rebuild is refused.
  with config.unlocked():
    config.train.num_epochs = 4
  with pytest.raises(ValueError, match=r'train\.num_epochs'):
    study.row_configs(config, file, over, ['proposed'])


def _cells(md_line):
  return [c.strip() for c in md_line.strip().strip('|').split('|')]


@pytest.mark.slow
def test_two_rows_write_the_files_and_a_second_call_retrains_nothing(
    tmp_path, monkeypatch, tiny_trunk):
  """Two rows of different models (SER only, IER only): each row's line of
  study.csv/study.md holds its own folder's test and validation numbers.
  Also the frozen-trunk check of train.trunk_lr_multiplier=0 (one training
  serves both): trunks bit-identical through training and a resume, and a
  resume under another optimizer layout refused."""
  config, file, over = _parse([f'--config={PAPER}:runlocal',
                               '--config.study.rows=ier_only,ser_only',
                               '--config.train.trunk_lr_multiplier=0']
                              + _flags(_tiny_trunks(tiny_trunk)))
  rows = study.row_configs(config, file, over, ['ier_only', 'ser_only'])
  # Validation and test differ in size, so each file names its split.
  data = train_helpers.ArrayData(config, sizes=(16, 6, 10))
  workdir = tmp_path / 'study'
  first = study.run_study(config, str(workdir), config_file=file,
                          overrides=over, data=data)
  assert [r['row'] for r in first] == ['ier_only', 'ser_only']
  assert not any(r['reused'] for r in first)
  with open(workdir / 'study.csv') as f:
    table = list(csv.DictReader(f))
  assert list(table[0]) == [
      'row', 'test_accuracy', 'test_macro_f1', 'test_cohen_kappa',
      'val_accuracy', 'val_macro_f1', 'trainable_params', 'frozen_params',
      'train_seconds', 'interaction', 'share_image', 'share_speech']
  # Unimodal models: no interaction, all of p - v(∅) on their modality.
  for r, mine in zip(table, ('share_image', 'share_speech')):
    assert abs(float(r['interaction'])) < 1e-6, r
    if r[mine] != 'nan':
      other = 'share_speech' if mine == 'share_image' else 'share_image'
      assert abs(float(r[mine]) - 1) < 1e-5 and abs(float(r[other])) < 1e-5
  md = (workdir / 'study.md').read_text().splitlines()
  assert _cells(md[0]) == [
      'Model', 'Accuracy (validation)', 'Macro-F1 (validation)',
      'Accuracy (test)', 'Macro-F1 (test)', "Cohen's κ (test)",
      'Trainable params', 'Frozen params', 'Train time']
  # Table 2's order (SER before IER), whatever the rows' order.
  md_lines = {'ser_only': _cells(md[2]), 'ier_only': _cells(md[3])}
  assert md_lines['ser_only'][0] == 'SER Only (`ser_only`)'
  assert md_lines['ier_only'][0] == 'IER Only (`ier_only`)'
  numbers = {}
  for row, line, result in zip(('ier_only', 'ser_only'), table, first):
    test = json.loads((workdir / row / 'eval_metrics.json').read_text())
    val = json.loads((workdir / row / 'eval_metrics_validation.json')
                     .read_text())
    assert (test['split'], test['num_examples']) == ('test', 10)
    assert (val['split'], val['num_examples']) == ('validation', 6)
    assert val['checkpoint_step'] == test['checkpoint_step']
    cfg = rows[row]
    shapes = summary.variable_shapes(cfg)['params']
    branch = 'N2_s' if row == 'ser_only' else 'N2_i'
    trunk = models.count_params(shapes[branch]['backbone'])
    trainable = models.count_params(shapes) - trunk  # Frozen trunk.
    assert line['row'] == result['row'] == row
    for m in ('accuracy', 'macro_f1', 'cohen_kappa'):
      assert result[f'test_{m}'] == test[m]
      assert float(line[f'test_{m}']) == pytest.approx(test[m], rel=1e-5)
    for m in ('accuracy', 'macro_f1'):
      assert result[f'val_{m}'] == val[m]
      assert float(line[f'val_{m}']) == pytest.approx(val[m], rel=1e-5)
    assert int(line['trainable_params']) == trainable == summary_params(cfg)
    assert int(line['frozen_params']) == trunk == summary_params(
        cfg, 'frozen_params')
    assert float(line['train_seconds']) > 0
    assert md_lines[row][1:6] == [
        f'{100 * val["accuracy"]:.2f}%', f'{val["macro_f1"]:.3f}',
        f'{100 * test["accuracy"]:.2f}%', f'{test["macro_f1"]:.3f}',
        f'{test["cohen_kappa"]:.3f}']
    assert md_lines[row][6:8] == [f'{trainable:,}', f'{trunk:,}']
    numbers[row] = (test['accuracy'], test['macro_f1'], val['accuracy'],
                    trainable)
  assert numbers['ier_only'] != numbers['ser_only']  # Two different rows.
  png = Image.open(workdir / 'study.png')
  assert png.size[0] > 300 and png.size[1] > 200

  # Second call: nothing trains or evaluates; the same numbers.
  calls = []
  real = train.train_and_evaluate

  def spy(cfg, wd, **kw):
    calls.append(os.path.basename(wd))
    return real(cfg, wd, **kw)

  monkeypatch.setattr(train, 'train_and_evaluate', spy)
  real_evaluate = train.evaluate
  monkeypatch.setattr(train, 'evaluate', None)  # The cache is used.
  second = study.run_study(config, str(workdir), config_file=file,
                           overrides=over, data=data)
  assert calls == [] and all(r['reused'] for r in second)
  assert [{k: v for k, v in r.items() if k not in ('reused',)}
          for r in second] == [{k: v for k, v in r.items()
                                if k not in ('reused',)} for r in first]
  monkeypatch.setattr(train, 'evaluate', real_evaluate)

  # An interrupted row (checkpoints, no metrics) resumes: it is the only one
  # called, and it takes no further training step.
  (workdir / 'ser_only' / 'eval_metrics.json').unlink()
  before = sorted(os.listdir(workdir / 'ser_only' / 'checkpoints' / 'latest'))
  third = study.run_study(config, str(workdir), config_file=file,
                          overrides=over, data=data)
  assert calls == ['ser_only']
  assert sorted(os.listdir(workdir / 'ser_only' / 'checkpoints' /
                           'latest')) == before
  assert third[1]['test_accuracy'] == first[1]['test_accuracy']

  # Frozen trunks: bit for bit the initial ones after training and resume;
  # everything else trained.
  ser = rows['ser_only']
  init = models.init_variables(models.get_model(ser), ser,
                               train._keys(ser)[0])  # pylint: disable=protected-access
  _, trained, _ = checkpointing.restore_for_inference(
      ser, str(workdir / 'ser_only'), 'latest')
  labels = jax.tree.leaves(train.trunk_labels(init['params']))
  assert labels.count('trunk') > 0
  for a, b, label in zip(jax.tree.leaves(init['params']),
                         jax.tree.leaves(trained['params']), labels):
    if label == 'trunk':
      np.testing.assert_array_equal(np.asarray(a).view(np.uint32),
                                    np.asarray(b).view(np.uint32))
    else:
      assert not np.array_equal(a, b)
  # Resuming it with the trunks unfrozen (another optimizer layout) is
  # refused before anything trains.
  with ser.unlocked():
    ser.train.trunk_lr_multiplier = 1.0
  with pytest.raises(UserError, match=r"trunk_lr_multiplier=1\.0 gives "
                                      r"'adam'"):
    real(ser, str(workdir / 'ser_only'), data=data)


def _fake_row(folder, config, acc, cv=False):
  """A finished row folder as training leaves it (config.json, test and
  validation metrics of one checkpoint), written by hand: nothing trains."""
  metrics = lambda a, split: {'accuracy': a, 'macro_f1': a - 0.1,
                              'cohen_kappa': a - 0.2, 'split': split,
                              'checkpoint_step': 3}
  dirs = ([(folder / f'fold_{k}', k) for k in
           range(config.dataset.num_folds)] if cv else [(folder, None)])
  for d, k in dirs:
    d.mkdir(parents=True)
    cfg = json.loads(config.to_json())
    if k is not None:
      cfg['dataset']['fold'] = k
    (d / 'config.json').write_text(json.dumps(cfg))
    a = acc + 0.01 * (k or 0)
    (d / 'eval_metrics.json').write_text(json.dumps(metrics(a, 'test')))
    (d / 'eval_metrics_validation.json').write_text(
        json.dumps(metrics(a + 0.05, 'validation')))
  if cv:
    accs = acc + 0.01 * np.arange(config.dataset.num_folds)
    (folder / 'cv_metrics.json').write_text(json.dumps({
        'num_folds': config.dataset.num_folds,
        **{m: {'mean': float((accs - d).mean()), 'std': float(accs.std())}
           for m, d in (('accuracy', 0), ('macro_f1', 0.1),
                        ('cohen_kappa', 0.2))}}))


@pytest.mark.slow
def test_cv_rows_report_std_columns_and_error_bars(tmp_path, monkeypatch):
  """With study.cv the rows' cv_metrics.json (mean ± std) and each fold's
  validation metrics are read (here written beforehand, so nothing trains
  or evaluates) and the std columns appear, each row on its own line."""
  monkeypatch.setattr(train, 'cross_validate', None)  # Must not be called.
  monkeypatch.setattr(train, 'evaluate', None)
  config, file, over = _parse([f'--config={PAPER}:runlocal',
                               '--config.study.cv=True',
                               '--config.study.rows=proposed,n2=resnet34'])
  rows = study.row_configs(config, file, over, ['proposed', 'n2=resnet34'])
  _fake_row(tmp_path / 'proposed', rows['proposed'], 0.8, cv=True)
  _fake_row(tmp_path / 'n2_resnet34', rows['n2=resnet34'], 0.6, cv=True)
  results = study.run_study(config, str(tmp_path), config_file=file,
                            overrides=over)
  folds = 0.01 * np.arange(5)
  for r, acc in zip(results, (0.8, 0.6)):
    assert r['test_accuracy'] == pytest.approx(acc + folds.mean())
    assert r['val_accuracy'] == pytest.approx(acc + 0.05 + folds.mean())
    assert r['val_accuracy_std'] == pytest.approx(folds.std())
    assert r['test_accuracy_std'] == pytest.approx(folds.std())
  with open(tmp_path / 'study.csv') as f:
    header = next(csv.reader(f))
  assert header == ['row', 'test_accuracy', 'test_macro_f1',
                    'test_cohen_kappa', 'val_accuracy', 'val_macro_f1',
                    'test_accuracy_std', 'test_macro_f1_std',
                    'test_cohen_kappa_std', 'val_accuracy_std',
                    'val_macro_f1_std', 'trainable_params', 'frozen_params',
                    'train_seconds']
  md = (tmp_path / 'study.md').read_text().splitlines()
  std = 100 * folds.std()
  assert _cells(md[2])[:4] == [
      "**Proposed ('ParallelNet')** (`proposed`)",
      f'{85 + 100 * folds.mean():.2f} ± {std:.2f}%',
      f'{0.75 + folds.mean():.3f} ± {folds.std():.3f}',
      f'{80 + 100 * folds.mean():.2f} ± {std:.2f}%']
  assert _cells(md[4])[:4] == [
      'N2 = resnet34 (both trunks) (`n2=resnet34`)',
      f'{65 + 100 * folds.mean():.2f} ± {std:.2f}%',
      f'{0.55 + folds.mean():.3f} ± {folds.std():.3f}',
      f'{60 + 100 * folds.mean():.2f} ± {std:.2f}%']


def test_a_row_trained_with_another_config_stops_the_study(tmp_path,
                                                          monkeypatch):
  """A reused row's config.json must match the row's config now in every
  field that changes the result; else the study stops naming the fields,
  or, with study.retrain_changed, moves the folder aside and retrains."""
  monkeypatch.setattr(train, 'train_and_evaluate', None)
  monkeypatch.setattr(train, 'evaluate', None)
  argv = [f'--config={PAPER}:runlocal', '--config.study.rows=proposed,ser_only']
  config, file, over = _parse(argv)
  rows = study.row_configs(config, file, over, ['proposed', 'ser_only'])
  _fake_row(tmp_path / 'proposed', rows['proposed'], 0.7)
  # A field the code added after the run counts as its default.
  saved = json.loads((tmp_path / 'proposed' / 'config.json').read_text())
  del saved['model']['require_weights']
  (tmp_path / 'proposed' / 'config.json').write_text(json.dumps(saved))
  stale = rows['ser_only'].copy_and_resolve_references()
  stale.train.learning_rate = 1e-3  # Changes the result.
  stale.model.head_dim = 64  # Changes the result.
  stale.train.log_every_steps = 7  # Does not.
  stale.explain.depth = 5  # Does not.
  _fake_row(tmp_path / 'ser_only', stale, 0.5)
  with pytest.raises(UserError) as info:
    study.run_study(config, str(tmp_path), config_file=file, overrides=over)
  message = str(info.value)
  assert message.startswith('Study row ser_only: ')
  assert "model.head_dim: 64 then, 32 now; train.learning_rate: 0.001 " \
         "then, 8e-06 now." in message
  assert 'log_every_steps' not in message and 'explain' not in message
  assert '--config.study.retrain_changed=True' in message
  assert not (tmp_path / 'study.csv').exists()  # Stopped before any row.

  calls = []

  def fake_train(cfg, wd, data=None):
    calls.append(wd)
    _fake_row(tmp_path / os.path.basename(wd), cfg, 0.9)

  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  config, file, over = _parse(argv + ['--config.study.retrain_changed=True'])
  results = study.run_study(config, str(tmp_path), config_file=file,
                            overrides=over)
  assert calls == [str(tmp_path / 'ser_only')]
  assert [r['reused'] for r in results] == [True, False]
  assert [r['test_accuracy'] for r in results] == [0.7, 0.9]
  assert json.loads((tmp_path / 'ser_only.stale' / 'eval_metrics.json')
                    .read_text())['accuracy'] == 0.5
  with open(tmp_path / 'study.csv') as f:
    assert [(r['row'], r['test_accuracy']) for r in csv.DictReader(f)] == [
        ('proposed', '0.7'), ('ser_only', '0.9')]


def _b_t4sa_folder(folder, n=30, sr=8000):
  """A b_t4sa manifest folder: n image + speech pairs, three sentiments."""
  folder.mkdir()
  rng = np.random.default_rng(0)
  rows = []
  for i in range(n):
    label = ('negative', 'neutral', 'positive')[i % 3]
    img = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    img[..., i % 3] = 255  # The sentiment is in one colour channel.
    Image.fromarray(img).save(folder / f'{i}.png')
    t = np.arange(sr) / sr
    sf.write(folder / f'{i}.wav',
             (0.3 * np.sin(2 * np.pi * (200 + 150 * (i % 3)) * t)
              ).astype(np.float32), sr)
    rows.append(f'tw{i},{i}.png,{i}.wav,{label}')
  (folder / 'manifest.csv').write_text(
      'id,image,audio,label\n' + '\n'.join(rows) + '\n')


@pytest.mark.slow
def test_sentiment_row_trains_on_a_b_t4sa_folder(tmp_path, tiny_trunk):
  _b_t4sa_folder(tmp_path / 'bt4sa')
  config, file, over = _parse(
      [f'--config={PAPER}:runlocal,ser_only', '--config.study.rows=sentiment',
       f'--config.study.sentiment_dir={tmp_path / "bt4sa"}',
       f'--config.dataset.data_dir={tmp_path / "tfds"}']
      + _flags(_tiny_trunks(tiny_trunk)))
  (result,) = study.run_study(config, str(tmp_path / 'w'), config_file=file,
                              overrides=over)
  saved = json.loads((tmp_path / 'w' / 'sentiment' / 'eval_metrics.json')
                     .read_text())
  assert np.array(saved['confusion_matrix']).shape == (3, 3)  # Table 3: C=3.
  assert saved['num_examples'] == np.sum(saved['confusion_matrix']) > 0
  assert result['test_accuracy'] == saved['accuracy']
  assert 'sentiment (B-T4SA, 3 classes; Table 3)' in (
      tmp_path / 'w' / 'study.md').read_text()
  assert (tmp_path / 'tfds' / 'b_t4sa').is_dir()
