"""Cost of the per-array CRC-32 that every checkpoint save computes (and
every restore re-checks), against the orbax save of the same state.

  python bench/checkpoint_checksum.py [--config=parallelnet] [--rounds=3]

The paper-size training state (params, BatchNorm statistics, Adam moments)
is checksummed and saved (orbax, synchronous, to a temporary folder) in
alternating rounds; prints the median of each and their ratio, and appends
a row to BENCHMARKS.md.
"""

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # pylint: disable=g-import-not-at-top


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--config', default='parallelnet')
  p.add_argument('--rounds', type=int, default=3)
  a = p.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  from parallelnet import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  machine = common.machine()
  config = common.load_config(a.config)
  abstract = train.abstract_checkpoint_tree(config, models.get_model(config),
                                            mesh_lib.make_mesh())
  rng = np.random.default_rng(0)
  tree = jax.tree.map(
      lambda s: jax.device_put(rng.random(s.shape).astype(s.dtype)),
      abstract)
  gb = sum(x.nbytes for x in jax.tree.leaves(tree)) / 1e9
  times = {'checksum': [], 'orbax save': []}
  with tempfile.TemporaryDirectory() as tmp:
    saver = ocp.StandardCheckpointer()
    for r in range(a.rounds):
      times['checksum'].append(common.time_call(
          lambda: checkpointing.tree_checksums(tree), lambda _: None))
      path = os.path.join(tmp, str(r))
      times['orbax save'].append(common.time_call(
          lambda: saver.save(path, tree), lambda _: saver.wait_until_finished()))
      shutil.rmtree(path)
    saver.close()
  med = {k: common.median(v) for k, v in times.items()}
  ratio = med['checksum'] / med['orbax save']
  common.print_table(
      f'{a.config}: training state {gb:.2f} GB on {jax.devices()[0].platform}',
      ['step', 'median s'], [[k, f'{v:.3f}'] for k, v in med.items()])
  print(f'checksum / save = {ratio:.2f}')
  common.append_row(
      'checkpoint_checksum',
      f'{a.config} state {gb:.2f} GB: CRC-32 {med["checksum"]:.2f} s, '
      f'orbax save {med["orbax save"]:.2f} s (median of {a.rounds})',
      f'checksum / save {ratio:.2f}x', machine_desc=machine,
      versions_desc=f'{common.versions()}, orbax-checkpoint {ocp.__version__}')


if __name__ == '__main__':
  main()
