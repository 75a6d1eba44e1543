"""Explanations spread over devices and processes equal single-device ones.

tests/explain_worker.py runs in subprocesses of tests/workers.py (the
device count is fixed before JAX starts): 4 simulated devices in one
process, and 2 processes x 2 devices on localhost; the reference runs here,
on one device.
"""

import json
import os

import numpy as np
import pytest

import explain_worker
import workers
from explain import run

pytestmark = [pytest.mark.usefixtures('fast_compile'), pytest.mark.slow]


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


def test_same_explanations_on_1_and_4_devices_and_2_processes(tmp_path,
                                                              monkeypatch):
  wd = {k: str(tmp_path / k) for k in ('one', 'four', 'p0', 'p1')}
  procs = [workers.start(
      'explain_worker', [wd['four'], f'--compare={tmp_path / "compare.npz"}'],
      tmp_path / 'four.log', devices=4)]
  procs += workers.start_group('explain_worker', lambda i: [wd[f'p{i}']],
                               tmp_path, devices=2)
  # The reference, meanwhile: this process has one device.
  explain_worker.install_fakes(monkeypatch)
  ref = run.explain_dataset(explain_worker.config(), wd['one'])
  workers.finish(procs)

  # dncshap_batch: device 0 alone vs all 4, examples (5) and coalitions
  # (1, 3 < 4) split, factorized and plain.
  with np.load(tmp_path / 'compare.npz') as z:
    one = [k for k in z.files if k.startswith('one/')]
    assert len(one) == 3 * 2 * 2 * 4
    for k in one:
      np.testing.assert_allclose(z['all/' + k[4:]], z[k], atol=1e-6, rtol=0,
                                 err_msg=k)

  ids = [f'ex{i}' for i in range(explain_worker.NUM_EXAMPLES)]
  assert [r['id'] for r in ref['examples']] == ids
  # Process 0 explained batches 0 and 2, process 1 batch 1: each wrote only
  # its own examples' files, and only process 0 the summary.
  files = lambda ex: [f'{e}{s}' for e in ex
                      for s in ('.npz', '.png', '.wav', '_kept.wav')]
  assert _names(wd['p0']) == sorted(files(['ex0', 'ex1', 'ex4']) +
                                    ['summary.json'])
  assert _names(wd['p1']) == sorted(files(['ex2', 'ex3']))
  assert _names(wd['four']) == _names(wd['one'])
  # Same summary (every example, once) and the same maps everywhere.
  _assert_close(_summary(wd['one']), _summary(wd['p0']))
  _assert_close(_summary(wd['one']), _summary(wd['four']))
  for i, ex in enumerate(ids):
    where = wd['p0'] if i in (0, 1, 4) else wd['p1']
    a = _npz(wd['one'], ex)
    for other in (where, wd['four']):
      b = _npz(other, ex)
      for k in a:
        if a[k].dtype.kind in 'US':  # Text fields (`missing`): equal.
          np.testing.assert_array_equal(b[k], a[k], err_msg=f'{other} {ex}')
        else:
          np.testing.assert_allclose(b[k], a[k], atol=1e-6, rtol=0,
                                     err_msg=f'{other} {ex} {k}')
  # Random dnc contexts: examples' keys differ (not all maps alike).
  maps = [_npz(wd['one'], ex)['image_region_values'] for ex in ids]
  assert not all(np.allclose(m, maps[0]) for m in maps[1:])
