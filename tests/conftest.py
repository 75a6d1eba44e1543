"""Shared pytest fixtures. Others may append fixtures below; keep each tiny."""

import jax
import pytest


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
  """Registers the N2 trunk 'tiny_bn' (config variant n2=tiny_bn):
  train_helpers.TinyBNTrunk, one strided conv and a BatchNorm as the
  registry's trunks use it, far cheaper to compile than VGG, for tests whose
  subject is not the trunk."""
  from parallelnet.models import backbones  # pylint: disable=g-import-not-at-top
  import train_helpers  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(backbones._REGISTRY, train_helpers.TINY_TRUNK,  # pylint: disable=protected-access
                      train_helpers.tiny_trunk)
  return train_helpers.TINY_TRUNK


@pytest.fixture(scope="session")
def resume_reference(tmp_path_factory):
  """One uninterrupted run of tests/resume_worker.py, shared by the
  kill-and-resume tests (on disk and in a bucket), which compare their
  resumed runs with it: `workdir` (read it, never write), the `data_dir` it
  built, and `env`, whose persistent compilation cache it filled, so that
  their own runs skip XLA."""
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
