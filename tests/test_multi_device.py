"""Data parallelism: 1, 4 and 8 simulated CPU devices, and 2 processes x 2
devices on localhost, give the same losses and parameters (to 1e-5).

Each configuration runs tests/multi_worker.py in a subprocess of
tests/workers.py (the device count must be fixed before JAX starts); all
three subprocesses run at once.
"""

import numpy as np
import pytest

import workers

pytestmark = pytest.mark.slow  # Several processes or a whole demo run.


def _leaves(npz, prefix):
  return {k[len(prefix):]: npz[k] for k in npz.files if k.startswith(prefix)}


def test_same_result_on_1_4_8_devices_and_2_processes(tmp_path):
  procs = [workers.start('multi_worker', [tmp_path / 'single.npz',
                                          '--mesh_sizes=8,4,1'],
                          tmp_path / 'single.log', devices=8)]
  procs += workers.start_group('multi_worker',
                               lambda i: [tmp_path / f'p{i}.npz'], tmp_path,
                               devices=2)
  workers.finish(procs)

  single = np.load(tmp_path / 'single.npz')
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
  p0 = _leaves(np.load(tmp_path / 'p0.npz'), 'n4/')
  p1 = _leaves(np.load(tmp_path / 'p1.npz'), 'n4/')
  four = _leaves(single, 'n4/')
  for k in four:
    np.testing.assert_array_equal(p0[k], p1[k], err_msg=f'process 0 vs 1: {k}')
    np.testing.assert_allclose(p0[k], four[k], atol=1e-5, rtol=0,
                               err_msg=f'2 processes vs 4 devices: {k}')
