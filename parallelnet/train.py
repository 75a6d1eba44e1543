"""Training and evaluation (PAPER.md, "Training"): the paper's recipe, data-parallel.

Parallelism: one jit-compiled `train_step` over a ('data',) mesh. Parameters
and optimizer state are replicated, batches are sharded on their leading axis,
and the state buffers are donated. Under jit the model sees the global batch,
so BatchNorm statistics and the gradient are global-batch quantities whatever
the number of devices or processes; the step's rng is `fold_in(key, step)`.

Recipe (configurable in `config.train`): Adam; loss = ce_weight·CE +
focal_weight·focal (`losses.py`); reduce-on-plateau and early stopping on the
validation loss, both once per epoch; the best state (lowest validation loss)
is what is evaluated on the test split.

Side effects (logging, TensorBoard, JSON, figures, checkpoints) live in
`train_and_evaluate` / `evaluate` / `cross_validate`; the step functions are
pure.
"""

import copy
import functools
import json
import math
import os
import time
from typing import Any, Iterable

from absl import logging
from flax.training import early_stopping
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from parallelnet.core import errors
from parallelnet.core import progress
from parallelnet import checkpointing
from parallelnet import losses
from parallelnet import mesh as mesh_lib
from parallelnet import metrics as metrics_lib
from parallelnet import modality
from parallelnet.models import scaling as model_scaling

METRIC_KEYS = ('accuracy', 'macro_f1', 'cohen_kappa')


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


def plateau_transform(factor: float, patience: int
                      ) -> optax.GradientTransformationExtraArgs:
  """Keras ReduceLROnPlateau semantics: an improvement must beat the best by
  1e-4 (absolute, Keras' min_delta); after `patience` epochs without one the
  scale is multiplied by `factor`."""
  return optax.contrib.reduce_on_plateau(
      factor=float(factor), patience=int(patience), rtol=0.0, atol=1e-4)


def create_train_state(model, variables: dict, train_key_data: jax.Array, *,
                       learning_rate: float, plateau_factor: float,
                       plateau_patience: int,
                       trunk_lr_multiplier: float = 1.0) -> TrainState:
  """A fresh TrainState around initial `variables` (pure; jit it)."""
  tx = make_optimizer(learning_rate, trunk_lr_multiplier)
  return TrainState.create(
      apply_fn=model.apply, params=variables['params'], tx=tx,
      batch_stats=variables['batch_stats'],
      plateau=plateau_transform(plateau_factor, plateau_patience).init(
          variables['params']),
      rng=train_key_data)


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
                    'finite number >= 0 (1 = same rate, 0 = frozen trunks).')
  return {1.0: 'adam', 0.0: 'adam+frozen_trunk'}.get(m, 'adam+trunk_adam')


@functools.lru_cache(maxsize=8)
def make_optimizer(learning_rate: float, trunk_lr_multiplier: float = 1.0
                   ) -> optax.GradientTransformation:
  """Adam; the N2 trunks at `trunk_lr_multiplier` times the rate.

  Multiplier 1 is plain Adam (the checkpoint layout of earlier versions);
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


def _optimizer(config) -> optax.GradientTransformation:
  return make_optimizer(float(config.train.learning_rate),
                        trunk_lr_multiplier_of(config))


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


def _keys(config):
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  return init_key, train_key


def init_train_state(config, model, mesh) -> TrainState:
  """Initial variables (pretrained trunks if config.model.*_weights), Adam,
  plateau state and the training key, replicated over `mesh`.

  Every process computes the same values from config.seed.
  """
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  init_key, train_key = _keys(config)
  variables = models.init_variables(model, config, init_key)
  variables = jax.device_put(jax.tree.map(np.asarray, variables),
                             mesh_lib.replicated(mesh))
  factory = _jitted_state_factory(
      model, float(config.train.learning_rate),
      float(config.train.plateau_factor), int(config.train.plateau_patience),
      trunk_lr_multiplier_of(config), mesh)
  return factory(variables, np.asarray(jax.random.key_data(train_key)))


def abstract_checkpoint_tree(config, model, mesh):
  """ShapeDtypeStructs (replicated on `mesh`) of `checkpoint_tree(state)`."""
  from parallelnet import models  # pylint: disable=g-import-not-at-top

  def make():
    init_key, train_key = _keys(config)
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


def make_early_stopping(patience: int) -> early_stopping.EarlyStopping:
  """Early stopping on the validation loss with Keras' counting: stop at the
  `patience`-th epoch in a row without improvement. (flax's EarlyStopping
  stops one epoch later, at the (patience + 1)-th, hence the - 1.)"""
  if patience < 1:
    raise errors.UserValueError(
        f'config.train.early_stopping_patience={patience}; it must be at '
        'least 1 (use num_epochs to train a fixed number of epochs).')
  return early_stopping.EarlyStopping(min_delta=0.0, patience=patience - 1)


def update_plateau(state: TrainState, val_loss: jax.Array, *,
                   plateau_factor: float, plateau_patience: int) -> TrainState:
  """Feeds one epoch's validation loss to the reduce-on-plateau state."""
  _, plateau = plateau_transform(plateau_factor, plateau_patience).update(
      updates=(), state=state.plateau, value=val_loss)
  return state.replace(plateau=plateau)


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


# ------------------------------------------------------------------ edges --


def _pipeline():
  import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline


class _DropOrbaxInfo:
  """absl-logging filter: orbax logs every save and restore at INFO."""

  def filter(self, record):
    return record.levelno >= 30 or '/orbax/' not in record.pathname


def _quiet_orbax():
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _DropOrbaxInfo) for f in absl_logger.filters):
    absl_logger.addFilter(_DropOrbaxInfo())


class _LoggingOnlyWriter:
  """Stand-in for clu's writer when TensorBoard is not installed: logs only."""

  def write_scalars(self, step, scalars):
    logging.info('[%d] %s', step, ', '.join(
        f'{k}={float(v):.6g}' for k, v in sorted(scalars.items())))

  def write_images(self, step, images):
    del step, images  # Nothing to show without TensorBoard.

  def flush(self):
    pass

  def close(self):
    pass


def _writer(workdir):
  """clu metric writer: TensorBoard events in `workdir` plus logging."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # clu's TensorBoard writer needs `tensorboard`.
    logging.warning('No TensorBoard events will be written (%s); install '
                    'tensorboard==2.21.0 to get them.', e)
    return _LoggingOnlyWriter()
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=False)


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """Training diverged (NaN/Inf loss or gradient); the message says what to
  change and where the last good checkpoint is."""


def _check_finite(step: int, out: dict, ckpts, workdir: str):
  """Stops training on a non-finite loss or gradient norm."""
  for name in ('loss', 'grad_norm'):
    value = float(out[name])
    if not math.isfinite(value):
      ckpts.wait()
      last = ckpts.latest_step()
      raise NonFiniteLossError(
          f'Non-finite {name} ({value}) at training step {step}: training '
          f'stopped. The last good checkpoint is step {last} in '
          f'{os.path.join(workdir, "checkpoints", "latest")} (nothing was '
          f'saved after the failure). Lower train.learning_rate or check the '
          f'inputs.')


def plot_confusion_matrix(cm, class_names, path: str, title: str = ''):
  """Saves a confusion-matrix heat map with counts, like the paper's Fig. 4."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cm = np.asarray(cm)
  fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2,
                                  1.2 * len(class_names) + 1.5))
  im = ax.imshow(cm, cmap='Blues')
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  ticks = np.arange(len(class_names))
  ax.set_xticks(ticks, class_names, rotation=45, ha='right')
  ax.set_yticks(ticks, class_names)
  ax.set_xlabel('Predicted label')
  ax.set_ylabel('True label')
  threshold = cm.max() / 2 if cm.size else 0
  for i in range(cm.shape[0]):
    for j in range(cm.shape[1]):
      ax.text(j, i, str(cm[i, j]), ha='center', va='center',
              color='white' if cm[i, j] > threshold else 'black')
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _write_eval_outputs(config, workdir, cm, step, split, writer=None):
  summary = metrics_lib.summarize(cm, config.dataset.classes)
  summary['checkpoint_step'] = int(step)
  summary['split'] = split
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'eval_metrics.json'), 'w') as f:
      json.dump(summary, f, indent=2)
    plot_confusion_matrix(
        cm, config.dataset.classes,
        os.path.join(workdir, 'confusion_matrix.png'),
        f'{split}: accuracy {summary["accuracy"]:.3f}, '
        f'macro-F1 {summary["macro_f1"]:.3f}')
    if writer is not None:
      writer.write_scalars(int(step), {f'{split}/{k}': summary[k]
                                       for k in METRIC_KEYS})
      # The same figure in TensorBoard's Images tab (uint8 RGB, batch of 1).
      import matplotlib.image  # pylint: disable=g-import-not-at-top
      png = matplotlib.image.imread(
          os.path.join(workdir, 'confusion_matrix.png'))[..., :3]
      writer.write_images(int(step), {
          f'{split}/confusion_matrix': (png[None] * 255).astype(np.uint8)})
      writer.flush()
  logging.info('%s metrics at checkpoint step %d: accuracy %.4f, macro-F1 '
               '%.4f, kappa %.4f, confusion %s', split, step,
               summary['accuracy'], summary['macro_f1'],
               summary['cohen_kappa'], summary['confusion_matrix'])
  return summary


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, data=None) -> dict:
  """Trains (resuming from `workdir` if it holds a checkpoint), then
  evaluates the best state on the test split. Returns the test metrics,
  also written to `<workdir>/eval_metrics.json`.

  `data` is the input pipeline module (default `input_pipeline`); tests may
  pass an object with the same `train_batches`, `eval_batches` and
  `num_examples`.
  """
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  data = data or _pipeline()
  _quiet_orbax()
  written_config = config  # config.json keeps the user's 'auto'.
  config = model_scaling.resolve_config(config)
  tc = config.train
  modality.dropout_settings(config)  # Checked before the data is built.
  mesh = mesh_lib.make_mesh()
  mesh_lib.check_batch_size(tc.batch_size, mesh)
  mesh_lib.check_batch_size(tc.eval_batch_size, mesh, 'train.eval_batch_size')
  model = models.get_model(config)
  # The data first (it may be built now): a run that fails on its inputs
  # leaves no workdir, checkpoint folder or event file behind.
  steps_per_epoch = data.num_examples(config, 'train') // tc.batch_size
  if tc.max_steps_per_epoch > 0:
    steps_per_epoch = min(steps_per_epoch, tc.max_steps_per_epoch)
  if steps_per_epoch < 1:
    raise errors.UserError(
        f'The train split has {data.num_examples(config, "train")} examples, '
        f'fewer than one batch of config.train.batch_size={tc.batch_size}.')
  layout = optimizer_layout(trunk_lr_multiplier_of(config))  # Checks it.
  ckpts = checkpointing.Checkpoints(workdir, config)
  # Refuse another model's workdir (and optimizer layout) up front.
  _, saved_meta = ckpts.restore_meta('latest')
  if saved_meta is not None and saved_meta.get('optimizer', 'adam') != layout:
    raise errors.UserError(
        f'The checkpoint in {os.path.join(workdir, "checkpoints")} was '
        f'trained with optimizer layout {saved_meta.get("optimizer", "adam")!r}'
        f' but config.train.trunk_lr_multiplier='
        f'{trunk_lr_multiplier_of(config)} '
        f'gives {layout!r} (1 = plain Adam, 0 = frozen trunks, other = a '
        f'second Adam for the trunks); resume with the old multiplier or use '
        f'another --workdir.')
  # The full config, so the workdir alone can be restored (teachers, §3.1).
  checkpointing.write_config(written_config, workdir)
  steps = Steps(config, mesh)
  abstract = abstract_checkpoint_tree(config, model, mesh)
  writer = _writer(workdir)

  stopper = make_early_stopping(tc.early_stopping_patience)
  epoch, position, loss_sum, acc_sum = 0, 0, 0.0, 0.0
  # A damaged newest checkpoint: logged, set aside, the previous one used.
  tree, meta = ckpts.restore('latest', abstract, fallback=True)
  if tree is None:
    state = init_train_state(config, model, mesh)
  else:  # No fresh init (it may read pretrained weights): all is restored.
    state = TrainState(apply_fn=model.apply, tx=_optimizer(config), **tree)
    epoch, position = meta['epoch'], meta['position']
    loss_sum, acc_sum = meta['train_loss_sum'], meta['train_accuracy_sum']
    stopper = stopper.replace(**meta['early_stopping'])
    if epoch >= tc.num_epochs or stopper.should_stop:
      logging.info('Training in %s had finished (%d epochs%s); evaluating '
                   'its best checkpoint.', workdir, epoch,
                   ', stopped early' if stopper.should_stop else '')
    else:
      logging.info('Resuming at epoch %d, step %d of the epoch (global step '
                   '%d).', epoch + 1, position, int(state.step))

  def meta_now():
    return dict(epoch=epoch, position=position, train_loss_sum=loss_sum,
                train_accuracy_sum=acc_sum, optimizer=layout,
                early_stopping=dict(best_metric=stopper.best_metric,
                                    patience_count=stopper.patience_count,
                                    should_stop=bool(stopper.should_stop)))

  total_steps = steps_per_epoch * tc.num_epochs
  step = int(state.step)  # Tracked on the host from here on.
  t0, step0 = time.time(), step
  while epoch < tc.num_epochs and not stopper.should_stop:
    epoch_t0 = time.time()
    batches = data.train_batches(config, mesh, epoch=epoch,
                                 start_step=position)
    # Progress within the epoch, only when it takes long (paper size).
    bar = progress.Progress(steps_per_epoch, f'epoch {epoch + 1}',
                            unit='steps', interval_s=30.0,
                            enabled=jax.process_index() == 0)
    bar.done = position
    # The metrics of step k are read after step k + 1 is dispatched, so the
    # host never waits for a step before queueing the next one.
    pending = []

    def consume():
      nonlocal loss_sum, acc_sum
      for s, out in pending:
        _check_finite(s, out, ckpts, workdir)
        loss_sum += float(out['loss'])
        acc_sum += float(out['accuracy'])
      pending.clear()

    for batch in batches:
      if position >= steps_per_epoch:
        break
      state, out = steps.train(state, batch, steps.step_key(state.rng, step))
      consume()
      pending.append((step, out))
      step, position = step + 1, position + 1
      bar.update()
      if tc.log_every_steps > 0 and step % tc.log_every_steps == 0:
        rate = (step - step0) / max(time.time() - t0, 1e-9)
        eta = (total_steps - step) / max(rate, 1e-9)
        logging.vlog(1, 'epoch %d step %d/%d  loss %.4f  %.2f steps/s  ETA %s '
                     '(if all %d epochs run)', epoch + 1, position,
                     steps_per_epoch, float(out['loss']), rate,
                     _fmt_time(eta), tc.num_epochs)
        writer.write_scalars(step, {'train/loss': out['loss']})
      if (tc.checkpoint_every_steps > 0 and position < steps_per_epoch
          and step % tc.checkpoint_every_steps == 0):
        consume()
        ckpts.save('latest', step, checkpoint_tree(state), meta_now())
    consume()
    bar.close()
    if position < steps_per_epoch:
      raise ValueError(
          f'Epoch {epoch} yielded {position} training batches; expected '
          f'{steps_per_epoch} (num_examples // batch_size).')

    # Epoch end: validate, step the plateau and early stopping, checkpoint.
    val_loss, cm = evaluate_batches(
        steps, state, data.eval_batches(config, mesh, split='validation'))
    val = metrics_lib.summarize(cm, config.dataset.classes)
    state = steps.plateau(state, jnp.float32(val_loss))
    stopper = stopper.update(val_loss)
    scalars = {'train/loss': loss_sum / position,
               'train/accuracy': acc_sum / position,
               'val/loss': val_loss,
               'lr': tc.learning_rate * float(state.plateau.scale),
               **{f'val/{k}': val[k] for k in METRIC_KEYS}}
    writer.write_scalars(step, scalars)
    writer.flush()
    logging.vlog(1, 'epoch %d/%d done: %s; val confusion %s', epoch + 1,
                 tc.num_epochs,
                 ', '.join(f'{k} {v:.4g}' for k, v in scalars.items()),
                 val['confusion_matrix'])
    logging.info(
        'epoch %*d/%d  loss %.4f  acc %.3f  val loss %.4f  val acc %.3f  '
        'lr %.3g  %.1f s%s', len(str(tc.num_epochs)), epoch + 1,
        tc.num_epochs, scalars['train/loss'], scalars['train/accuracy'],
        val_loss, val['accuracy'], scalars['lr'], time.time() - epoch_t0,
        '  (best)' if stopper.has_improved else '')
    epoch, position, loss_sum, acc_sum = epoch + 1, 0, 0.0, 0.0
    tree = checkpoint_tree(state)
    if stopper.has_improved:
      ckpts.save('best', step, tree, meta_now())
    ckpts.save('latest', step, tree, meta_now())
    if stopper.should_stop:
      logging.info('Early stopping after epoch %d: no validation-loss gain '
                   'for %d epochs.', epoch, tc.early_stopping_patience)

  ckpts.wait()
  # Evaluate the best state (Keras' restore_best_weights) on the test split.
  tree, _ = ckpts.restore('best', abstract)
  if tree is None:
    raise RuntimeError(f'No best checkpoint in {workdir}: did any epoch run?')
  state = state.replace(**tree)
  _, cm = evaluate_batches(steps, state,
                           data.eval_batches(config, mesh, split='test'))
  summary = _write_eval_outputs(config, workdir, cm, int(state.step), 'test',
                                writer)
  ckpts.close()
  writer.close()
  return summary


def evaluate(config: ml_collections.ConfigDict, workdir: str, *,
             which: str = 'best', split: str = 'test', data=None) -> dict:
  """Evaluates the `which` checkpoint of `workdir` on `split`; writes
  eval_metrics.json and confusion_matrix.png there and returns the metrics."""
  config = model_scaling.resolve_config(config)
  data = data or _pipeline()
  _quiet_orbax()
  model, variables, step = checkpointing.restore_for_inference(
      config, workdir, which)
  mesh = mesh_lib.make_mesh()
  mesh_lib.check_batch_size(config.train.eval_batch_size, mesh,
                            'train.eval_batch_size')
  steps = Steps(config, mesh)
  state = TrainState.create(apply_fn=model.apply, params=variables['params'],
                            tx=optax.identity(),
                            batch_stats=variables['batch_stats'])
  state = jax.device_put(state, mesh_lib.replicated(mesh))
  _, cm = evaluate_batches(steps, state,
                           data.eval_batches(config, mesh, split=split))
  return _write_eval_outputs(config, workdir, cm, step, split)


def cross_validate(config: ml_collections.ConfigDict, workdir: str, *,
                   data=None) -> dict:
  """k-fold cross-validation: trains fold k in `<workdir>/fold_k` for k <
  dataset.num_folds, then writes mean ± std (population std over folds) of
  each metric to `<workdir>/cv_metrics.json`."""
  config = model_scaling.resolve_config(config)
  k = config.dataset.num_folds
  if k < 2:
    raise ValueError(f'config.dataset.num_folds={k}; cross-validation needs '
                     'at least 2 folds.')
  folds = []
  t0 = time.time()
  for fold in range(k):
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
      cfg.dataset.fold = fold
    logging.info('Cross-validation: training fold %d of %d.', fold + 1, k)
    folds.append(train_and_evaluate(cfg, os.path.join(workdir, f'fold_{fold}'),
                                    data=data))
    elapsed = time.time() - t0
    logging.info('Cross-validation: fold %d/%d test accuracy %.4f, macro-F1 '
                 '%.4f  (%s elapsed, about %s left)', fold + 1, k,
                 folds[-1]['accuracy'], folds[-1]['macro_f1'],
                 _fmt_time(elapsed),
                 _fmt_time(elapsed / (fold + 1) * (k - fold - 1)))
  result = {'num_folds': k, 'folds': [
      {m: f[m] for m in METRIC_KEYS + ('num_examples', 'checkpoint_step')}
      for f in folds]}
  for m in METRIC_KEYS:
    values = np.array([f[m] for f in folds], np.float64)
    result[m] = {'mean': float(values.mean()), 'std': float(values.std())}
    logging.vlog(1, 'CV %s: %.4f ± %.4f', m, values.mean(), values.std())
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'cv_metrics.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return result
