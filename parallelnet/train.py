"""Training and evaluation (PAPER.md, "Training"): the paper's recipe, data-parallel.

Recipe (configurable in `config.train`): Adam; loss = ce_weight·CE +
focal_weight·focal (`losses.py`); reduce-on-plateau and early stopping on the
validation loss, both once per epoch; the best state (lowest validation loss)
is what is evaluated on the test split.

This module is the loop: `train_and_evaluate`, `evaluate`, `cross_validate`.
The state and optimizer live in `train_state.py`, the pure jitted steps in
`steps.py` (parallelism: see there), and what is written or logged (metric
writer, NaN guard, eval_metrics.json, confusion_matrix.png) in `writers.py`;
their public names are importable from here too.
"""

import copy
import dataclasses
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import input_pipeline
from parallelnet.core import errors
from parallelnet.core import paths
from parallelnet.core import progress
from parallelnet import checkpointing
from parallelnet import history  # Per-epoch curves for the run report.
from parallelnet import modality
from parallelnet import small_data
from parallelnet import mesh as mesh_lib
from parallelnet import metrics as metrics_lib
from parallelnet import models
from parallelnet import writers
from parallelnet.models import scaling as model_scaling
# Re-exported: the state, steps and writers are public names of this module.
from parallelnet.steps import eval_step  # pylint: disable=unused-import
from parallelnet.steps import evaluate_batches
from parallelnet.steps import Steps
from parallelnet.steps import train_step  # pylint: disable=unused-import
from parallelnet.train_state import abstract_checkpoint_tree
from parallelnet.train_state import checkpoint_tree
from parallelnet.train_state import create_train_state  # pylint: disable=unused-import
from parallelnet.train_state import inference_state
from parallelnet.train_state import init_train_state
from parallelnet.train_state import keys as _keys  # pylint: disable=unused-import
from parallelnet.train_state import make_early_stopping
from parallelnet.train_state import make_optimizer  # pylint: disable=unused-import
from parallelnet.train_state import optimizer_layout
from parallelnet.train_state import plateau_transform  # pylint: disable=unused-import
from parallelnet.train_state import restored_state
from parallelnet.train_state import TrainState
from parallelnet.train_state import TRUNK_PATHS  # pylint: disable=unused-import
from parallelnet.train_state import trunk_labels  # pylint: disable=unused-import
from parallelnet.train_state import trunk_lr_multiplier_of
from parallelnet.train_state import update_plateau  # pylint: disable=unused-import
from parallelnet.writers import METRIC_KEYS
from parallelnet.writers import NonFiniteLossError  # pylint: disable=unused-import
from parallelnet.writers import plot_confusion_matrix  # pylint: disable=unused-import
from parallelnet.writers import write_eval_outputs as _write_eval_outputs


@dataclasses.dataclass
class _Run:
  """What one training run holds fixed: config, data, mesh, steps, files."""
  config: Any
  workdir: str
  data: Any
  mesh: Any
  model: Any
  steps: Steps
  steps_per_epoch: int
  layout: str
  ckpts: checkpointing.Checkpoints
  abstract: Any
  writer: Any


@dataclasses.dataclass
class _Position:
  """Where training stands: the metadata every checkpoint records."""
  stopper: Any
  layout: str
  epoch: int = 0
  position: int = 0  # Steps done in the current epoch.
  loss_sum: float = 0.0
  acc_sum: float = 0.0

  def meta(self) -> dict:
    s = self.stopper
    return dict(epoch=self.epoch, position=self.position,
                train_loss_sum=self.loss_sum, train_accuracy_sum=self.acc_sum,
                optimizer=self.layout,
                early_stopping=dict(best_metric=s.best_metric,
                                    patience_count=s.patience_count,
                                    should_stop=bool(s.should_stop)))

  def next_epoch(self):
    self.epoch, self.position, self.loss_sum, self.acc_sum = (
        self.epoch + 1, 0, 0.0, 0.0)


def _steps_per_epoch(config, data) -> int:
  """The data's steps per epoch (input_pipeline.steps_per_epoch); a
  UserError when the train split holds less than one batch."""
  steps = int(data.steps_per_epoch(config))
  if steps < 1:
    raise errors.UserError(
        f'The train split has {data.num_examples(config, "train")} examples, '
        f'fewer than one batch of config.train.batch_size='
        f'{config.train.batch_size}.')
  return steps


def _check_layout(config, workdir, ckpts, layout):
  """Refuses a workdir whose checkpoint has another optimizer layout."""
  _, saved_meta = ckpts.restore_meta('latest')
  if saved_meta is None or saved_meta.get('optimizer', 'adam') == layout:
    return
  raise errors.UserError(
      f'The checkpoint in {os.path.join(workdir, "checkpoints")} was '
      f'trained with optimizer layout {saved_meta.get("optimizer", "adam")!r}'
      f' but config.train.trunk_lr_multiplier='
      f'{trunk_lr_multiplier_of(config)} '
      f'gives {layout!r} (1 = plain Adam, 0 = frozen trunks, other = a '
      f'second Adam for the trunks); resume with the old multiplier or use '
      f'another --workdir.')


def _open_run(config, written_config, workdir, data) -> _Run:
  """Checks the settings, the data and the workdir, then opens the run's
  checkpoints, config.json and metric writer."""
  tc = config.train
  modality.dropout_settings(config)  # Checked before the data is built.
  mesh = mesh_lib.make_mesh()
  mesh_lib.check_batch_size(tc.batch_size, mesh)
  mesh_lib.check_batch_size(tc.eval_batch_size, mesh, 'train.eval_batch_size')
  model = models.get_model(config)
  # The data first (it may be built now): a run that fails on its inputs
  # leaves no workdir, checkpoint folder or event file behind.
  steps_per_epoch = _steps_per_epoch(config, data)
  layout = optimizer_layout(trunk_lr_multiplier_of(config))  # Checks it.
  ckpts = checkpointing.Checkpoints(workdir, config)
  # Refuse another model's workdir (and optimizer layout) up front.
  _check_layout(config, workdir, ckpts, layout)
  # The full config, so the workdir alone can be restored (teachers, §3.1).
  checkpointing.write_config(written_config, workdir)
  return _Run(config=config, workdir=workdir, data=data, mesh=mesh,
              model=model, steps=Steps(config, mesh),
              steps_per_epoch=steps_per_epoch, layout=layout, ckpts=ckpts,
              abstract=abstract_checkpoint_tree(config, model, mesh),
              writer=writers.metric_writer(workdir))


def _start(run: _Run) -> tuple[TrainState, _Position]:
  """The state and position to train from: the newest checkpoint (a
  damaged one is logged, set aside and the previous one used), else a
  fresh initial state."""
  tc = run.config.train
  patience = small_data.early_stopping_patience(
      run.config, run.data.num_examples(run.config, 'validation'))
  pos = _Position(stopper=make_early_stopping(patience), layout=run.layout)
  tree, meta = run.ckpts.restore('latest', run.abstract, fallback=True)
  if tree is None:
    return init_train_state(run.config, run.model, run.mesh), pos
  run.ckpts.repair_best(int(tree['step']), tree, meta)
  state = restored_state(run.config, run.model, tree)
  pos.epoch, pos.position = meta['epoch'], meta['position']
  pos.loss_sum, pos.acc_sum = meta['train_loss_sum'], meta['train_accuracy_sum']
  pos.stopper = pos.stopper.replace(**meta['early_stopping'])
  if pos.epoch >= tc.num_epochs or pos.stopper.should_stop:
    logging.info('Training in %s had finished (%d epochs%s); evaluating '
                 'its best checkpoint.', run.workdir, pos.epoch,
                 ', stopped early' if pos.stopper.should_stop else '')
  else:
    logging.info('Resuming at epoch %d, step %d of the epoch (global step '
                 '%d).', pos.epoch + 1, pos.position, int(state.step))
  return state, pos


class _Rate:
  """Steps per second since the run (re)started, for the ETA log line."""

  def __init__(self, step, total_steps):
    self.t0, self.step0, self.total = time.time(), step, total_steps

  def log(self, run, pos, step, out):
    tc = run.config.train
    rate = (step - self.step0) / max(time.time() - self.t0, 1e-9)
    eta = (self.total - step) / max(rate, 1e-9)
    logging.vlog(1, 'epoch %d step %d/%d  loss %.4f  %.2f steps/s  ETA %s '
                 '(if all %d epochs run)', pos.epoch + 1, pos.position,
                 run.steps_per_epoch, float(out['loss']), rate,
                 progress.format_seconds(eta), tc.num_epochs)
    run.writer.write_scalars(step, {'train/loss': out['loss']})


def _train_epoch(run: _Run, state, pos: _Position, step: int, rate: _Rate):
  """The rest of epoch `pos.epoch` from step `pos.position` of it.
  Returns (state, step)."""
  tc = run.config.train
  batches = run.data.train_batches(run.config, run.mesh, epoch=pos.epoch,
                                   start_step=pos.position)
  # Progress within the epoch, only when it takes long (paper size).
  bar = progress.Progress(run.steps_per_epoch, f'epoch {pos.epoch + 1}',
                          unit='steps', interval_s=30.0,
                          enabled=jax.process_index() == 0)
  bar.done = pos.position
  # The metrics of step k are read after step k + 1 is dispatched, so the
  # host never waits for a step before queueing the next one.
  pending = []

  def consume():
    for s, out in pending:
      writers.check_finite(s, out, run.ckpts, run.workdir)
      pos.loss_sum += float(out['loss'])
      pos.acc_sum += float(out['accuracy'])
    pending.clear()

  for batch in batches:
    if pos.position >= run.steps_per_epoch:
      break
    state, out = run.steps.train(state, batch,
                                 run.steps.step_key(state.rng, step))
    consume()
    pending.append((step, out))
    step, pos.position = step + 1, pos.position + 1
    bar.update()
    if tc.log_every_steps > 0 and step % tc.log_every_steps == 0:
      rate.log(run, pos, step, out)
    if (tc.checkpoint_every_steps > 0 and pos.position < run.steps_per_epoch
        and step % tc.checkpoint_every_steps == 0):
      consume()
      run.ckpts.save('latest', step, checkpoint_tree(state), pos.meta())
  consume()
  bar.close()
  if pos.position < run.steps_per_epoch:
    raise ValueError(
        f'Epoch {pos.epoch} yielded {pos.position} training batches; expected '
        f'{run.steps_per_epoch} (num_examples // batch_size).')
  return state, step


def _end_epoch(run: _Run, state, pos: _Position, step: int, seconds: float):
  """Validates, steps the plateau and early stopping, logs and saves the
  latest (and maybe best) checkpoint. Returns the state."""
  tc, config = run.config.train, run.config
  val_loss, cm = evaluate_batches(
      run.steps, state,
      run.data.eval_batches(config, run.mesh, split='validation'))
  val = metrics_lib.summarize(cm, config.dataset.classes)
  state = run.steps.plateau(state, jnp.float32(val_loss))
  pos.stopper = pos.stopper.update(val_loss)
  scalars = {'train/loss': pos.loss_sum / pos.position,
             'train/accuracy': pos.acc_sum / pos.position,
             'val/loss': val_loss,
             'lr': tc.learning_rate * float(state.plateau.scale),
             **{f'val/{k}': val[k] for k in METRIC_KEYS}}
  run.writer.write_scalars(step, scalars)
  run.writer.flush()
  history.log_epoch(run.workdir, pos.epoch + 1, step, scalars, seconds)
  logging.vlog(1, 'epoch %d/%d done: %s; val confusion %s', pos.epoch + 1,
               tc.num_epochs,
               ', '.join(f'{k} {v:.4g}' for k, v in scalars.items()),
               val['confusion_matrix'])
  logging.info(
      'epoch %*d/%d  loss %.4f  acc %.3f  val loss %.4f  val acc %.3f  '
      'lr %.3g  %.1f s%s', len(str(tc.num_epochs)), pos.epoch + 1,
      tc.num_epochs, scalars['train/loss'], scalars['train/accuracy'],
      val_loss, val['accuracy'], scalars['lr'], seconds,
      '  (best)' if pos.stopper.has_improved else '')
  pos.next_epoch()
  if pos.stopper.has_improved:
    run.ckpts.save(('best', 'latest'), step, checkpoint_tree(state),
                   dict(pos.meta(), best_step=step))
  else:
    run.ckpts.save('latest', step, checkpoint_tree(state), pos.meta())
  if pos.stopper.should_stop:
    logging.info('Early stopping after epoch %d: no validation-loss gain '
                 'for %d epochs.', pos.epoch, tc.early_stopping_patience)
  return state


def _test_best(run: _Run, state) -> dict:
  """Evaluates the best state (Keras' restore_best_weights) on the test
  split and writes its outputs."""
  run.ckpts.wait()
  tree, _ = run.ckpts.restore('best', run.abstract)
  if tree is None:
    raise RuntimeError(
        f'No best checkpoint in {run.workdir}: did any epoch run?')
  state = state.replace(**tree)
  _, cm = evaluate_batches(
      run.steps, state, run.data.eval_batches(run.config, run.mesh,
                                              split='test'))
  return _write_eval_outputs(run.config, run.workdir, cm, int(state.step),
                             'test', run.writer)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, data=None) -> dict:
  """Trains (resuming from `workdir` if it holds a checkpoint), then
  evaluates the best state on the test split. Returns the test metrics,
  also written to `<workdir>/eval_metrics.json`.

  `data` is the input pipeline module (default `input_pipeline`); tests may
  pass an object with the same `train_batches`, `eval_batches`,
  `num_examples` and `steps_per_epoch`.
  """
  data = data or input_pipeline
  # A source folder is fingerprinted once per run, whichever `data` reads it.
  with input_pipeline.fixed_sources():
    return _train_and_evaluate(config, workdir, data)


def _train_and_evaluate(config, workdir, data) -> dict:
  writers.quiet_orbax()
  # config.json keeps the user's 'auto'; the run uses the resolved scaling.
  run = _open_run(model_scaling.resolve_config(config), config, workdir, data)
  state, pos = _start(run)
  tc = run.config.train
  step = int(state.step)  # Tracked on the host from here on.
  rate = _Rate(step, run.steps_per_epoch * tc.num_epochs)
  while pos.epoch < tc.num_epochs and not pos.stopper.should_stop:
    epoch_t0 = time.time()
    state, step = _train_epoch(run, state, pos, step, rate)
    state = _end_epoch(run, state, pos, step, time.time() - epoch_t0)
  summary = _test_best(run, state)
  run.ckpts.close()
  run.writer.close()
  return summary


def evaluate(config: ml_collections.ConfigDict, workdir: str, *,
             which: str = 'best', split: str = 'test', data=None) -> dict:
  """Evaluates the `which` checkpoint of `workdir` on `split`; writes
  eval_metrics.json and confusion_matrix.png there (another split:
  eval_metrics_<split>.json, confusion_matrix_<split>.png) and returns the
  metrics."""
  config = model_scaling.resolve_config(config)
  data = data or input_pipeline
  writers.quiet_orbax()
  model, variables, step = checkpointing.restore_for_inference(
      config, workdir, which)
  mesh = mesh_lib.make_mesh()
  mesh_lib.check_batch_size(config.train.eval_batch_size, mesh,
                            'train.eval_batch_size')
  steps = Steps(config, mesh)
  state = inference_state(model, variables, mesh)
  _, cm = evaluate_batches(steps, state,
                           data.eval_batches(config, mesh, split=split))
  return _write_eval_outputs(config, workdir, cm, step, split)


def _cv_summary(folds) -> dict:
  """Per-fold metrics and their mean and population std over folds."""
  result = {'num_folds': len(folds), 'folds': [
      {m: f[m] for m in METRIC_KEYS + ('num_examples', 'checkpoint_step')}
      for f in folds]}
  for m in METRIC_KEYS:
    values = np.array([f[m] for f in folds], np.float64)
    result[m] = {'mean': float(values.mean()), 'std': float(values.std())}
    logging.vlog(1, 'CV %s: %.4f ± %.4f', m, values.mean(), values.std())
  return result


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
  with input_pipeline.fixed_sources():  # Every fold, one version of the source.
    for fold in range(k):
      cfg = copy.deepcopy(config)
      with cfg.unlocked():
        cfg.dataset.fold = fold
      logging.info('Cross-validation: training fold %d of %d.', fold + 1, k)
      folds.append(train_and_evaluate(
          cfg, os.path.join(workdir, f'fold_{fold}'), data=data))
      elapsed = time.time() - t0
      logging.info('Cross-validation: fold %d/%d test accuracy %.4f, macro-F1 '
                   '%.4f  (%s elapsed, about %s left)', fold + 1, k,
                   folds[-1]['accuracy'], folds[-1]['macro_f1'],
                   progress.format_seconds(elapsed),
                   progress.format_seconds(
                       elapsed / (fold + 1) * (k - fold - 1)))
  result = _cv_summary(folds)
  if jax.process_index() == 0:
    paths.write_json_atomic(os.path.join(workdir, 'cv_metrics.json'), result)
  return result
