"""--workdir=gs://... end to end, on a local GCS emulator (gcs_emulator.py):
training and a restart that restores from the bucket, eval, explain,
predict and the report from the bucket, a damaged checkpoint in the bucket,
and bad URLs refused in one line with nothing left behind."""

import logging
import os
import subprocess
import sys

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
                     env=dict(os.environ, PYTHONPATH=ROOT, **env))
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
def test_train_in_a_bucket_resume_then_eval_explain_predict(gcs, tmp_path):
  """resume_worker.py (real pipeline, a checkpoint every step) on a bucket:
  trained, then started again on the same workdir it restores from the
  bucket and says it had finished; then main.py eval, and explain, predict
  and the report from the same bucket. (Killing a run mid-way on a bucket is
  not tested here: on the emulator the tiny run finished before its
  checkpoints were listed; tests/test_train.py kills one on disk.)"""
  data_dir = str(tmp_path / 'tfds')
  bucket = gcs.bucket()
  killed = bucket + '/run'
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  env = dict(gcs.env, PYTHONPATH=ROOT,
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'xla'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  _train(killed, data_dir, env, tmp_path / 'first.log')
  assert max(_latest_steps(killed)) == 6, _latest_steps(killed)
  expected = paths.read_json(paths.join(killed, 'eval_metrics.json'))
  out_b = _train(killed, data_dir, env, tmp_path / 'again.log')
  assert 'had finished' in out_b, out_b[-3000:]
  assert paths.read_json(paths.join(killed, 'eval_metrics.json')) == expected

  import jax  # pylint: disable=g-import-not-at-top
  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, HERE)
  import resume_worker  # pylint: disable=g-import-not-at-top
  cfg = resume_worker.config(data_dir)
  names = paths.listdir(killed)
  assert {'config.json', 'history.jsonl', 'confusion_matrix.png'} <= set(
      names), names
  assert any(n.startswith('events.out.tfevents.') for n in names), names

  # eval through main.py: the workdir's config.json gives the model.
  code, out, err = _main(
      [f'--config={DEMO}', f'--workdir={killed}', '--mode=eval'],
      gcs.env, cwd=cwd)
  assert code == 0, err[-3000:]
  assert f"test_accuracy={expected['accuracy']:.4f}" in out
  assert out.splitlines()[-1].startswith(f'Wrote in {killed}: '), out
  assert 'eval_metrics.json' in out.splitlines()[-1]

  # explain, predict and the report, in this process.
  from explain import report  # pylint: disable=g-import-not-at-top
  from explain import run as explain_run  # pylint: disable=g-import-not-at-top
  from parallelnet import predict  # pylint: disable=g-import-not-at-top
  c = checkpointing.config_for_workdir(cfg, killed)
  with c.unlocked():
    c.explain.num_examples = 2
    c.explain.depth = 1
    c.explain.baseline = 'mean'  # Exercises the baseline cache.
  explain_run.explain_dataset(c, killed)
  ex = paths.join(killed, 'explain')
  summary = paths.read_json(paths.join(ex, 'summary.json'))
  npz = paths.glob(ex, '*.npz')
  assert paths.join(ex, 'baseline_mean.npz') in npz
  assert len(npz) == 3 and paths.glob(ex, '*_kept.wav'), paths.listdir(ex)
  assert summary['num_examples'] == 2
  arrays = paths.read_npz(next(p for p in npz if 'baseline' not in p))
  assert np.isfinite(arrays['speech_map']).all()
  out = predict.predict(c, killed)
  assert out['accuracy'] == pytest.approx(expected['accuracy'])
  rows = paths.read_text(paths.join(killed, 'predictions.csv')).splitlines()
  assert rows[0].startswith('id,') and len(rows) > 1
  page = report.write_report(killed)
  assert page == paths.join(killed, 'report', 'index.html')
  html = paths.read_text(page)
  assert 'Test metrics' in html and 'Training curves' in html
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
