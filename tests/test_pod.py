"""Multi-host behaviour with 2 processes on localhost (jax.distributed, CPU):
the shared-storage check, the build barrier whichever process arrives first,
process-0-only writes, the fallback past a damaged checkpoint, and a
training of both in one gs:// workdir (a local GCS emulator).
Both processes run tests/pod_worker.py."""

import json
import os

import pytest

from gcs_emulator import gcs  # pylint: disable=unused-import
from parallelnet.core import paths
import workers

pytestmark = pytest.mark.slow  # Several processes or a whole demo run.


def test_two_processes_storage_check_build_barrier_writes_and_bucket(
    tmp_path, gcs):
  bucket_work = gcs.bucket() + '/run'
  # A process that skips a barrier leaves the other one waiting: timeout.
  workers.finish(workers.start_group(
      'pod_worker', lambda i: [tmp_path, tmp_path / f'p{i}.json', bucket_work],
      tmp_path, name='log', env=gcs.env), timeout=300)
  p0, p1 = (json.loads((tmp_path / f'p{i}.json').read_text())
            for i in range(2))

  # Separate data_dirs: both processes fail, naming data_dir, not workdir.
  for i, out in enumerate((p0, p1)):
    msg = out['separate_error']  # Each names the path it was given.
    assert f"data_dir '{tmp_path / f'local{i}' / 'tfds'}'" in msg
    assert 'process(es) 1 do not see' in msg
    assert 'shared storage' in msg and 'GCS' in msg and 'NFS' in msg
    assert 'workdir' not in msg
  # The token files are gone from every folder.
  leftovers = [f for _, _, files in os.walk(tmp_path) for f in files
               if f.startswith('.parallelnet_shared_check_')]
  assert not leftovers

  # Process 0 built before process 1 arrived: process 0 still waited for it.
  assert p0['late_return'] >= p1['late_arrive']
  # Process 1 arrived first at an unbuilt dataset and waited for process 0.
  assert not p1['early_saw_built']
  assert p1['early_return'] >= p0['early_arrive']
  for out in (p0, p1):
    assert out['late_examples'] == out['early_examples'] == 6

  # Only process 0 wrote metrics, the figure and the config.
  assert p0['written'] == ['config.json', 'confusion_matrix.png',
                           'eval_metrics.json']
  assert p1['written'] == []

  # A damaged newest checkpoint: both processes restored step 1, and the
  # damaged step was set aside once.
  for out in (p0, p1):
    assert out['restored_epoch'] == 1 and out['restored_w'] == 1.0
    assert out['latest_after'] == [1]
  assert os.listdir(tmp_path / 'shared' / 'work' / 'checkpoints' /
                    'damaged') == ['latest_2']

  # Both trained in the bucket: one run, its checkpoints and outputs there
  # (process 0's), the shared-storage check's token gone from it.
  assert p0['bucket_metrics'] == p1['bucket_metrics']
  assert paths.read_json(paths.join(bucket_work, 'eval_metrics.json')) == (
      p0['bucket_metrics'])
  assert p0['bucket_metrics']['checkpoint_step'] == 2
  assert paths.listdir(paths.join(bucket_work, 'checkpoints', 'latest')) == [
      '1', '2']
  assert paths.listdir(paths.join(bucket_work, 'checkpoints', 'best')) == [
      '2']
  assert not [n for n in paths.listdir(bucket_work)
              if n.startswith('.parallelnet_shared_check_')]
