"""Trains the tiny runlocal model on the synthetic corpus (real pipeline).

A job of tests/workers.py (arguments: WORKDIR DATA_DIR), used by
test_train.py's kill-and-resume test; a checkpoint after every step
so that a SIGKILL can land anywhere.
"""

import train_helpers


def config(data_dir):
  c = train_helpers.tiny_config('ser_only', data_dir=data_dir,
                                synthetic_size=48)
  c.train.num_epochs = 2
  c.train.checkpoint_every_steps = 1
  c.train.log_every_steps = 1
  return c


def main(argv):
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  workdir, data_dir = argv
  c = config(data_dir)
  input_pipeline.get_builder(c)
  train.train_and_evaluate(c, workdir)
