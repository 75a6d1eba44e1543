"""Results that must not depend on how the work is spread over devices and
processes: training steps (tests/multi_worker.py) and explanations
(tests/explain_worker.py) on 1, 4 and 8 simulated CPU devices, and on 2
processes x 2 devices joined by jax.distributed on localhost.

The device count must be fixed before JAX starts, so both run in
subprocesses of tests/workers.py, and to pay for starting Python, JAX and
jax.distributed as few times as possible each process runs both jobs, one
after the other (the module's `runs`, shared by its tests):
- one process with 8 devices: training on meshes of 8, 4 and 1 devices;
  then explanations seeing 1 device, then 4 (--local_devices);
- 2 processes x 2 devices: training on their 4 devices, then explanations.
"""

import json
import os
import types

import numpy as np
import pytest

import explain_worker
import workers

# One xdist worker runs the module, so `runs` runs once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group('multi_process')]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Runs both processes' jobs (all at once); returns their output paths:
  `single` (training on 8, 4 and 1 devices), `pair0`/`pair1` (training on
  2 processes x 2 devices), `compare` (dncshap_batch on 1 vs 4 devices),
  and the explain workdirs `one`, `four`, `p0`, `p1`."""
  tmp = tmp_path_factory.mktemp('multi_process')
  out = types.SimpleNamespace(
      single=tmp / 'single.npz', compare=tmp / 'compare.npz',
      **{f'pair{i}': tmp / f'pair{i}.npz' for i in range(2)},
      **{k: str(tmp / k) for k in ('one', 'four', 'p0', 'p1')})
  procs = [workers.start(
      ['multi_worker', 'explain_worker', 'explain_worker'],
      [[out.single, '--mesh_sizes=8,4,1'],
       [out.one, '--local_devices=1'],
       [out.four, '--local_devices=4', f'--compare={out.compare}']],
      tmp / 'single.log', devices=8)]
  procs += workers.start_group(
      ['multi_worker', 'explain_worker'],
      lambda i: [[getattr(out, f'pair{i}')], [getattr(out, f'p{i}')]],
      tmp, devices=2)
  workers.finish(procs)
  return out


def _leaves(npz, prefix):
  return {k[len(prefix):]: npz[k] for k in npz.files if k.startswith(prefix)}


def test_same_training_on_1_4_8_devices_and_2_processes(runs):
  """Data parallelism: 1, 4 and 8 devices of one process, and 2 processes x
  2 devices, give the same losses and parameters (to 1e-5)."""
  single = np.load(runs.single)
  ref = _leaves(single, 'n1/')
  assert len(ref) > 10
  # Training moved the parameters: the comparison is not between two inits.
  assert ref['losses'][-1] < ref['losses'][0]
  for n in (4, 8):
    got = _leaves(single, f'n{n}/')
    assert got.keys() == ref.keys()
    for k in ref:
      np.testing.assert_allclose(got[k], ref[k], atol=1e-5, rtol=0,
                                 err_msg=f'{n} devices, {k}')
  p0 = _leaves(np.load(runs.pair0), 'n4/')
  p1 = _leaves(np.load(runs.pair1), 'n4/')
  four = _leaves(single, 'n4/')
  for k in four:
    np.testing.assert_array_equal(p0[k], p1[k], err_msg=f'process 0 vs 1: {k}')
    np.testing.assert_allclose(p0[k], four[k], atol=1e-5, rtol=0,
                               err_msg=f'2 processes vs 4 devices: {k}')


def _names(workdir):
  return sorted(os.listdir(os.path.join(workdir, 'explain')))


def _npz(workdir, name):
  with np.load(os.path.join(workdir, 'explain', f'{name}.npz')) as z:
    return {k: z[k] for k in z.files}


def _summary(workdir):
  with open(os.path.join(workdir, 'explain', 'summary.json')) as f:
    s = json.load(f)
  s.pop('seconds_dncshap')
  return s


def _assert_close(a, b, path='summary'):
  """Equal JSON trees, floats to 1e-6 (summation order differs by mesh)."""
  if isinstance(a, dict):
    assert a.keys() == b.keys(), path
    for k in a:
      _assert_close(a[k], b[k], f'{path}.{k}')
  elif isinstance(a, list):
    assert len(a) == len(b), path
    for i, (x, y) in enumerate(zip(a, b)):
      _assert_close(x, y, f'{path}[{i}]')
  elif isinstance(a, float):
    assert b == pytest.approx(a, abs=1e-6), path
  else:
    assert a == b, path


def test_same_explanations_on_1_and_4_devices_and_2_processes(runs):
  """Explanations spread over 4 devices, or over 2 processes x 2 devices,
  equal those on 1 device (to 1e-6); each process writes only its own
  examples' files, process 0 the summary."""
  # dncshap_batch: device 0 alone vs all 4, examples (5) and coalitions
  # (3 < 4) split, factorized and plain, exact and dnc. (A single example's
  # coalitions split: explain_dataset's last batch, ex4, below.)
  with np.load(runs.compare) as z:
    one = [k for k in z.files if k.startswith('one/')]
    assert len(one) == 3 * 2 * 2 * 4
    for k in one:
      np.testing.assert_allclose(z['all/' + k[4:]], z[k], atol=1e-6, rtol=0,
                                 err_msg=k)

  ids = [f'ex{i}' for i in range(explain_worker.NUM_EXAMPLES)]
  assert [r['id'] for r in _summary(runs.one)['examples']] == ids
  # Process 0 explained batches 0 and 2, process 1 batch 1: each wrote only
  # its own examples' files, and only process 0 the summary.
  files = lambda ex: [f'{e}{s}' for e in ex
                      for s in ('.npz', '.png', '.wav', '_kept.wav')]
  assert _names(runs.p0) == sorted(files(['ex0', 'ex1', 'ex4']) +
                                   ['summary.json'])
  assert _names(runs.p1) == sorted(files(['ex2', 'ex3']))
  assert _names(runs.four) == _names(runs.one)
  # Same summary (every example, once) and the same maps everywhere.
  _assert_close(_summary(runs.one), _summary(runs.p0))
  _assert_close(_summary(runs.one), _summary(runs.four))
  for i, ex in enumerate(ids):
    where = runs.p0 if i in (0, 1, 4) else runs.p1
    a = _npz(runs.one, ex)
    for other in (where, runs.four):
      b = _npz(other, ex)
      for k in a:
        if a[k].dtype.kind in 'US':  # Text fields (`missing`): equal.
          np.testing.assert_array_equal(b[k], a[k], err_msg=f'{other} {ex}')
        else:
          np.testing.assert_allclose(b[k], a[k], atol=1e-6, rtol=0,
                                     err_msg=f'{other} {ex} {k}')
  # Random dnc contexts: examples' keys differ (not all maps alike).
  maps = [_npz(runs.one, ex)['image_region_values'] for ex in ids]
  assert not all(np.allclose(m, maps[0]) for m in maps[1:])
