"""main.py as a user meets it: one line per mistake, exit code 1, no
traceback, nothing written; --help works; the progress helper's lines.

Subprocess runs cost a few seconds of imports each, so the cases that fail
at flag parsing (before TensorFlow/JAX load) come first and are cheap.
"""

import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import soundfile as sf

from parallelnet.core import progress
from tests import test_readme

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(env=None):
  full_env = dict(os.environ)
  full_env.pop('PARALLELNET_VERBOSE', None)
  # Importing jax (conftest) sets TF_CPP_MIN_LOG_LEVEL=1 here; a user's
  # shell does not have it.
  full_env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  full_env.update(env or {})
  return full_env


def start_main(*args, env=None, cwd=ROOT):
  """A running `python main.py args` (stdout, stderr captured)."""
  return subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'main.py'), *args],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
      env=_env(env))


def finish(p):
  """(returncode, stdout, stderr) of a start_main process."""
  out, err = p.communicate(timeout=300)
  return p.returncode, out, err


def run_main(*args, env=None, cwd=ROOT):
  """(returncode, stdout, stderr) of `python main.py args`."""
  return finish(start_main(*args, env=env, cwd=cwd))


def assert_user_error(result, *needles):
  code, out, err = result
  assert code == 1, (code, out, err)
  assert 'Traceback' not in out + err, err
  for n in needles:
    assert n in err, (n, err)


@pytest.mark.slow
def test_help_exits_0_and_examples_are_clean():
  code, out, err = run_main('--help')
  assert code == 0, err
  text = out + err
  assert '--config.dataset.manual_dir=/data/iitr_sier' in text
  for line in text.splitlines():
    if 'python main.py' in line:
      assert '   ' not in line.strip(), line  # no runs of stray spaces


@pytest.mark.slow
def test_misspelt_override_names_it_with_the_hint_on_its_own_line(tmp_path):
  workdir = tmp_path / 'w'
  result = run_main('--config=configs/demo.py', f'--workdir={workdir}',
                    '--mode=summary', '--config.train.batchsize=3')
  assert_user_error(result, '--config.train.batchsize=3',
                    "no config field 'batchsize'")
  err = result[2]
  assert '\nDid you mean "batch_size"' in err
  assert '\\n' not in err
  assert not workdir.exists()
  # --verbose (or the environment variable) brings the traceback back.
  code, _, err = run_main('--config=configs/demo.py', f'--workdir={workdir}',
                          '--mode=summary', '--config.train.batchsize=3',
                          env={'PARALLELNET_VERBOSE': '1'})
  assert code == 1 and 'Traceback' in err


@pytest.mark.slow
def test_missing_config_file(tmp_path):
  assert_user_error(
      run_main('--config=configs/nope.py', f'--workdir={tmp_path / "w"}',
               '--mode=summary'),
      '--config=configs/nope.py', 'no such file')
  assert not (tmp_path / 'w').exists()


def test_progress_lines_are_throttled_with_rate_and_time_left():
  now = [0.0]
  out = io.StringIO()
  p = progress.Progress(40, 'building train', stream=out, interval_s=5.0,
                        clock=lambda: now[0])
  for _ in range(40):
    now[0] += 0.5
    p.update()
  p.close()
  lines = out.getvalue().splitlines()
  # One line per 5 s of a 20 s job (10 items each), no duplicate at the end.
  assert lines == [
      'building train: 10/40 (25%)  2/s  0:00:15 left',
      'building train: 20/40 (50%)  2/s  0:00:10 left',
      'building train: 30/40 (75%)  2/s  0:00:05 left',
      'building train: 40/40 (100%)  2/s  0:00:20 total'], lines


def test_progress_rate_leaves_out_the_first_items_one_off_cost():
  """A first step that compiles for 30 s must not make 99 one-second steps
  look like 50 minutes."""
  now = [0.0]
  out = io.StringIO()
  p = progress.Progress(100, 'epoch 1', unit='steps', stream=out,
                        interval_s=10.0, clock=lambda: now[0])
  now[0] = 30.0
  p.update()
  for _ in range(10):
    now[0] += 1.0
    p.update()
  assert out.getvalue().splitlines() == [
      'epoch 1: 1/100 steps (1%)',  # No rate from one item.
      'epoch 1: 11/100 steps (11%)  1/s  0:01:29 left']


def test_progress_is_silent_for_short_steps_unless_asked():
  now = [0.0]
  out = io.StringIO()
  with progress.Progress(3, 'fold', stream=out, clock=lambda: now[0]) as p:
    p.update(3)
  assert out.getvalue() == ''
  p = progress.Progress(3, 'fold', stream=out, clock=lambda: now[0])
  now[0] = 1.5
  p.update(3)
  p.close(always=True)
  assert out.getvalue() == 'fold: 3/3 (100%)  2/s  0:00:01 total\n'


# ------------------------------------------- mistakes found after imports --
# Each case costs a JAX/TensorFlow import (~5 s of CPU): they run as
# concurrent processes, started together by one module fixture.


@pytest.fixture(scope='module')
def late_errors(tmp_path_factory):
  """{case: (returncode, stdout, stderr)} plus the paths they must not
  create."""
  tmp = tmp_path_factory.mktemp('cli')
  data_dir = tmp / 'tfds'
  (tmp / 'text.png').write_text('not an image')
  Image.new('RGB', (40, 30), (200, 30, 30)).save(tmp / 'ok.png')
  sf.write(tmp / 'ok.wav', np.zeros(4000, np.float32), 8000)
  (tmp / 'empty.wav').write_bytes(b'')
  common = [f'--config.dataset.data_dir={data_dir}']
  demo = ['--config=configs/demo.py', *common]
  cases = {
      'eval_new_workdir': [*demo, f'--workdir={tmp / "new"}', '--mode=eval'],
      'paper_no_dataset': ['--config=configs/parallelnet.py', *common,
                           f'--workdir={tmp / "paper"}', '--mode=train'],
      'text_as_png': [*demo, f'--workdir={tmp / "x1"}', '--mode=explain',
                      f'--image={tmp / "text.png"}',
                      f'--audio={tmp / "ok.wav"}'],
      'empty_wav': [*demo, f'--workdir={tmp / "x2"}', '--mode=explain',
                    f'--image={tmp / "ok.png"}',
                    f'--audio={tmp / "empty.wav"}'],
  }
  procs = {k: start_main(*v) for k, v in cases.items()}
  results = {k: finish(p) for k, p in procs.items()}
  return dict(results=results, tmp=tmp, data_dir=data_dir)


@pytest.mark.slow
def test_eval_before_training_names_the_workdir(late_errors):
  tmp = late_errors['tmp']
  assert_user_error(late_errors['results']['eval_new_workdir'],
                    f'--workdir={tmp / "new"}', 'Train first')
  assert not (tmp / 'new').exists()


@pytest.mark.slow
def test_missing_dataset_names_manual_dir_and_our_build_command(late_errors):
  tmp, data_dir = late_errors['tmp'], late_errors['data_dir']
  result = late_errors['results']['paper_no_dataset']
  assert_user_error(result, 'iitr_sier', 'config.dataset.manual_dir',
                    'python -m input_pipeline.build')
  err = result[2]
  assert 'downloads/manual' not in err and 'tfds build' not in err
  # No checkpoints, event file or TFDS stub left behind.
  assert not (tmp / 'paper').exists()
  assert not data_dir.exists()


@pytest.mark.slow
def test_bad_files_are_one_line_naming_the_file(late_errors):
  tmp = late_errors['tmp']
  results = late_errors['results']
  assert_user_error(results['text_as_png'], str(tmp / 'text.png'),
                    'undecodable image')
  assert_user_error(results['empty_wav'], str(tmp / 'empty.wav'),
                    'zero-length audio file')
  for case in ('text_as_png', 'empty_wav'):
    assert results[case][2].count('\n') <= 2, results[case][2]
  assert not (tmp / 'x1').exists() and not (tmp / 'x2').exists()


@pytest.mark.slow
def test_corrupt_and_missing_files_name_the_file(tmp_path):
  """The same UserError path, in process: corrupt WAV, missing file."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  from parallelnet.core import errors  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  config = demo.get_config()
  Image.new('RGB', (40, 30)).save(tmp_path / 'ok.png')
  (tmp_path / 'corrupt.wav').write_bytes(b'RIFF' + bytes(range(60)))
  with pytest.raises(errors.UserError,
                     match=r'audio .*corrupt\.wav: (corrupt|truncated)'):
    pipeline.preprocess_pair(config, str(tmp_path / 'ok.png'),
                             str(tmp_path / 'corrupt.wav'))
  with pytest.raises(errors.UserError, match=r'image .*nope\.png: missing'):
    pipeline.preprocess_pair(config, str(tmp_path / 'nope.png'),
                             str(tmp_path / 'corrupt.wav'))


# ------------------------------------------------------- the demo's log --


@pytest.mark.slow
@pytest.mark.xdist_group('demo')
def test_demo_log_is_short_and_a_rerun_says_it_had_finished(readme_demo,
                                                            tmp_path):
  """The demo through main.py with default logging (conftest.readme_demo):
  under 40 lines besides progress lines, one per epoch, no third-party INFO
  or progress bars, a closing line naming what was written. A second run of
  the finished training says so and evaluates; --verbosity brings the detail
  back. Explaining a user's pair prints a few lines, with a notice when the
  clip is longer than the model's."""
  assert readme_demo['returncode'] == 0, readme_demo['output']
  workdir, args = readme_demo['workdir'], readme_demo['args']
  out = readme_demo['output']
  lines = [l for l in out.splitlines()
           if not test_readme.PROGRESS.match(l)]
  assert len(lines) < 40, '\n'.join(lines)
  text = '\n'.join(lines)
  epochs = [l.split()[1] for l in lines if l.startswith('epoch ')]
  assert epochs and epochs == [f'{k}/15' for k in range(1, len(epochs) + 1)
                               ], text
  epoch_line = next(l for l in lines if l.startswith('epoch  1/15'))
  for field in ('loss', 'acc', 'val loss', 'val acc', 'lr', ' s'):
    assert field in epoch_line, epoch_line
  for noise in ('orbax', 'Generating splits', 'Shuffling', 'I1', 'W1',
                'oneDNN', 'Downloading', 'tfrecord'):
    assert noise not in text, (noise, text)
  test_accuracy = [l for l in lines if l.startswith('test_accuracy=')]
  assert len(test_accuracy) == 1, text
  last = lines[-1]  # The closing summary.
  assert last.startswith(f'Wrote in {workdir}: ') and all(
      w in last for w in ('checkpoints/', 'eval_metrics.json', 'explain/')), last

  # Two runs on the trained workdir, concurrently (the test's cost is
  # imports): the finished training again, and the user's own pair.
  Image.new('RGB', (50, 40), (200, 40, 40)).save(tmp_path / 'face.png')
  sf.write(tmp_path / 'long.wav', np.full(12000, 0.1, np.float32), 8000)
  rerun = start_main(*args, '--config.explain.after_train=False',
                     '--verbosity=1')
  pair = start_main(*args, '--mode=explain', f'--image={tmp_path / "face.png"}',
                    f'--audio={tmp_path / "long.wav"}')
  code, out2, err2 = finish(rerun)
  assert code == 0, err2
  assert 'Training in' in err2 and f'had finished ({len(epochs)} epochs' in err2, err2
  assert 'Resuming' not in err2
  assert 'Restored best checkpoint' in err2  # A --verbosity=1 line.
  assert out2.splitlines()[0] == test_accuracy[0]

  # The user's pair: a handful of lines, the clip-length notice first.
  code, out3, err3 = finish(pair)
  assert code == 0, err3
  lines3 = (out3 + err3).splitlines()
  assert len(lines3) <= 8, '\n'.join(lines3)
  assert 'long.wav is 1.50 s long; the model hears its first 0.99 s' in err3
  assert 'prediction: ' in out3 and 'baseline input' in out3
  assert os.path.exists(os.path.join(workdir, 'explain', 'face__long.png'))


@pytest.mark.slow
def test_audio_longer_or_shorter_than_the_clip_gets_a_notice(tmp_path):
  from configs import demo  # pylint: disable=g-import-not-at-top
  from input_pipeline import audio  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  config = demo.get_config()  # 8 kHz, a 0.992 s clip (7936 samples).
  Image.new('RGB', (40, 30)).save(tmp_path / 'ok.png')
  n = audio.num_samples(config.input)
  notices = {}
  for name, length in (('long', 12000), ('short', 4000), ('exact', n)):
    sf.write(tmp_path / f'{name}.wav', np.full(length, 0.1, np.float32), 8000)
    pair = pipeline.preprocess_pair(config, str(tmp_path / 'ok.png'),
                                    str(tmp_path / f'{name}.wav'))
    notices[name] = pair['audio_notice']
    assert pair['audio_seconds'] == pytest.approx(length / 8000)
    assert pair['waveform'].shape == (n,)
  assert 'long.wav is 1.50 s long' in notices['long']
  assert 'first 0.99 s' in notices['long']
  assert 'short.wav is 0.50 s long' in notices['short']
  assert "model's 0.99 s clip" in notices['short']
  assert notices['exact'] is None


@pytest.mark.slow
def test_unimodal_explanations_report_only_the_used_modality(
    monkeypatch, tmp_path):
  """A SER-only model: no image cue rates, scores or figure panels."""
  import test_explain_run as ter  # pylint: disable=g-import-not-at-top
  from explain import figures  # pylint: disable=g-import-not-at-top
  from explain import run  # pylint: disable=g-import-not-at-top
  config, _ = ter.fakes.__wrapped__(monkeypatch)
  config.model.modalities = 'speech'
  shown = []
  real = figures.make_figure
  monkeypatch.setattr(figures, 'make_figure', lambda **kw: shown.append(
      kw['modalities']) or real(**kw))
  summary = run.explain_dataset(config, str(tmp_path))
  assert 'speech_cue_hit_rate' in summary
  assert not any(k.startswith('image_cue') for k in summary), summary.keys()
  for rec in summary['examples']:
    assert set(rec['modality_scores']) == {'speech'}
    assert 'top_image_region_hits_cue' not in rec
  assert shown == [('speech',)] * 3
