"""Input-pipeline throughput against what the training step consumes.

At the demo configuration: examples per second that
`input_pipeline.train_batches` delivers (global jax.Arrays on the mesh, after
the dataset is built; the first batch, which fills the shuffle buffer, is not
timed) and, beside it, examples per second that `parallelnet.train`'s
training step consumes on the same machine at the same batch. Ratio
pipeline / step; target >= 3 (the pipeline is never the bottleneck).

  python bench/pipeline_throughput.py --quick
  python bench/pipeline_throughput.py --data_dir=~/tensorflow_datasets
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top

from bench import common  # pylint: disable=g-import-not-at-top
from bench import train_throughput  # pylint: disable=g-import-not-at-top


def pipeline_rate(config, epochs):
  """(examples/s, examples timed, build seconds) of train_batches."""
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from parallelnet import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  input_pipeline.get_builder(config)  # Builds on first use (not timed).
  build_s = time.perf_counter() - start
  mesh = mesh_lib.make_mesh()
  examples, seconds = 0, 0.0
  for epoch in range(epochs):
    it = input_pipeline.train_batches(config, mesh, epoch=epoch)
    jax.block_until_ready(next(it))  # Shuffle-buffer fill: not timed.
    start = time.perf_counter()
    for batch in it:
      jax.block_until_ready(batch)
      examples += batch['label'].shape[0]
    seconds += time.perf_counter() - start
  if not examples:
    raise RuntimeError('The train split gave one batch per epoch or fewer; '
                       'use a larger dataset.synthetic_size.')
  return examples / seconds, examples, build_s


def step_rate(config, rounds, min_seconds=2.0):
  """Examples/s of the jitted training step at config.train.batch_size."""
  bs = config.train.batch_size
  step = train_throughput.OursStep(config, train_throughput._batch(config, bs))  # pylint: disable=protected-access
  for _ in range(2):
    jax.block_until_ready(step())
  best = float('inf')
  for _ in range(rounds):
    n, start = 0, time.perf_counter()
    while True:
      jax.block_until_ready(step())
      n += 1
      elapsed = time.perf_counter() - start
      if elapsed >= min_seconds / rounds:
        break
    best = min(best, elapsed / n)
  return bs / best


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true',
                 help='a 400-example demo corpus (built in a bench folder), '
                      'two epochs.')
  p.add_argument('--data_dir', default=None,
                 help='where the dataset is (or is built); default the '
                      'config\'s, or /tmp/parallelnet_bench_data with --quick.')
  p.add_argument('--epochs', type=int, default=None)
  p.add_argument('--no_row', action='store_true')
  a = p.parse_args(argv)
  config = common.load_config('demo')
  if a.quick:
    config.dataset.synthetic_size = 400
    config.dataset.data_dir = '/tmp/parallelnet_bench_data'
  if a.data_dir:
    config.dataset.data_dir = a.data_dir
  epochs = a.epochs or (2 if a.quick else 3)
  machine = common.machine()

  pipe, n, build_s = pipeline_rate(config, epochs)
  train = step_rate(config, rounds=3)
  ratio = pipe / train
  common.print_table(
      f'Input pipeline vs training step, demo config '
      f'({common.config_name(config)}, batch {config.train.batch_size}), '
      f'{machine}',
      ['what', 'examples/s', 'notes'],
      [['input_pipeline.train_batches', f'{pipe:.0f}',
        f'{n} examples over {epochs} epoch(s); build {build_s:.0f} s '
        '(not timed)'],
       ['train_step (jitted, donated)', f'{train:.0f}',
        'best of 3 rounds, warm-up excluded']])
  print(f'\nratio pipeline / training step: {ratio:.1f}x (target >= 3)')
  if not a.no_row:
    common.append_row(
        'pipeline_throughput',
        f'pipeline {pipe:.0f} ex/s ({n} ex, {epochs} epochs); train step '
        f'{train:.0f} ex/s; demo {common.config_name(config)}, batch '
        f'{config.train.batch_size}', f'{ratio:.1f}x',
        machine_desc=machine, versions_desc=common.versions('tensorflow'))
  return ratio


if __name__ == '__main__':
  main()
