"""main.py as a user meets it: one line per mistake, exit code 1, no
traceback, nothing written; --help works; the progress helper's lines.

Subprocess runs cost a few seconds of imports each, so the cases that fail
at flag parsing (before TensorFlow/JAX load) come first and are cheap.
"""

import io
import os
import subprocess
import sys

import pytest

from input_pipeline import progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, env=None, cwd=ROOT):
  """(returncode, stdout, stderr) of `python main.py args`."""
  full_env = dict(os.environ, **(env or {}))
  full_env.pop('PARALLELNET_VERBOSE', None)
  full_env.update(env or {})
  p = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args],
                     capture_output=True, text=True, cwd=cwd, env=full_env,
                     timeout=300)
  return p.returncode, p.stdout, p.stderr


def assert_user_error(result, *needles):
  code, out, err = result
  assert code == 1, (code, out, err)
  assert 'Traceback' not in out + err, err
  for n in needles:
    assert n in err, (n, err)


def test_help_exits_0_and_examples_are_clean():
  code, out, err = run_main('--help')
  assert code == 0, err
  text = out + err
  assert '--config.dataset.manual_dir=/data/iitr_sier' in text
  for line in text.splitlines():
    if 'python main.py' in line:
      assert '   ' not in line.strip(), line  # no runs of stray spaces


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
