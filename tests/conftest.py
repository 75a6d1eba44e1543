"""Shared pytest fixtures. Others may append fixtures below; keep each tiny."""

import os
import shutil
import tempfile

import jax
import pytest


def pytest_configure(config):
  """One XLA compilation cache for the whole run, shared by every test, the
  xdist workers and the processes tests start (they inherit the variables):
  many tests compile the same tiny programs, and a hit skips the compile but
  not the run, so results are unchanged. The cache key holds XLA_FLAGS and
  the jax options, so differently compiled programs never share an entry.
  A cache the user set is left alone. Also TensorFlow's thread pools, below
  (values the user set are kept)."""
  # xdist workers inherit the controller's variables.
  if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    folder = tempfile.mkdtemp(prefix='parallelnet_xla_cache_')
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    os.environ['JAX_COMPILATION_CACHE_DIR'] = folder
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
  # One worker per core already: TensorFlow's pools (tf.data in every test
  # process) would each size themselves to all cores. One thread each: a
  # whole run used ~45 s less CPU (8:14 wall against 8:28-8:40).
  os.environ.setdefault('TF_NUM_INTEROP_THREADS', '1')
  os.environ.setdefault('TF_NUM_INTRAOP_THREADS', '1')
  jax.config.update('jax_compilation_cache_dir',
                    os.environ['JAX_COMPILATION_CACHE_DIR'])
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))


# Modules whose module-scoped fixtures are costly (processes, a built
# dataset, a trained model): each runs on one xdist worker, so the fixture is
# built once. Other modules' tests are spread over the workers one by one.
ONE_WORKER_MODULES = ('test_cli', 'test_construct', 'test_input_pipeline',
                      'test_modality', 'test_model', 'test_own_data',
                      'test_predict', 'test_pretrained')


@pytest.hookimpl(tryfirst=True)  # Before xdist reads the groups.
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    module = item.module.__name__.rpartition('.')[2]
    if (module in ONE_WORKER_MODULES and
        not item.get_closest_marker('xdist_group')):
      item.add_marker(pytest.mark.xdist_group(module))


def _most_optimizations_disabled(value):
  """Sets jax_disable_most_optimizations to `value` until the generator
  resumes, then restores it (for the fixtures below)."""
  before = jax.config.values.get('jax_disable_most_optimizations', False)
  jax.config.update('jax_disable_most_optimizations', value)
  yield
  jax.config.update('jax_disable_most_optimizations', before)


@pytest.fixture(scope="module")
def fast_compile():
  """Turns off most XLA optimisations for a test module: compile time dominates.

  Restores the previous value afterwards, so tests that time execution are
  not affected. Use with `pytestmark = pytest.mark.usefixtures('fast_compile')`.
  """
  yield from _most_optimizations_disabled(True)


@pytest.fixture
def optimised_compile():
  """Undoes a module's fast_compile for one test whose time is running (many
  epochs), not compiling."""
  yield from _most_optimizations_disabled(False)


@pytest.fixture
def tiny_trunk(monkeypatch):
  """Registers the N2 trunk 'tiny_bn' (config variant n2=tiny_bn):
  train_helpers.TinyBNTrunk, one strided conv and a BatchNorm as the
  registry's trunks use it, far cheaper to compile than VGG, for tests whose
  subject is not the trunk."""
  from parallelnet.models import backbones  # pylint: disable=g-import-not-at-top
  import train_helpers  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(backbones._REGISTRY, train_helpers.TINY_TRUNK,  # pylint: disable=protected-access
                      train_helpers.tiny_trunk)
  return train_helpers.TINY_TRUNK


@pytest.fixture(scope='session')
def readme_demo(tmp_path_factory):
  """The README's demo command, run once as a user runs it (a fresh dataset
  folder, default logging, stdout and stderr interleaved as on a terminal),
  for the tests that read its output or reuse its trained workdir
  (test_readme, test_cli). Tests that use it share the xdist group 'demo', so
  it runs once.

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


@pytest.fixture(scope="session")
def resume_reference(tmp_path_factory):
  """One uninterrupted run of tests/resume_worker.py, shared by the
  kill-and-resume tests (on disk and in a bucket), which compare their
  resumed runs with it: `workdir` (read it, never write), the `data_dir` it
  built, and `env`, whose persistent compilation cache it filled, so that
  their own runs skip XLA. Its tests share the xdist group
  'resume_reference', so it runs once."""
  import types  # pylint: disable=g-import-not-at-top
  import workers  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("resume_reference")
  env = dict(JAX_COMPILATION_CACHE_DIR=str(root / "xla"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  ref = types.SimpleNamespace(workdir=root / "full",
                              data_dir=str(root / "tfds"), env=env)
  workers.finish([workers.start("resume_worker", [ref.workdir, ref.data_dir],
                                root / "full.log", env=env)], timeout=600)
  return ref
