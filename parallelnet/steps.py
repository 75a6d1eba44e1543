"""The training and evaluation steps: pure functions, jit-compiled once.

One jit-compiled `train_step` over a ('data',) mesh. Parameters and
optimizer state are replicated, batches are sharded on their leading axis,
and the state buffers are donated. Under jit the model sees the global batch,
so BatchNorm statistics and the gradient are global-batch quantities whatever
the number of devices or processes; the step's rng is `fold_in(key, step)`.
Loss = ce_weight·CE + focal_weight·focal (`losses.py`).
"""

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from parallelnet import losses
from parallelnet import mesh as mesh_lib
from parallelnet import metrics as metrics_lib
from parallelnet import modality
from parallelnet.train_state import TrainState
from parallelnet.train_state import update_plateau


def _apply(state, params, batch, train, rng=None):
  variables = {'params': params, 'batch_stats': state.batch_stats}
  if train:
    (logits, _), updates = state.apply_fn(
        variables, batch['image'], batch['spectrogram'], train=True,
        mutable=['batch_stats'], rngs={'dropout': rng})
    return logits, updates.get('batch_stats', state.batch_stats)
  logits, _ = state.apply_fn(variables, batch['image'], batch['spectrogram'],
                             train=False)
  return logits, state.batch_stats


def train_step(state: TrainState, batch: dict, rng: jax.Array, *,
               loss_kwargs: dict, modality_dropout=(0.0, 0.5)
               ) -> tuple[TrainState, dict]:
  """One Adam step on the global batch. Returns (state, {loss, grad_norm,
  accuracy}). `rng` is this step's key (fold_in(base, step));
  `modality_dropout` is (rate, split) of modality.apply_modality_dropout."""
  mask = batch.get('mask')
  batch = modality.apply_modality_dropout(
      batch, jax.random.fold_in(rng, 1), *modality_dropout)

  def loss_fn(params):
    logits, batch_stats = _apply(state, params, batch, True, rng)
    per_example = losses.per_example_loss(logits, batch['label'],
                                          **loss_kwargs)
    return losses.masked_mean(per_example, mask), (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  updates = optax.tree.scale(state.plateau.scale, updates)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      opt_state=opt_state, batch_stats=batch_stats)
  correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
  return new_state, dict(loss=loss, grad_norm=optax.tree.norm(grads),
                         accuracy=losses.masked_mean(correct, mask))


def eval_step(state: TrainState, batch: dict, *, loss_kwargs: dict,
              num_classes: int) -> dict:
  """Loss sum, example count and confusion matrix of one (padded) batch."""
  logits, _ = _apply(state, state.params, batch, False)
  mask = batch.get('mask')
  if mask is None:
    mask = jnp.ones(batch['label'].shape, bool)
  per_example = losses.per_example_loss(logits, batch['label'], **loss_kwargs)
  return dict(
      loss_sum=jnp.sum(jnp.where(mask, per_example, 0.0)),
      count=jnp.sum(mask.astype(jnp.int32)),
      confusion=metrics_lib.confusion_matrix(
          batch['label'], jnp.argmax(logits, -1), num_classes, mask))


class Steps:
  """The jit-compiled step functions of one run.

  Built through `_jitted_steps`, cached on the hashable settings, so that
  runs in one process with the same settings (cross-validation folds, tests)
  reuse one compilation.
  """

  def __init__(self, config, mesh):
    self.train, self.eval, self.plateau, self.step_key = _jitted_steps(
        mesh, tuple(sorted(losses.loss_weights(config.train).items())),
        len(config.dataset.classes),
        (float(config.train.plateau_factor),
         int(config.train.plateau_patience)),
        modality.dropout_settings(config))


@functools.lru_cache(maxsize=8)
def _jitted_steps(mesh, loss_items, num_classes, plateau_settings,
                  modality_dropout=(0.0, 0.5)):
  repl = mesh_lib.replicated(mesh)
  data = mesh_lib.data_sharding(mesh)
  loss_kwargs = dict(loss_items)
  train = jax.jit(functools.partial(train_step, loss_kwargs=loss_kwargs,
                                    modality_dropout=modality_dropout),
                  in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                  donate_argnums=0)
  evaluate_ = jax.jit(
      functools.partial(eval_step, loss_kwargs=loss_kwargs,
                        num_classes=num_classes),
      in_shardings=(repl, data), out_shardings=repl)
  plateau = jax.jit(
      functools.partial(update_plateau, plateau_factor=plateau_settings[0],
                        plateau_patience=plateau_settings[1]),
      in_shardings=(repl, repl), out_shardings=repl, donate_argnums=0)
  step_key = jax.jit(
      lambda key_data, step: jax.random.fold_in(
          jax.random.wrap_key_data(key_data), step),
      out_shardings=repl)
  return train, evaluate_, plateau, step_key


def evaluate_batches(steps: Steps, state: TrainState,
                     batches: Iterable[dict]) -> tuple[float, np.ndarray]:
  """(mean loss, confusion matrix) over eval batches (padding masked)."""
  total = None
  for batch in batches:
    out = steps.eval(state, batch)
    total = out if total is None else jax.tree.map(jnp.add, total, out)
  if total is None:
    raise ValueError('The evaluation split yielded no batches.')
  total = jax.device_get(total)
  count = int(total['count'])
  if count == 0:
    raise ValueError('The evaluation split has no (unmasked) examples.')
  return float(total['loss_sum']) / count, np.asarray(total['confusion'])
