"""parallelnet.core.paths on a gs:// bucket (a local GCS emulator) and locally."""

import json
import threading

from etils import epath
import numpy as np
import pytest

from gcs_emulator import gcs  # pylint: disable=unused-import
from parallelnet.core import errors
from parallelnet.core import paths


@pytest.fixture(params=['local', 'gs'])
def root(request, tmp_path):
  """A fresh workdir: a local folder, then a folder in a fresh bucket."""
  if request.param == 'local':
    return str(tmp_path / 'run')
  return request.getfixturevalue('gcs').bucket() + '/run'


def test_json_round_trip_and_listing(root):
  cfg = paths.join(root, 'config.json')
  paths.write_json_atomic(cfg, {'a': 1, 'b': [1.5, 'x']})
  paths.write_text_atomic(paths.join(root, 'eval', 'metrics.csv'), 'a,b\r\n1,2\n')
  paths.write_bytes_atomic(paths.join(root, 'eval', 'cm.png'), b'\x89PNG')
  assert paths.read_json(cfg) == {'a': 1, 'b': [1.5, 'x']}
  assert paths.read_text(cfg).endswith('\n')
  assert paths.listdir(root) == ['config.json', 'eval']
  assert paths.isdir(paths.join(root, 'eval'))
  assert paths.listdir(paths.join(root, 'eval')) == ['cm.png', 'metrics.csv']
  assert paths.read_text(paths.join(root, 'eval', 'metrics.csv')) == (
      'a,b\r\n1,2\n')
  assert [p.rsplit('/', 1)[1] for p in paths.glob(root, 'eval/*.csv')] == [
      'metrics.csv']
  paths.copy(cfg, paths.join(root, 'copy', 'config.json'))
  assert paths.read_json(paths.join(root, 'copy', 'config.json'))['a'] == 1
  paths.remove(cfg)
  assert not paths.exists(cfg)
  paths.remove(cfg, missing_ok=True)
  paths.rmtree(paths.join(root, 'eval'))
  assert paths.listdir(root) == ['copy']
  paths.rmtree(paths.join(root, 'nothing'), missing_ok=True)


def test_atomic_write_visible_only_when_complete(root):
  target = paths.join(root, 'summary.json')
  paths.makedirs(root)
  inside, release = threading.Event(), threading.Event()
  seen = {}

  def writer():
    with paths.atomic_open(target, 'wb') as f:
      f.write(b'{"half": ')
      inside.set()
      release.wait(10)
      f.write(b'1}')

  t = threading.Thread(target=writer)
  t.start()
  assert inside.wait(10)
  seen['during'] = paths.exists(target)
  release.set()
  t.join()
  assert seen['during'] is False
  assert paths.read_json(target) == {'half': 1}
  assert paths.listdir(root) == ['summary.json']  # No temporary left.


def test_failed_atomic_write_leaves_nothing(root):
  target = paths.join(root, 'metrics.json')
  paths.write_json_atomic(target, {'old': True})
  with pytest.raises(RuntimeError):
    with paths.atomic_open(target) as f:
      f.write('{"new": ')
      raise RuntimeError('interrupted')
  assert paths.read_json(target) == {'old': True}
  assert paths.listdir(root) == ['metrics.json']


def test_copy_between_local_and_bucket(gcs, tmp_path):
  local = tmp_path / 'a.npz'
  np.savez(local, x=np.arange(3))
  url = gcs.bucket() + '/run/a.npz'
  paths.copy(local, url)
  back = tmp_path / 'b.npz'
  paths.copy(url, back)
  assert np.load(back)['x'].tolist() == [0, 1, 2]


def test_move_is_seen_by_epath_listings(root):
  """A folder moved away is gone from epath's listing (orbax lists steps
  through epath), even though epath listed the parent before the move."""
  paths.write_text_atomic(paths.join(root, 'latest', '2', 'meta'), 'x')
  paths.write_text_atomic(paths.join(root, 'latest', '1', 'meta'), 'x')
  before = sorted(p.name for p in epath.Path(root, 'latest').iterdir())
  assert before == ['1', '2']
  paths.makedirs(paths.join(root, 'damaged'))
  paths.move(paths.join(root, 'latest', '2'),
             paths.join(root, 'damaged', 'latest_2'))
  assert [p.name for p in epath.Path(root, 'latest').iterdir()] == ['1']
  assert not epath.Path(root, 'latest', '2').exists()
  assert paths.read_text(paths.join(root, 'damaged', 'latest_2', 'meta')) == 'x'


def test_check_workdir_url_accepts_good_ones(gcs, tmp_path):
  paths.check_workdir_url(str(tmp_path / 'new'))
  paths.check_workdir_url(gcs.bucket() + '/exp1')


@pytest.mark.parametrize('url, words', [
    ('ftp://host/run', ['--workdir=ftp://host/run', 'unknown scheme ftp://',
                        'gs://']),
    ('gs:///run', ['no bucket name']),
    ('gs://no-such-bucket-here/run', ['gs://no-such-bucket-here/run',
                                      'does not exist', 'create it']),
])
def test_check_workdir_url_one_line_errors(gcs, url, words):
  del gcs  # Only for the emulator's environment.
  with pytest.raises(errors.UserError) as e:
    paths.check_workdir_url(url)
  msg = str(e.value)
  assert '\n' not in msg
  for w in words:
    assert w in msg


def test_check_workdir_url_names_missing_credentials(monkeypatch):
  """What the GCS clients raise without credentials gives the login line."""

  class DefaultCredentialsError(Exception):
    pass

  def refuse(self):
    raise DefaultCredentialsError('Your default credentials were not found.')

  monkeypatch.setattr(type(epath.Path('gs://b/x')), 'exists', refuse)
  with pytest.raises(errors.UserError) as e:
    paths.check_workdir_url('gs://private-bucket/run')
  msg = str(e.value)
  assert '\n' not in msg
  assert 'gs://private-bucket/run' in msg
  assert 'gcloud auth application-default login' in msg

  def unreachable(self):
    raise ConnectionError('connection refused\nmore')

  monkeypatch.setattr(type(epath.Path('gs://b/x')), 'exists', unreachable)
  with pytest.raises(errors.UserError) as e:
    paths.check_workdir_url('gs://b/run')
  assert 'cannot reach gs://b' in str(e.value) and '\n' not in str(e.value)


def test_use_fsspec_for_gcs_respects_the_user(monkeypatch):
  monkeypatch.setenv('EPATH_USE_TF', 'true')
  assert paths.use_fsspec_for_gcs() is False
  assert paths.os.environ['EPATH_USE_TF'] == 'true'
  monkeypatch.delenv('EPATH_USE_TF')
  pytest.importorskip('gcsfs')
  try:
    assert paths.use_fsspec_for_gcs() is True
    assert paths.os.environ['EPATH_USE_TF'] == 'false'
  finally:
    monkeypatch.undo()
    paths.refresh_epath_backend()


@pytest.mark.slow  # ~5 s: orbax's first save and restore.
def test_orbax_checkpoint_manager_on_the_bucket(gcs):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  url = gcs.bucket() + '/run/checkpoints'
  tree = {'w': jnp.arange(10.0), 'b': {'x': jnp.ones((2, 3))}}
  with ocp.CheckpointManager(
      url, options=ocp.CheckpointManagerOptions(max_to_keep=2)) as mngr:
    for step in (1, 2, 3):
      mngr.save(step, args=ocp.args.StandardSave(
          {'w': tree['w'] * step, 'b': tree['b']}))
    mngr.wait_until_finished()
    assert mngr.all_steps() == [2, 3]
  with ocp.CheckpointManager(url) as mngr:
    assert mngr.latest_step() == 3
    restored = mngr.restore(3, args=ocp.args.StandardRestore(
        {'w': jnp.zeros(10), 'b': {'x': jnp.zeros((2, 3))}}))
  np.testing.assert_array_equal(restored['w'], np.arange(10.0) * 3)
  np.testing.assert_array_equal(restored['b']['x'], np.ones((2, 3)))
  assert paths.listdir(url) == ['2', '3']
  assert json.loads(json.dumps(paths.listdir(url)))  # Plain strings.


def test_split_spec_keeps_a_urls_scheme():
  assert paths.split_spec('gs://b/run/config.json') == (
      'gs://b/run/config.json', '', '')
  assert paths.split_spec('configs/demo.py:runlocal,n2=vgg16') == (
      'configs/demo.py', ':', 'runlocal,n2=vgg16')
  assert paths.split_spec('gs://b/c.py:a') == ('gs://b/c.py', ':', 'a')
  assert paths.split_spec('/tmp/config.json') == ('/tmp/config.json', '', '')
