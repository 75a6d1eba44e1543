"""--workdir=gs://... end to end, on a local GCS emulator (gcs_emulator.py):
training killed mid-run and resumed from the bucket to the metrics of an
uninterrupted run, eval, explain, predict and the report from the bucket, a
damaged checkpoint in the bucket, and bad URLs refused in one line with
nothing left behind. (test_pod.py runs 2 processes on one bucket.)"""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gcs_emulator import gcs  # pylint: disable=unused-import
from parallelnet.core import paths
import workers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEMO = os.path.join(ROOT, 'configs', 'demo.py')


def _url_folders(*folders):
  """Local folders named like a URL ('gs:', 'ftp:'): there must be none."""
  return [os.path.join(f, n) for f in folders for n in os.listdir(f)
          if n.endswith(':')]


def _main(args, env, cwd):
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args],
                     capture_output=True, text=True, cwd=cwd, timeout=600,
                     env=dict(os.environ, **dict(env, PYTHONPATH=ROOT)))
  return r.returncode, r.stdout, r.stderr


def test_main_refuses_bad_urls_in_one_line(gcs, tmp_path):
  for url, words in (('ftp://host/run', 'unknown scheme ftp://'),
                     ('gs://no-such-bucket-pn/run', 'does not exist')):
    code, out, err = _main([f'--config={DEMO}', f'--workdir={url}'],
                           gcs.env, cwd=tmp_path)
    lines = err.strip().splitlines()  # The error, then where --verbose is.
    assert code == 1 and len(lines) == 2 and 'Traceback' not in err, (out, err)
    assert url in lines[0] and words in lines[0], lines[0]
  assert not paths.exists('gs://no-such-bucket-pn')
  assert not os.listdir(tmp_path)  # Nothing left behind, no 'ftp:' folder.


def _train(workdir, data_dir, env, log):
  """resume_worker's training on `workdir` in a fresh process (the one
  multi-process harness, tests/workers.py); returns its output."""
  return workers.finish([workers.start('resume_worker', [workdir, data_dir],
                                       log, env=env)], timeout=600)[0]


def _latest_steps(workdir):
  latest = paths.join(workdir, 'checkpoints', 'latest')
  try:
    return [int(n) for n in paths.listdir(latest) if n.isdigit()]
  except (FileNotFoundError, OSError):
    return []


@pytest.mark.slow
@pytest.mark.usefixtures('fast_compile')
@pytest.mark.xdist_group('resume_reference')
def test_train_in_a_bucket_killed_resumed_then_eval_explain_predict(
    gcs, tmp_path, resume_reference):
  """resume_worker.py (real pipeline, a checkpoint every step) on a bucket:
  killed (SIGKILL) mid-run once its step-4 checkpoint is in the bucket, then
  started again on the same workdir, it resumes from the bucket and ends
  with the metrics of an uninterrupted run (conftest's resume_reference, on
  disk, whose compilation cache these runs reuse). Then eval, explain
  through main.py with --config=<the bucket's config.json> (recorded as that
  URL), predict and the report, all from the bucket."""
  data_dir = resume_reference.data_dir
  killed = gcs.bucket() + '/run'
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  env = dict(gcs.env, PYTHONPATH=ROOT, **resume_reference.env)
  b = workers.start('resume_worker', [killed, data_dir, 4],
                    tmp_path / 'killed.log', env=env)
  deadline = time.time() + 300
  while 'paused after checkpoint 4' not in b.output():
    assert b.popen.poll() is None, b.output()[-3000:]
    assert time.time() < deadline, b.output()[-3000:]
    time.sleep(0.1)
  b.popen.send_signal(signal.SIGKILL)
  b.popen.wait()
  assert max(_latest_steps(killed)) == 4, _latest_steps(killed)
  assert not paths.exists(paths.join(killed, 'eval_metrics.json'))
  out_b = _train(killed, data_dir, env, tmp_path / 'resumed.log')
  assert 'Resuming at epoch 2, step 1 of the epoch (global step 4)' in out_b
  expected = json.loads(
      (resume_reference.workdir / 'eval_metrics.json').read_text())
  assert paths.read_json(paths.join(killed, 'eval_metrics.json')) == expected
  assert max(_latest_steps(killed)) == 6, _latest_steps(killed)

  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, HERE)
  import resume_worker  # pylint: disable=g-import-not-at-top
  cfg = resume_worker.config(data_dir)
  names = paths.listdir(killed)
  assert {'config.json', 'history.jsonl', 'confusion_matrix.png'} <= set(
      names), names
  assert any(n.startswith('events.out.tfevents.') for n in names), names
  c = checkpointing.config_for_workdir(cfg, killed)
  assert train.evaluate(c, killed) == expected

  # explain through main.py: the model from the bucket's config.json.
  config_url = paths.join(killed, 'config.json')
  code, out, err = _main(
      [f'--config={config_url}', f'--workdir={killed}', '--mode=explain',
       '--config.explain.num_examples=2', '--config.explain.depth=1',
       '--config.explain.baseline=mean'],  # Exercises the baseline cache.
      env, cwd=cwd)
  assert code == 0, err[-3000:]
  assert out.splitlines()[-1].startswith(f'Wrote in {killed}: '), out
  runs = paths.read_text(paths.join(killed, 'runs.jsonl')).splitlines()
  assert json.loads(runs[-1])['config_file'] == config_url, runs[-1]
  ex = paths.join(killed, 'explain')
  summary = paths.read_json(paths.join(ex, 'summary.json'))
  npz = paths.glob(ex, '*.npz')
  assert paths.join(ex, 'baseline_mean.npz') in npz
  assert len(npz) == 3 and paths.glob(ex, '*_kept.wav'), paths.listdir(ex)
  assert summary['num_examples'] == 2
  arrays = paths.read_npz(next(p for p in npz if 'baseline' not in p))
  assert np.isfinite(arrays['speech_map']).all()
  html = paths.read_text(paths.join(killed, 'report', 'index.html'))
  assert 'Test metrics' in html and 'Training curves' in html
  assert f'{config_url} defaults' in html  # Its config.json read back.

  # predict, in this process.
  from parallelnet import predict  # pylint: disable=g-import-not-at-top
  out = predict.predict(c, killed)
  assert out['accuracy'] == pytest.approx(expected['accuracy'])
  rows = paths.read_text(paths.join(killed, 'predictions.csv')).splitlines()
  assert rows[0].startswith('id,') and len(rows) > 1
  assert not _url_folders(str(cwd), str(tmp_path), ROOT, os.getcwd())


@pytest.mark.slow
@pytest.mark.usefixtures('fast_compile')
def test_damaged_checkpoint_in_a_bucket_falls_back(gcs, caplog):
  """As tests/test_checkpoint_damage.py on disk: the newest `latest` step,
  damaged in the bucket, is set aside and training resumes from the one
  before."""
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  import train_helpers  # pylint: disable=g-import-not-at-top

  def config(num_epochs):
    c = train_helpers.tiny_config()
    c.model.modalities = 'speech'
    c.train.num_epochs = num_epochs
    c.train.checkpoint_every_steps = 1
    return c

  data = train_helpers.ArrayData(config(1), sizes=(16, 8, 8))
  workdir = gcs.bucket() + '/run'
  train.train_and_evaluate(config(1), workdir, data=data)
  assert _latest_steps(workdir) == [1, 2]
  state = paths.join(workdir, 'checkpoints', 'latest', '2', 'state')
  files = [paths.join(state, rel) for rel, _ in paths.files_with_mtimes(state)
           if '/d/' in f'/{rel}']
  assert files, paths.listdir(state)
  for p in files:
    data_bytes = bytearray(paths.read_bytes(p))
    start = min(1000, len(data_bytes) // 2)
    data_bytes[start:start + 200] = b'\x5a' * len(
        data_bytes[start:start + 200])
    paths.write_bytes_atomic(p, bytes(data_bytes))
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(config(2), workdir, data=data)
  assert f'{workdir}/checkpoints/latest/2 is damaged' in caplog.text
  assert f'Resuming from {workdir}/checkpoints/latest/1' in caplog.text
  assert paths.isdir(paths.join(workdir, 'checkpoints', 'damaged',
                                'latest_2'))
  assert _latest_steps(workdir) == [3, 4]
