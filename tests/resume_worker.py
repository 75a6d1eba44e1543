"""Trains the tiny runlocal model on the synthetic corpus (real pipeline).

A job of tests/workers.py (arguments: WORKDIR DATA_DIR [PAUSE_AT]), used by
the kill-and-resume tests (test_train.py on disk, test_gcs_workdir.py on a
bucket); a checkpoint after every step so that a SIGKILL can land anywhere.
With PAUSE_AT, training stops for good once the `latest` checkpoint of that
step is written, and prints 'paused after checkpoint PAUSE_AT': the test
kills it there, mid-run, whatever the speed of the machine or the store.
"""

import time

import train_helpers


def config(data_dir):
  c = train_helpers.tiny_config('ser_only', data_dir=data_dir,
                                synthetic_size=48)
  c.train.num_epochs = 2
  c.train.checkpoint_every_steps = 1
  c.train.log_every_steps = 1
  return c


def _pause_after(step):
  from parallelnet import checkpointing  # pylint: disable=g-import-not-at-top
  save = checkpointing.Checkpoints.save

  def save_then_pause(self, which, s, *args, **kwargs):
    save(self, which, s, *args, **kwargs)
    if which == 'latest' and s == step:
      self.wait()
      print(f'paused after checkpoint {s}', flush=True)
      while True:
        time.sleep(60)

  checkpointing.Checkpoints.save = save_then_pause


def main(argv):
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  workdir, data_dir, *pause_at = argv
  if pause_at:
    _pause_after(int(pause_at[0]))
  c = config(data_dir)
  input_pipeline.get_builder(c)
  train.train_and_evaluate(c, workdir)
