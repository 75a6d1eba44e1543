"""Shared pytest fixtures. Others may append fixtures below; keep each tiny."""

import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import pytest


def pytest_configure(config):
  """One XLA compilation cache for the whole run, shared by every test, the
  xdist workers and the processes tests start (they inherit the variables):
  many tests compile the same tiny programs, and a hit skips the compile but
  not the run, so results are unchanged. The cache key holds XLA_FLAGS and
  the jax options, so differently compiled programs never share an entry.
  A cache the user set is left alone."""
  # xdist workers inherit the controller's variables.
  if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    folder = tempfile.mkdtemp(prefix='parallelnet_xla_cache_')
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    os.environ['JAX_COMPILATION_CACHE_DIR'] = folder
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
  jax.config.update('jax_compilation_cache_dir',
                    os.environ['JAX_COMPILATION_CACHE_DIR'])
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))


@pytest.fixture(scope="module")
def fast_compile():
  """Turns off most XLA optimisations for a test module: compile time dominates.

  Restores the previous value afterwards, so tests that time execution are
  not affected. Use with `pytestmark = pytest.mark.usefixtures('fast_compile')`.
  """
  before = jax.config.values.get('jax_disable_most_optimizations', False)
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', before)


@pytest.fixture
def tiny_trunk(monkeypatch):
  """Registers the N2 trunk 'tiny_bn' (config variant n2=tiny_bn): one
  strided conv and a BatchNorm as the registry's trunks use it, far cheaper
  to compile than VGG, for tests whose subject is not the trunk."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from parallelnet.models import backbones  # pylint: disable=g-import-not-at-top
  from parallelnet.models import common  # pylint: disable=g-import-not-at-top

  class TinyBNTrunk(nn.Module):
    width: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
      x = nn.Conv(4, (3, 3), strides=(4, 4), name='conv')(x)
      return nn.relu(common.batch_norm(train, self.dtype, 'bn')(x))

  monkeypatch.setitem(backbones._REGISTRY, 'tiny_bn',  # pylint: disable=protected-access
                      lambda width, dtype, **kw: TinyBNTrunk(width, dtype,
                                                             **kw))
  return 'tiny_bn'


@pytest.fixture(scope='session')
def readme_demo(tmp_path_factory):
  """The README's demo command, run once as a user runs it (a fresh dataset
  folder, default logging, stdout and stderr interleaved as on a terminal),
  for the tests that read its output or reuse its trained workdir
  (test_readme, test_cli). Tests that use it share the xdist group 'demo'.

  Returns dict(returncode, output, workdir, data_dir, args): `args` are the
  main.py flags to run again on the same workdir.
  """
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  tmp = tmp_path_factory.mktemp('readme_demo')
  workdir, data_dir = str(tmp / 'demo'), str(tmp / 'tfds')
  args = ['--config=configs/demo.py', f'--workdir={workdir}',
          f'--config.dataset.data_dir={data_dir}']
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env.pop('PARALLELNET_VERBOSE', None)
  # Importing jax sets TF_CPP_MIN_LOG_LEVEL here; a user's shell has none.
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  p = subprocess.run([sys.executable, 'main.py', *args], cwd=root, env=env,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                     text=True, timeout=1800, check=False)
  return dict(returncode=p.returncode, output=p.stdout, workdir=workdir,
              data_dir=data_dir, args=args)
