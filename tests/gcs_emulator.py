"""A local GCS emulator for tests of gs:// workdirs.

`gcs` (session scope) starts `gcp-storage-emulator` (with the generation
preconditions tensorstore needs: gcs_emulator_server.py) in memory on a free
loopback port, points every client at it through its standard variables
(gcsfs and google-cloud-storage: STORAGE_EMULATOR_HOST; tensorstore, hence
orbax: TENSORSTORE_GCS_HTTP_URL and GOOGLE_AUTH_TOKEN_FOR_TESTING; gcsfs's
credentials: FSSPEC_GCS_TOKEN=anon; etils.epath: EPATH_USE_TF=false, since
TF's GCS client cannot be pointed at an emulator), restores them afterwards
and stops the server. `gcs.bucket()` makes a fresh bucket and returns its URL.

Use in a test module:

  from gcs_emulator import gcs  # pylint: disable=unused-import

  def test_x(gcs):
    url = gcs.bucket() + '/run'

`gcs.env` is the environment a subprocess needs to reach the emulator too.
Tests skip when the emulator or gcsfs is not installed (requirements.txt
pins both).
"""

import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from parallelnet.core import paths

DEFAULT_BUCKET = 'parallelnet-test'


def _free_port() -> int:
  with contextlib.closing(socket.socket()) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def emulator_env(endpoint: str) -> dict:
  """The variables that point gcsfs, tensorstore and epath at `endpoint`."""
  return dict(STORAGE_EMULATOR_HOST=endpoint,
              TENSORSTORE_GCS_HTTP_URL=endpoint,
              GOOGLE_AUTH_TOKEN_FOR_TESTING='test',
              FSSPEC_GCS_TOKEN='anon',
              EPATH_USE_TF='false')


class Emulator:
  """A running emulator: its endpoint, environment and bucket factory."""

  def __init__(self, endpoint: str):
    self.endpoint = endpoint
    self.env = emulator_env(endpoint)
    self._ids = itertools.count()

  def bucket(self, prefix: str = 'bkt') -> str:
    """Creates a new, empty bucket; returns 'gs://<name>'."""
    name = f'{prefix}-{os.getpid()}-{next(self._ids)}'
    req = urllib.request.Request(
        f'{self.endpoint}/storage/v1/b?project=test',
        data=json.dumps({'name': name}).encode(),
        headers={'Content-Type': 'application/json'}, method='POST')
    with urllib.request.urlopen(req, timeout=10) as r:
      r.read()
    return f'gs://{name}'


def _wait_until_up(endpoint: str, proc, timeout_s: float = 30.0):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      proc.stdout.seek(0)
      out = proc.stdout.read().decode(errors='replace')
      raise RuntimeError(f'gcp-storage-emulator exited:\n{out[-2000:]}')
    try:
      with urllib.request.urlopen(f'{endpoint}/storage/v1/b', timeout=2):
        return
    except urllib.error.HTTPError:
      return  # Up: it answers, even if with an error status.
    except OSError:
      time.sleep(0.1)
  raise RuntimeError(f'gcp-storage-emulator did not answer at {endpoint} '
                     f'within {timeout_s:.0f} s')


@pytest.fixture(scope='session')
def gcs():
  """A GCS emulator for the whole session (see the module docstring)."""
  pytest.importorskip('gcp_storage_emulator')
  pytest.importorskip('gcsfs')
  port = _free_port()
  endpoint = f'http://127.0.0.1:{port}'
  # Its log goes to a file: a pipe nobody reads fills up after a few
  # thousand requests and then blocks the server.
  log = tempfile.TemporaryFile()
  proc = subprocess.Popen(
      [sys.executable, os.path.join(os.path.dirname(__file__),
                                    'gcs_emulator_server.py'), 'start',
       '--host=127.0.0.1', f'--port={port}', '--in-memory',
       f'--default-bucket={DEFAULT_BUCKET}'],
      stdout=log, stderr=subprocess.STDOUT)
  proc.stdout = log
  saved = {}
  try:
    _wait_until_up(endpoint, proc)
    emulator = Emulator(endpoint)
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    paths.refresh_epath_backend()
    with _fsspec_token('anon'):
      yield emulator
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    paths.refresh_epath_backend()
    _clear_gcsfs_instances()
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    proc.stdout.close()


@contextlib.contextmanager
def _fsspec_token(token):
  """fsspec reads FSSPEC_GCS_TOKEN once, at import: set its config too."""
  import fsspec.config  # pylint: disable=g-import-not-at-top
  conf = fsspec.config.conf
  before = dict(conf.get('gcs', {}))
  conf.setdefault('gcs', {})['token'] = token
  _clear_gcsfs_instances()
  try:
    yield
  finally:
    conf['gcs'] = before
    if not before:
      del conf['gcs']


def _clear_gcsfs_instances():
  """Drops fsspec's cached gcsfs instances, which remember the endpoint."""
  with contextlib.suppress(ImportError):
    import gcsfs  # pylint: disable=g-import-not-at-top
    gcsfs.GCSFileSystem.clear_instance_cache()
