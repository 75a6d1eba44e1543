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
