"""The training state (PAPER.md, "Training"): parameters, Adam, plateau, key.

TrainState is Flax's plus BatchNorm statistics, the reduce-on-plateau state
and the base training key. The optimizer is Adam, with the N2 trunks
optionally at another rate (`make_optimizer`); a checkpoint holds the arrays
of `checkpoint_tree(state)`.
"""

import functools
import math
from typing import Any

from flax.training import early_stopping
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from parallelnet.core import errors
from parallelnet import checkpointing
from parallelnet import mesh as mesh_lib
from parallelnet import models


class TrainState(train_state.TrainState):
  """Flax TrainState plus BatchNorm statistics and the plateau state."""
  batch_stats: Any = None
  # optax.contrib.reduce_on_plateau state; its `scale` multiplies the Adam
  # updates (equivalently the learning rate, as Adam's update is linear in
  # it). It is stepped once per epoch with the validation loss by
  # `update_plateau`, never inside train_step: reduce_on_plateau counts every
  # call as one observation, so feeding it from the step would count steps,
  # not epochs. Keeping it beside (not inside) the Adam chain keeps both clean.
  plateau: Any = None
  rng: Any = None  # Key data (uint32) of the base training key.


# The optimizer of a state that is only evaluated. One instance: a
# TrainState's `tx` is static to jit, so a new optax.identity() per call
# would trace and compile eval_step again.
_NO_OPTIMIZER = optax.identity()


def inference_state(model, variables: dict, mesh) -> TrainState:
  """A TrainState of restored `variables` for eval_step only (no optimizer
  state), replicated over `mesh` (train.evaluate, robustness)."""
  state = TrainState.create(apply_fn=model.apply, params=variables['params'],
                            tx=_NO_OPTIMIZER,
                            batch_stats=variables['batch_stats'])
  return jax.device_put(state, mesh_lib.replicated(mesh))


def plateau_transform(factor: float, patience: int
                      ) -> optax.GradientTransformationExtraArgs:
  """Keras ReduceLROnPlateau semantics: an improvement must beat the best by
  1e-4 (absolute, Keras' min_delta); after `patience` epochs without one the
  scale is multiplied by `factor`."""
  return optax.contrib.reduce_on_plateau(
      factor=float(factor), patience=int(patience), rtol=0.0, atol=1e-4)


def update_plateau(state: TrainState, val_loss: jax.Array, *,
                   plateau_factor: float, plateau_patience: int) -> TrainState:
  """Feeds one epoch's validation loss to the reduce-on-plateau state."""
  _, plateau = plateau_transform(plateau_factor, plateau_patience).update(
      updates=(), state=state.plateau, value=val_loss)
  return state.replace(plateau=plateau)


def make_early_stopping(patience: int) -> early_stopping.EarlyStopping:
  """Early stopping on the validation loss with Keras' counting: stop at the
  `patience`-th epoch in a row without improvement. (flax's EarlyStopping
  stops one epoch later, at the (patience + 1)-th, hence the - 1.)"""
  if patience < 1:
    raise errors.UserValueError(
        f'config.train.early_stopping_patience={patience}; it must be at '
        'least 1 (use num_epochs to train a fixed number of epochs).')
  return early_stopping.EarlyStopping(min_delta=0.0, patience=patience - 1)


# The N2 trunks' parameters: params[N2_s | N2_i]['backbone'] (models/).
TRUNK_PATHS = (('N2_s', 'backbone'), ('N2_i', 'backbone'))


def trunk_labels(params) -> Any:
  """'trunk' for the N2 trunks' parameters, 'rest' for all others (the
  labels of `make_optimizer`'s optax.multi_transform)."""
  def label(path, _):
    keys = tuple(getattr(k, 'key', None) for k in path[:2])
    return 'trunk' if keys in TRUNK_PATHS else 'rest'
  return jax.tree_util.tree_map_with_path(label, params)


def optimizer_layout(trunk_lr_multiplier: float) -> str:
  """The optimizer-state layout `make_optimizer` gives: 'adam' (one Adam,
  multiplier 1), 'adam+frozen_trunk' (0) or 'adam+trunk_adam' (other)."""
  m = float(trunk_lr_multiplier)
  if m < 0 or not math.isfinite(m):
    raise errors.UserError(f'config.train.trunk_lr_multiplier={m}; it must be a '
                           'finite number >= 0 (1 = same rate, 0 = frozen '
                           'trunks).')
  return {1.0: 'adam', 0.0: 'adam+frozen_trunk'}.get(m, 'adam+trunk_adam')


@functools.lru_cache(maxsize=8)
def make_optimizer(learning_rate: float, trunk_lr_multiplier: float = 1.0
                   ) -> optax.GradientTransformation:
  """Adam; the N2 trunks at `trunk_lr_multiplier` times the rate.

  Multiplier 1 is plain Adam (one Adam state for all parameters);
  otherwise optax.multi_transform over `trunk_labels`, the trunks getting
  Adam at learning_rate * multiplier (Adam's step is linear in the rate), or
  optax.set_to_zero at 0: frozen trunks get zero updates and no Adam moments,
  so their parameters never change (bit for bit, except that a -0.0 entry
  would become +0.0). Cached: one object per setting, so the jitted steps
  see equal static state fields.
  """
  layout = optimizer_layout(trunk_lr_multiplier)
  if layout == 'adam':
    return optax.adam(learning_rate)
  trunk = (optax.set_to_zero() if layout == 'adam+frozen_trunk'
           else optax.adam(learning_rate * trunk_lr_multiplier))
  return optax.multi_transform(
      {'rest': optax.adam(learning_rate), 'trunk': trunk}, trunk_labels)


def trunk_lr_multiplier_of(config) -> float:
  """config.train.trunk_lr_multiplier (1, plain Adam, when absent)."""
  return float(config.train.get('trunk_lr_multiplier', 1.0))


def optimizer_of(config) -> optax.GradientTransformation:
  """`make_optimizer` with config.train's rate and trunk multiplier."""
  return make_optimizer(float(config.train.learning_rate),
                        trunk_lr_multiplier_of(config))


def create_train_state(model, variables: dict, train_key_data: jax.Array, *,
                       learning_rate: float, plateau_factor: float,
                       plateau_patience: int,
                       trunk_lr_multiplier: float = 1.0) -> TrainState:
  """A fresh TrainState around initial `variables` (pure; jit it)."""
  tx = make_optimizer(learning_rate, trunk_lr_multiplier)
  state = TrainState.create(
      apply_fn=model.apply, params=variables['params'], tx=tx,
      batch_stats=variables['batch_stats'],
      plateau=plateau_transform(plateau_factor, plateau_patience).init(
          variables['params']),
      rng=train_key_data)
  # create() starts from the Python int 0, a weakly typed step; a restored
  # one is int32, and the steps would be traced and compiled once more for
  # it (the test evaluation of every run, each resumed run).
  return state.replace(step=jnp.zeros((), jnp.int32))


@functools.lru_cache(maxsize=8)
def _jitted_state_factory(model, learning_rate, plateau_factor,
                          plateau_patience, trunk_lr_multiplier, mesh):
  return jax.jit(
      functools.partial(create_train_state, model,
                        learning_rate=learning_rate,
                        plateau_factor=plateau_factor,
                        plateau_patience=plateau_patience,
                        trunk_lr_multiplier=trunk_lr_multiplier),
      out_shardings=mesh_lib.replicated(mesh))


def keys(config):
  """(init key, training key), both from config.seed."""
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  return init_key, train_key


def init_train_state(config, model, mesh) -> TrainState:
  """Initial variables (pretrained trunks if config.model.*_weights), Adam,
  plateau state and the training key, replicated over `mesh`.

  Every process computes the same values from config.seed.
  """
  init_key, train_key = keys(config)
  variables = models.init_variables(model, config, init_key)
  variables = jax.device_put(jax.tree.map(np.asarray, variables),
                             mesh_lib.replicated(mesh))
  factory = _jitted_state_factory(
      model, float(config.train.learning_rate),
      float(config.train.plateau_factor), int(config.train.plateau_patience),
      trunk_lr_multiplier_of(config), mesh)
  return factory(variables, np.asarray(jax.random.key_data(train_key)))


def restored_state(config, model, tree: dict) -> TrainState:
  """The TrainState of a restored `checkpoint_tree` (no fresh init: that
  may read pretrained weights)."""
  return TrainState(apply_fn=model.apply, tx=optimizer_of(config), **tree)


def abstract_checkpoint_tree(config, model, mesh):
  """ShapeDtypeStructs (replicated on `mesh`) of `checkpoint_tree(state)`."""

  def make():
    init_key, train_key = keys(config)
    variables = models.init_variables(model, config, init_key,
                                      load_pretrained=False)
    return checkpoint_tree(create_train_state(
        model, variables, jax.random.key_data(train_key),
        learning_rate=config.train.learning_rate,
        plateau_factor=config.train.plateau_factor,
        plateau_patience=config.train.plateau_patience,
        trunk_lr_multiplier=trunk_lr_multiplier_of(config)))

  return checkpointing.abstract_with_sharding(
      jax.eval_shape(make), mesh_lib.replicated(mesh))


def checkpoint_tree(state: TrainState) -> dict:
  """The arrays of `state` that a checkpoint holds."""
  return dict(step=state.step, params=state.params,
              batch_stats=state.batch_stats, opt_state=state.opt_state,
              plateau=state.plateau, rng=state.rng)
