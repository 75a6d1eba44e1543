"""parallelnet.core.cpu_flags: when the XLA:CPU flags apply, and that a
training step gives the same numbers with them as without."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from parallelnet.core import cpu_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tested_jaxlib(monkeypatch):
  monkeypatch.setattr(cpu_flags, '_jaxlib_version',
                      lambda: cpu_flags.TESTED_JAXLIB[0])


def test_adds_flags_on_cpu(tested_jaxlib):
  del tested_jaxlib
  env = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_dump_to=/tmp/x'}
  assert cpu_flags.apply(env) == list(cpu_flags.FLAGS)
  assert env['XLA_FLAGS'].split() == ['--xla_dump_to=/tmp/x',
                                      *cpu_flags.FLAGS]
  assert cpu_flags.apply(env) == []  # Idempotent.
  env = {'JAX_PLATFORMS': 'cpu'}
  cpu_flags.apply(env)
  assert env['XLA_FLAGS'] == ' '.join(cpu_flags.FLAGS)


def test_user_value_accelerators_and_other_jaxlib_left_alone(
    tested_jaxlib, monkeypatch):
  del tested_jaxlib
  mine = '--xla_cpu_experimental_ynn_fusion_type=eltwise'
  env = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': mine}
  assert cpu_flags.apply(env) == [] and env['XLA_FLAGS'] == mine
  for platforms in ('cuda', 'cpu,tpu'):
    env = {'JAX_PLATFORMS': platforms}
    assert cpu_flags.apply(env) == [] and 'XLA_FLAGS' not in env
  env = {'JAX_PLATFORMS': 'cpu', 'PARALLELNET_CPU_FLAGS': '0'}
  assert cpu_flags.apply(env) == [] and 'XLA_FLAGS' not in env
  monkeypatch.setattr(cpu_flags, '_jaxlib_version', lambda: '99.0')
  env = {'JAX_PLATFORMS': 'cpu'}
  assert cpu_flags.apply(env) == [] and 'XLA_FLAGS' not in env


# The fused training step of `runlocal` with train_helpers' tiny N2 trunk
# (one strided conv and a BatchNorm) in place of the VGG trunks: both
# branches, the fusion and every kind of op the flag can move (convolutions
# with their kernel gradients, dots, elementwise fusions, BatchNorm, Adam),
# at a fraction of the VGG trunks' compile time.
_CHILD = r'''
import json, os, sys
sys.path.insert(0, sys.argv[1])
from parallelnet.core import cpu_flags
added = cpu_flags.apply()
import jax, numpy as np
from bench import common, train_throughput
sys.path.insert(0, os.path.join(sys.argv[1], 'tests'))
import train_helpers
train_helpers.register_tiny_trunk()
config = common.load_config('parallelnet',
                            'runlocal,n2=' + train_helpers.TINY_TRUNK)
step = train_throughput.OursStep(config, train_throughput._batch(config, 8))
metrics = []
for _ in range(2):
  step.state, m = step.step(step.state, step.batch, step.rng)
  metrics.append([float(m['loss']), float(m['grad_norm'])])
params = np.concatenate([np.asarray(x).ravel() for x in
                         jax.tree_util.tree_leaves(step.state.params)])
print(json.dumps(dict(added=added, metrics=metrics,
                      lr=config.train.learning_rate,
                      ynn=step.step.as_text().count('__ynn_fusion'),
                      params=params.tolist())))
'''


@pytest.mark.slow  # Two fresh processes, each compiling a training step.
def test_training_step_equal_with_and_without_flags():
  procs = {}
  for mode in ('plain', 'flags'):  # Concurrently: each is mostly a compile.
    env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu',
               TF_CPP_MIN_LOG_LEVEL='2',
               PARALLELNET_CPU_FLAGS='0' if mode == 'plain' else '1')
    procs[mode] = subprocess.Popen(
        [sys.executable, '-c', _CHILD, REPO, mode], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  out = {}
  for mode, p in procs.items():
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-3000:]
    out[mode] = json.loads(stdout.strip().splitlines()[-1])
  if not out['flags']['added']:
    pytest.skip('cpu_flags does not apply to this jaxlib')
  assert out['plain']['added'] == []  # PARALLELNET_CPU_FLAGS=0.
  assert out['flags']['ynn'] < out['plain']['ynn']  # The flag took effect.
  # The first step's loss and gradient norm, from the same parameters: equal
  # to float32 rounding. The second step's loss too; its gradient norm
  # moves more (the parameters it starts from differ, see below).
  (f1, f2), (p1, p2) = out['flags']['metrics'], out['plain']['metrics']
  np.testing.assert_allclose(f1, p1, rtol=1e-5)
  np.testing.assert_allclose(f2[0], p2[0], rtol=1e-5)
  np.testing.assert_allclose(f2[1], p2[1], rtol=1e-2)
  # Parameters after two Adam steps: Adam divides by the gradient's own
  # scale, so a near-zero gradient's rounding moves its parameter by up to
  # lr per step; no parameter may differ by more than that.
  diff = np.abs(np.subtract(out['flags']['params'], out['plain']['params']))
  assert diff.max() <= 2 * 2 * out['plain']['lr'], diff.max()
