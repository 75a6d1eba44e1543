"""A user's own folder on the first try (docs/own_data.md): the build knows
its source, manual_dir mistakes fail first, nothing is left behind, the
workdir remembers its config, and the small-data recipe."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from configs import demo
from configs import parallelnet
from input_pipeline import audio as audio_lib
from input_pipeline import manifest as manifest_lib
from parallelnet.core import errors

pytestmark = pytest.mark.usefixtures('fast_compile')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, 'docs', 'own_data.md')


@pytest.fixture(autouse=True, scope='module')
def _quiet_tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.display_progress_bar(False)


def make_pairs(parent):
  """Runs the doc's folder-making script in `parent`; returns my_pairs/."""
  with open(DOC, encoding='utf-8') as f:
    script = re.search(r'```python\n(.*?)```', f.read(), re.S).group(1)
  subprocess.run([sys.executable, '-c', script], cwd=parent, check=True)
  return os.path.join(parent, 'my_pairs')


@pytest.fixture(scope='module')
def pairs(tmp_path_factory):
  return make_pairs(tmp_path_factory.mktemp('own'))


def _config(tmp, folder, variant='runlocal'):
  c = parallelnet.get_config(variant)
  c.dataset.name = 'iitr_sier'
  c.dataset.manual_dir = str(folder)
  c.dataset.data_dir = str(tmp / 'tfds')
  c.input.image_scaling = 'caffe'
  return c


def _copy(src, dst):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(src, dst, copy_function=shutil.copy2)  # Keeps mtimes.
  return str(dst)


def _ids(config):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  return {s: set(pipeline.load_examples(config, s)['id'])
          for s in ('train', 'validation', 'test')}


# --- The build knows its source ----------------------------------------------


def test_class_folders_build_without_a_manifest(tmp_path, pairs):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  c = _config(tmp_path, pairs)
  b = pipeline.get_builder(c)
  assert sum(s.num_examples for s in b.info.splits.values()) == 40
  assert not os.path.exists(os.path.join(pairs, 'manifest.csv'))
  assert b.info.metadata['source'] == manifest_lib.source_fingerprint(pairs)
  assert b.info.metadata['source_dir'] == os.path.abspath(pairs)


@pytest.mark.slow
def test_a_changed_source_builds_anew_never_the_old_data(tmp_path, pairs,
                                                         caplog):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  folder = _copy(pairs, tmp_path / 'data')
  manifest_lib.manifest_from_class_folders(folder)
  c = _config(tmp_path, folder)
  first = pipeline.get_builder(c)
  before = _ids(c)
  assert len(set.union(*before.values())) == 40

  # A row removed from the manifest.
  path = os.path.join(folder, 'manifest.csv')
  lines = open(path).read().splitlines(keepends=True)
  open(path, 'w').write(''.join(l for l in lines if not l.startswith('sad/9,')))
  caplog.set_level('WARNING')
  second = pipeline.get_builder(c)
  assert second.data_dir != first.data_dir
  after = _ids(c)
  assert set.union(*after.values()) == set.union(*before.values()) - {'sad/9'}
  assert any(os.path.dirname(first.data_dir) in r.getMessage()
             for r in caplog.records), caplog.text

  # A file replaced (same name, other content): rebuilt, new spectrogram.
  spec = dict(zip(*(pipeline.load_examples(c, 'test')[k]
                    for k in ('id', 'spectrogram'))))
  rid = sorted(spec)[0]
  wav = os.path.join(folder, rid + '.wav')
  sf.write(wav, np.zeros(4000, np.float32), 8000)
  third = pipeline.get_builder(c)
  assert third.data_dir not in (first.data_dir, second.data_dir)
  new = dict(zip(*(pipeline.load_examples(c, 'test')[k]
                   for k in ('id', 'spectrogram'))))
  assert not np.array_equal(new[rid], spec[rid])
  assert np.all(new[rid] == 0)  # Silence.


def _touch_a_clip(folder):
  """Edits the folder: one clip's modification time moves by a second."""
  sad = os.path.join(folder, 'sad')
  wav = os.path.join(sad, min(f for f in os.listdir(sad) if f.endswith('.wav')))
  st = os.stat(wav)
  os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_a_run_fingerprints_its_source_once(tmp_path, pairs):
  """Inside fixed_sources() a folder is fingerprinted once (a run reads one
  version of it); the next run sees the change."""
  folder = _copy(pairs, tmp_path / 'data')
  first = manifest_lib.source_fingerprint(folder)
  with manifest_lib.fixed_sources():
    assert manifest_lib.source_fingerprint(folder) == first
    _touch_a_clip(folder)
    with manifest_lib.fixed_sources():  # Re-entrant: the outer run's value.
      assert manifest_lib.source_fingerprint(folder) == first
    assert manifest_lib.source_fingerprint(folder) == first
  assert manifest_lib.source_fingerprint(folder) != first


def test_training_reads_one_version_of_its_source(tmp_path, pairs):
  """Inside train_and_evaluate a folder edited mid-run keeps the
  fingerprint the run started with (here the data stand-in edits it, then
  the run ends with the error of a split smaller than one batch); the next
  run sees the edit."""
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  import train_helpers  # pylint: disable=g-import-not-at-top
  folder = _copy(pairs, tmp_path / 'data')
  seen = []

  class Data:

    def steps_per_epoch(self, config):
      del config
      seen.append(manifest_lib.source_fingerprint(folder))
      _touch_a_clip(folder)
      seen.append(manifest_lib.source_fingerprint(folder))
      return 0

    def num_examples(self, config, split):
      del config, split
      return 3

  with pytest.raises(errors.UserError, match='fewer than one batch'):
    train.train_and_evaluate(train_helpers.tiny_config(),
                             str(tmp_path / 'run'), data=Data())
  assert len(seen) == 2 and seen[0] == seen[1]
  assert manifest_lib.source_fingerprint(folder) != seen[0]


@pytest.mark.parametrize('case', ['missing', 'empty', 'file'])
def test_a_bad_manual_dir_is_one_line_and_creates_nothing(tmp_path, case):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'nope'
  if case == 'empty':
    folder.mkdir()
    (folder / 'notes.txt').write_text('no pairs here')
  elif case == 'file':
    folder.write_text('a file, not a folder')
  for name, classes in (('iitr_sier', parallelnet.EMOTIONS),
                        ('b_t4sa', parallelnet.SENTIMENTS)):
    c = _config(tmp_path, folder)
    c.dataset.name, c.dataset.classes = name, classes
    with pytest.raises(errors.UserError) as err:
      pipeline.get_builder(c)
    msg = str(err.value)
    assert '\n' not in msg and str(folder) in msg, msg
    assert ('not a folder' if case != 'empty' else 'class folders') in msg
  assert not (tmp_path / 'tfds').exists()


def test_manual_dir_with_the_synthetic_corpus_names_both_fields(tmp_path,
                                                                pairs):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  c = demo.get_config()
  c.dataset.manual_dir = pairs
  c.dataset.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(errors.UserError,
                     match=r'config\.dataset\.manual_dir=.*config\.dataset\.'
                           r"name='synthetic_sier'.*--config\.dataset\.name="
                           r'iitr_sier'):
    pipeline.get_builder(c)
  assert not (tmp_path / 'tfds').exists()


# --- Nothing left behind, paths that exist -----------------------------------


def test_a_failed_build_removes_what_it_created(tmp_path, pairs):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  folder = _copy(pairs, tmp_path / 'data')
  os.remove(os.path.join(folder, 'sad', '3.wav'))
  with open(os.path.join(folder, 'manifest.csv'), 'w') as f:
    f.write('id,image,audio,label\n')
    f.write('a,happy/0.jpg,happy/0.wav,happy\n')
    f.write('b,sad/2.jpg,sad/3.wav,sad\n')
  c = _config(tmp_path, folder)
  with pytest.raises(manifest_lib.BadInputError) as err:
    pipeline.get_builder(c)
  msg = str(err.value)
  assert f'in {os.path.abspath(folder)} (file paths relative to it)' in msg
  assert 'sad/3.wav' in msg and 'missing file' in msg
  assert not (tmp_path / 'tfds').exists(), list((tmp_path / 'tfds').rglob('*'))


def test_skipped_csv_is_named_where_it_is(tmp_path, pairs, caplog):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  folder = _copy(pairs, tmp_path / 'data')
  manifest_lib.manifest_from_class_folders(folder)
  with open(os.path.join(folder, 'manifest.csv'), 'a') as f:
    f.write('bad,happy/0.jpg,happy/missing.wav,happy\n')
  c = _config(tmp_path, folder)
  c.dataset.skip_bad = True
  caplog.set_level('WARNING')
  pipeline.get_builder(c)
  line = [r.getMessage() for r in caplog.records
          if 'skipped.csv' in r.getMessage()]
  assert line, caplog.text
  path = line[0].split('reasons in ')[1]
  assert os.path.isabs(path) and os.path.isfile(path), path
  assert 'incomplete' not in path


def test_duration_error_names_the_num_frames_that_fits():
  c = demo.get_config()
  c.input.duration_s = 2.0
  with pytest.raises(ValueError) as err:
    audio_lib.check_duration(c.input)
  msg = str(err.value)
  frames = int(re.search(r'num_frames=(\d+) --config', msg).group(1))
  seconds = float(re.search(r'--config\.input\.duration_s=([\d.]+) ',
                            msg).group(1))
  assert abs(seconds - 2.0) <= 256 / 8000 / 2 + 1e-9
  c.input.num_frames, c.input.duration_s = frames, seconds
  audio_lib.check_duration(c.input)  # The suggestion is valid.


# --- The workdir remembers its config ----------------------------------------


def test_a_saved_config_json_reads_back_as_the_same_config(tmp_path):
  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  c = demo.get_config('small')
  c.dataset.manual_dir = '/data/x'
  checkpointing.write_config(c, str(tmp_path))
  back = parallelnet.config_from_json(str(tmp_path / 'config.json'))
  assert back.to_dict() == c.to_dict()
  (tmp_path / 'bad.json').write_text('{"model": ')
  with pytest.raises(errors.UserError, match='bad.json is not readable JSON'):
    parallelnet.config_from_json(str(tmp_path / 'bad.json'))


@pytest.fixture(scope='module')
def trained(tmp_path_factory, pairs):
  """(config, workdir, test metrics) of a workdir trained (briefly) with
  non-default input and model settings."""
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  tmp_path = tmp_path_factory.mktemp('trained')
  c = _config(tmp_path, pairs)
  c.input.num_frames, c.input.duration_s = 48, 47 * 256 / 8000
  c.model.width, c.model.feature_dim, c.model.head_dim = 1 / 32, 8, 16
  c.model.image_backbone = 'vgg16'  # One trunk to compile.
  workdir = str(tmp_path / 'run')
  metrics = train.train_and_evaluate(c, workdir)
  return c, workdir, metrics


@pytest.mark.slow
def test_eval_predict_explain_on_a_workdir_need_no_overrides(trained, pairs):
  from explain import run as explain_run  # pylint: disable=g-import-not-at-top
  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  from parallelnet import predict  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  trained_config, workdir, metrics = trained
  plain = parallelnet.get_config('runlocal')  # Says nothing of the above.
  with pytest.raises(checkpointing.ModelMismatchError):
    train.evaluate(plain, workdir)  # What happened before config_for_workdir.
  config = checkpointing.config_for_workdir(plain, workdir, {})
  assert config.input.num_frames == 48 and config.model.head_dim == 16
  assert config.dataset.manual_dir == pairs
  again = train.evaluate(config, workdir)
  assert again['accuracy'] == metrics['accuracy']
  assert again['confusion_matrix'] == metrics['confusion_matrix']
  with_overrides = predict.predict(trained_config, workdir)
  rows = open(with_overrides['path']).read()
  without = predict.predict(config, workdir)
  assert open(without['path']).read() == rows
  assert without['accuracy'] == metrics['accuracy']
  pair = (os.path.join(pairs, 'happy', '3.png'),
          os.path.join(pairs, 'happy', '3.wav'))
  first = explain_run.explain_files(trained_config, workdir, *pair)
  second = explain_run.explain_files(config, workdir, *pair)
  for k in ('probability', 'modality_scores', 'predicted'):
    assert first[k] == second[k], k
  # Overrides still apply on top; one that contradicts the model names both.
  config = checkpointing.config_for_workdir(
      plain, workdir, {'train.eval_batch_size': 2, 'input.num_frames': 48})
  assert config.train.eval_batch_size == 2
  with pytest.raises(errors.UserError) as err:
    checkpointing.config_for_workdir(plain, workdir,
                                     {'input.num_frames': 32})
  msg = str(err.value)
  assert '\n' not in msg and 'input.num_frames=32' in msg
  assert 'input.num_frames=48' in msg


@pytest.mark.slow
def test_cli_config_json_and_default_config_give_the_same_numbers(trained):
  """main.py --mode=eval on a trained workdir: --config=<workdir>/config.json,
  or a --config without the training overrides, gives training's accuracy;
  a contradicting override is one line naming both values."""
  _, workdir, metrics = trained
  main = [sys.executable, os.path.join(ROOT, 'main.py'), f'--workdir={workdir}']
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop('PARALLELNET_VERBOSE', None)
  cases = {
      'json': [f'--config={workdir}/config.json', '--mode=eval'],
      'plain': ['--config=configs/parallelnet.py:runlocal', '--mode=eval'],
      'contradiction': ['--config=configs/parallelnet.py:runlocal',
                        '--mode=eval', '--config.input.num_frames=32'],
  }
  start = lambda k: subprocess.Popen(main + cases[k], cwd=ROOT, env=env,
                                     text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
  finish = lambda p: (p.communicate(timeout=300), p.returncode)
  # 'json' first: 'plain' then finds its compiled programs in the tests'
  # compilation cache (conftest) instead of compiling them at the same time.
  first = start('json')
  contradiction = start('contradiction')  # Fails before compiling anything.
  out = {'json': finish(first)}
  out['plain'] = finish(start('plain'))
  out['contradiction'] = finish(contradiction)
  for k in ('json', 'plain'):
    (stdout, stderr), code = out[k]
    assert code == 0, stderr
    assert f"test_accuracy={metrics['accuracy']:.4f}" in stdout, stdout
  (stdout, stderr), code = out['contradiction']
  assert code == 1 and 'Traceback' not in stderr
  line = [l for l in stderr.splitlines() if l.startswith('error:')]
  assert line and 'input.num_frames=32' in line[0], stderr
  assert 'input.num_frames=48' in line[0], stderr


# --- The small-data recipe ---------------------------------------------------


SMALL_ACCURACY = 1.0  # docs/own_data.md, "2. Train with the small-data recipe".


@pytest.mark.slow
@pytest.mark.usefixtures('optimised_compile')
def test_the_small_recipe_on_40_pairs_reaches_the_documented_accuracy(
    tmp_path, pairs, caplog):
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  c = demo.get_config('small')
  c.dataset.name = 'iitr_sier'
  c.dataset.manual_dir = pairs
  c.dataset.data_dir = str(tmp_path / 'tfds')
  c.explain.after_train = False
  caplog.set_level('WARNING')
  metrics = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert 'fewer than config.train.min_val_examples=8' in caplog.text
  assert metrics['num_examples'] == 12
  assert metrics['accuracy'] >= SMALL_ACCURACY, metrics
  with open(DOC, encoding='utf-8') as f:
    assert f'test_accuracy={SMALL_ACCURACY:.4f}' in f.read()
