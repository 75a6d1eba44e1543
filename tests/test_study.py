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

# Tiny model (as train_helpers.tiny_config) as --config.* overrides.
TINY = {'model.width': 1 / 32, 'model.feature_dim': 8, 'model.head_dim': 8,
        'model.speech_backbone': 'vgg16', 'model.image_backbone': 'vgg16',
        'train.learning_rate': 3e-3, 'train.num_epochs': 1,
        'train.max_steps_per_epoch': -1}


def summary_params(config):
  lines = summary.summarize(config).splitlines()
  return int(lines[-2].split('=')[1])  # trainable_params=N (--mode=summary).


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
  assert study.trainable_params(tiny) == summary_params(tiny) - sum(
      models.count_params(shapes[b]['backbone']) for b in ('N2_s', 'N2_i'))
  # A config that the file and overrides do not rebuild is refused.
  with config.unlocked():
    config.train.num_epochs = 4
  with pytest.raises(ValueError, match=r'train\.num_epochs'):
    study.row_configs(config, file, over, ['proposed'])


def test_two_rows_write_the_files_and_a_second_call_retrains_nothing(
    tmp_path, monkeypatch):
  """Also the frozen-trunk check of train.trunk_lr_multiplier=0 (one
  training serves both): trunks bit-identical through training and a resume,
  and a resume under another optimizer layout refused."""
  # Two rows whose models are the same (TINY sets both trunks): one XLA
  # compilation serves both.
  config, file, over = _parse([f'--config={PAPER}:runlocal,ser_only',
                               '--config.study.rows=n2=vgg19,proposed',
                               '--config.train.trunk_lr_multiplier=0']
                              + _flags(TINY))
  data = train_helpers.ArrayData(config, sizes=(16, 8, 8))
  workdir = tmp_path / 'study'
  first = study.run_study(config, str(workdir), config_file=file,
                          overrides=over, data=data)
  assert [r['row'] for r in first] == ['n2=vgg19', 'proposed']
  assert not any(r['reused'] for r in first)
  for row in ('n2_vgg19', 'proposed'):
    saved = json.loads((workdir / row / 'eval_metrics.json').read_text())
    got = next(r for r in first if study.row_folder(r['row']) == row)
    assert got['accuracy'] == saved['accuracy']
  with open(workdir / 'study.csv') as f:
    table = list(csv.DictReader(f))
  assert [r['row'] for r in table] == ['n2=vgg19', 'proposed']
  assert list(table[0]) == ['row', 'accuracy', 'macro_f1', 'cohen_kappa',
                            'trainable_params', 'train_seconds',
                            'interaction', 'share_image', 'share_speech']
  for r in table:  # A speech-only model: no interaction, all speech.
    assert abs(float(r['interaction'])) < 1e-6
    if r['share_speech'] != 'nan':
      assert abs(float(r['share_speech']) - 1) < 1e-5
      assert abs(float(r['share_image'])) < 1e-5
  trunk = models.count_params(summary.variable_shapes(config)['params'][
      'N2_s']['backbone'])  # Frozen: not trainable.
  assert int(table[0]['trainable_params']) == summary_params(
      config) - trunk == int(table[1]['trainable_params'])
  assert float(table[0]['train_seconds']) > 0
  md = (workdir / 'study.md').read_text().splitlines()
  assert md[0].startswith('| Model | Accuracy |')
  # Table 2's order (proposed before the sweep), whatever the rows' order.
  assert md[2].startswith("| **Proposed ('ParallelNet')** (`proposed`) |")
  assert md[4].startswith('| N2 = vgg19 (both trunks) (`n2=vgg19`) |')
  png = Image.open(workdir / 'study.png')
  assert png.size[0] > 300 and png.size[1] > 200

  # Second call: nothing trains; the same numbers.
  calls = []
  real = train.train_and_evaluate

  def spy(cfg, wd, **kw):
    calls.append(os.path.basename(wd))
    return real(cfg, wd, **kw)

  monkeypatch.setattr(train, 'train_and_evaluate', spy)
  second = study.run_study(config, str(workdir), config_file=file,
                           overrides=over, data=data)
  assert calls == [] and all(r['reused'] for r in second)
  assert [r['accuracy'] for r in second] == [r['accuracy'] for r in first]

  # An interrupted row (checkpoints, no metrics) resumes: it is the only one
  # called, and it takes no further training step.
  (workdir / 'proposed' / 'eval_metrics.json').unlink()
  before = sorted(os.listdir(workdir / 'proposed' / 'checkpoints' / 'latest'))
  third = study.run_study(config, str(workdir), config_file=file,
                          overrides=over, data=data)
  assert calls == ['proposed']
  assert sorted(os.listdir(workdir / 'proposed' / 'checkpoints' /
                           'latest')) == before
  assert third[1]['accuracy'] == first[1]['accuracy']

  # Frozen trunks: bit for bit the initial ones after training and resume;
  # everything else trained.
  init = models.init_variables(models.get_model(config), config,
                               train._keys(config)[0])['params']  # pylint: disable=protected-access
  _, trained, _ = checkpointing.restore_for_inference(
      config, str(workdir / 'proposed'), 'latest')
  labels = jax.tree.leaves(train.trunk_labels(init))
  assert labels.count('trunk') > 0
  for a, b, label in zip(jax.tree.leaves(init),
                         jax.tree.leaves(trained['params']), labels):
    if label == 'trunk':
      np.testing.assert_array_equal(np.asarray(a).view(np.uint32),
                                    np.asarray(b).view(np.uint32))
    else:
      assert not np.array_equal(a, b)
  # Resuming it with the trunks unfrozen (another optimizer layout) is
  # refused before anything trains.
  with config.unlocked():
    config.train.trunk_lr_multiplier = 1.0
  with pytest.raises(UserError, match=r"trunk_lr_multiplier=1\.0 gives "
                                      r"'adam'"):
    real(config, str(workdir / 'proposed'), data=data)


def test_cv_rows_report_std_columns_and_error_bars(tmp_path, monkeypatch):
  """With study.cv the rows' cv_metrics.json (mean ± std) is read (here
  written beforehand, so nothing trains) and the std columns appear."""
  monkeypatch.setattr(train, 'cross_validate', None)  # Must not be called.
  config, file, over = _parse([f'--config={PAPER}:runlocal',
                               '--config.study.cv=True',
                               '--config.study.rows=proposed,n2=resnet34'])
  for row, acc in (('proposed', 0.8), ('n2_resnet34', 0.6)):
    (tmp_path / row).mkdir()
    (tmp_path / row / 'cv_metrics.json').write_text(json.dumps({
        'num_folds': 5, **{m: {'mean': acc, 'std': 0.05}
                           for m in ('accuracy', 'macro_f1', 'cohen_kappa')}}))
  results = study.run_study(config, str(tmp_path), config_file=file,
                            overrides=over)
  assert [r['accuracy_std'] for r in results] == [0.05, 0.05]
  with open(tmp_path / 'study.csv') as f:
    header = next(csv.reader(f))
  assert header == ['row', 'accuracy', 'macro_f1', 'cohen_kappa',
                    'accuracy_std', 'macro_f1_std', 'cohen_kappa_std',
                    'trainable_params', 'train_seconds']
  md = (tmp_path / 'study.md').read_text()
  assert '| 80.00 ± 5.00% |' in md and 'N2 = resnet34 (both trunks)' in md


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


def test_sentiment_row_trains_on_a_b_t4sa_folder(tmp_path):
  _b_t4sa_folder(tmp_path / 'bt4sa')
  config, file, over = _parse(
      [f'--config={PAPER}:runlocal,ser_only', '--config.study.rows=sentiment',
       f'--config.study.sentiment_dir={tmp_path / "bt4sa"}',
       f'--config.dataset.data_dir={tmp_path / "tfds"}'] + _flags(TINY))
  (result,) = study.run_study(config, str(tmp_path / 'w'), config_file=file,
                              overrides=over)
  saved = json.loads((tmp_path / 'w' / 'sentiment' / 'eval_metrics.json')
                     .read_text())
  assert np.array(saved['confusion_matrix']).shape == (3, 3)  # Table 3: C=3.
  assert saved['num_examples'] == np.sum(saved['confusion_matrix']) > 0
  assert result['accuracy'] == saved['accuracy']
  assert 'sentiment (B-T4SA, 3 classes; Table 3)' in (
      tmp_path / 'w' / 'study.md').read_text()
  assert (tmp_path / 'tfds' / 'b_t4sa').is_dir()
