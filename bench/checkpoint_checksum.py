"""Time of the per-array CRC-32 that every checkpoint save computes (and
every restore re-checks), for the paper-size training state.

  python bench/checkpoint_checksum.py [--config=configs/parallelnet.py]

Prints the state's size and the checksum time (best of 3).
"""

import argparse
import os
import sys
import time


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--config', default='configs/parallelnet.py')
  a = p.parse_args()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, root)
  import importlib.util  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  from parallelnet import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('cfg', a.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  abstract = train.abstract_checkpoint_tree(config, models.get_model(config),
                                            mesh_lib.make_mesh())
  rng = np.random.default_rng(0)
  tree = jax.tree.map(
      lambda s: jax.device_put(rng.random(s.shape).astype(s.dtype)),
      abstract)
  nbytes = sum(x.nbytes for x in jax.tree.leaves(tree))
  times = []
  for _ in range(3):
    t = time.perf_counter()
    checkpointing.tree_checksums(tree)
    times.append(time.perf_counter() - t)
  print(f'{a.config}: state {nbytes / 1e9:.2f} GB on {jax.devices()[0].platform}, '
        f'checksums {min(times):.3f} s ({nbytes / 1e9 / min(times):.2f} GB/s)')


if __name__ == '__main__':
  main()
