"""Training on tens to hundreds of examples (docs/own_data.md).

A validation split of a few examples gives a loss that swings from epoch to
epoch with no trend: early stopping on it ends training at random (a
4-example split stopped a 40-pair run at epoch 7, test accuracy 0.25). Below
config.train.min_val_examples it does not stop; the best checkpoint is
still the epoch of lowest validation loss.
"""

from absl import logging


def early_stopping_patience(config, num_validation: int) -> int:
  """The early-stopping patience to train with: config.train's, or, on a
  validation split too small to mean anything, one that never runs out."""
  tc = config.train
  patience = int(tc.early_stopping_patience)
  floor = int(tc.get('min_val_examples', 0))
  if num_validation >= floor:
    return patience
  logging.warning(
      'The validation split has %d example(s), fewer than '
      'config.train.min_val_examples=%d: too few for early stopping to tell '
      'a plateau from noise, so all %d epochs run (the best checkpoint is '
      'still the one of lowest validation loss).', num_validation, floor,
      int(tc.num_epochs))
  return max(patience, int(tc.num_epochs) + 1)
