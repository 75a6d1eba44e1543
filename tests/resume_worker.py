"""Trains the tiny runlocal model on the synthetic corpus (real pipeline).

  python tests/resume_worker.py WORKDIR DATA_DIR

Used by test_train.py's kill-and-resume test; a checkpoint after every step
so that a SIGKILL can land anywhere.
"""

import os
import sys


def config(data_dir):
  from configs import parallelnet  # pylint: disable=g-import-not-at-top
  c = parallelnet.get_config('runlocal,ser_only')
  c.dataset.name = 'synthetic_sier'
  c.dataset.data_dir = data_dir
  c.dataset.synthetic_size = 48
  c.model.width = 1 / 32
  c.model.feature_dim = 8
  c.model.head_dim = 8
  c.train.learning_rate = 3e-3
  c.train.num_epochs = 2
  c.train.max_steps_per_epoch = -1
  c.train.checkpoint_every_steps = 1
  c.train.log_every_steps = 1
  return c


def main():
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:0] = [os.path.dirname(here)]
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_disable_most_optimizations', True)
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  workdir, data_dir = sys.argv[1], sys.argv[2]
  c = config(data_dir)
  input_pipeline.get_builder(c)
  train.train_and_evaluate(c, workdir)


if __name__ == '__main__':
  main()
