"""XLA:CPU settings that make our training step faster on CPU, on by default.

`apply()` appends FLAGS to $XLA_FLAGS, which XLA reads when JAX starts its
backend, so entry points call it before the first JAX computation. Each
flag is added only when the run is CPU-only (JAX_PLATFORMS names only cpu,
or no GPU/TPU plugin is installed), the installed jaxlib is one the flag
was measured on (an unknown flag aborts XLA), and $XLA_FLAGS does not
already set it (the user's value wins). Measurements: BENCHMARKS.md, "XLA:CPU
flags".
"""

import importlib.metadata
import importlib.util
import os

# --xla_cpu_experimental_ynn_fusion_type=dot: YNNPACK fuses dots only, so
# convolutions run on XLA's own (Eigen) kernels, whose kernel gradients
# (contraction over the batch) are 2-3x faster than YNNPACK's; values equal
# to float32 rounding (tests/test_cpu_flags.py).
FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=dot',)
TESTED_JAXLIB = ('0.10.2',)  # jaxlib versions that know FLAGS.

_ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin',
                        'jax_rocm60_plugin', 'jax_rocm7_plugin', 'libtpu',
                        'jax_plugins.xla_cuda12', 'jax_plugins.xla_cuda13')
_OFF = 'PARALLELNET_CPU_FLAGS'  # =0 turns apply() off.


def _cpu_only(env) -> bool:
  platforms = env.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return {p.strip() for p in platforms.split(',') if p.strip()} == {'cpu'}
  for name in _ACCELERATOR_PLUGINS:
    try:
      if importlib.util.find_spec(name) is not None:
        return False
    except (ImportError, ValueError):
      continue
  return True


def _jaxlib_version():
  try:
    return importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return None


def apply(env=None) -> list[str]:
  """Adds FLAGS to env['XLA_FLAGS'] (default os.environ) where they apply.

  Returns the flags added (empty when none applied).
  """
  env = os.environ if env is None else env
  if env.get(_OFF, '1') in ('0', 'false', 'no'):
    return []
  if _jaxlib_version() not in TESTED_JAXLIB or not _cpu_only(env):
    return []
  current = env.get('XLA_FLAGS', '')
  names = {f.lstrip('-').split('=', 1)[0] for f in current.split()}
  added = [f for f in FLAGS if f.lstrip('-').split('=', 1)[0] not in names]
  if added:
    env['XLA_FLAGS'] = ' '.join([current.strip()] + added).strip()
  return added
