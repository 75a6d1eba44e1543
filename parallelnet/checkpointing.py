"""Preemption-safe orbax checkpoints: the latest one and the best one.

Layout under `<workdir>/checkpoints/`:
  latest/<step>/{state,meta}  kept: 1. Written at every epoch end and every
                              `train.checkpoint_every_steps`; training resumes
                              from it.
  best/<step>/{state,meta}    kept: 1. Written when the validation loss
                              improves; the final test evaluation, --mode=eval
                              and the explanations read it.
`state` is a pytree (step, params, batch_stats, opt_state, plateau, rng);
`meta` is JSON: epoch, position in the epoch, early-stopping state, running
train-loss sums and `model_config`, the fields that fix the parameter shapes
(compared on restore, so a checkpoint of another model is refused by name).
Two managers rather than one with `best_fn`: a best_fn manager with
max_to_keep=1 would delete the latest checkpoint whenever it is not the best.

Beside them, `<workdir>/config.json` holds the full config the run trained
with (written by training), so a workdir alone can be restored with its own
preprocessing: `restore_from_workdir(workdir)` (dataset construction's
teachers use it).
"""

import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from input_pipeline import errors

from parallelnet import mesh as mesh_lib


def model_config(config) -> dict[str, Any]:
  """The config fields that determine the variables' structure, flattened."""
  # Init weight files do not change the structure.
  init_files = ('pretrained', 'speech_weights', 'image_weights')
  out = {f'model.{k}': v for k, v in sorted(config.model.to_dict().items())
         if k not in init_files}
  out['dataset.classes'] = list(config.dataset.classes)
  for k in ('image_size', 'num_frames', 'n_mels'):
    out[f'input.{k}'] = config.input[k]
  return out


def _normalise(v):
  return list(v) if isinstance(v, tuple) else v


class ModelMismatchError(errors.UserError, ValueError):
  """A checkpoint written for another model configuration."""


class MissingCheckpointError(errors.UserError, FileNotFoundError):
  """A workdir without the checkpoint asked for (not trained yet)."""


def has_checkpoint(workdir: str, which: str = 'best') -> bool:
  """Whether `workdir` holds a `which` checkpoint; reads, creates nothing."""
  root = os.path.join(os.path.abspath(workdir), 'checkpoints', which)
  return os.path.isdir(root) and any(n.isdigit() for n in os.listdir(root))


def check_model_config(saved: dict, config, path: str):
  """Raises ModelMismatchError naming the first field where `saved` differs."""
  current = model_config(config)
  for key in list(current) + [k for k in saved if k not in current]:
    if key not in saved or key not in current or (
        _normalise(saved[key]) != _normalise(current[key])):
      raise ModelMismatchError(
          f'Checkpoint {path} was written with a different model '
          f'configuration: {key} is {saved.get(key, "<absent>")!r} in the '
          f'checkpoint but {current.get(key, "<absent>")!r} in the config. '
          f'Use another --workdir or the checkpoint\'s configuration.')


class Checkpoints:
  """The `latest` and `best` CheckpointManagers of one workdir."""

  def __init__(self, workdir: str, config, *, async_save: bool = True):
    self.config = config
    root = os.path.join(os.path.abspath(workdir), 'checkpoints')
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save)
    self.managers = {
        which: ocp.CheckpointManager(os.path.join(root, which), options=opts,
                                     item_names=('state', 'meta'))
        for which in ('latest', 'best')}

  def latest_step(self, which: str = 'latest') -> int | None:
    return self.managers[which].latest_step()

  def save(self, which: str, step: int, state_tree, meta: dict):
    """Saves (async) `state_tree` and `meta` as `which` at `step`."""
    mgr = self.managers[which]
    if step in mgr.all_steps():
      # A resumed run redoing work that was saved just before the kill: the
      # content is identical (training is deterministic), keep the old one.
      return
    if which == 'latest':
      # The best checkpoint must be on disk before a `latest` that refers to
      # it, or a kill in between would resume with a stale best.
      self.managers['best'].wait_until_finished()
    meta = dict(meta, model_config=model_config(self.config))
    # Private copies: the async save reads them after training has moved on
    # and the step function has donated (reused) the originals' buffers.
    state_tree = jax.tree.map(lambda x: x.copy(), state_tree)
    mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_tree),
        meta=ocp.args.JsonSave(meta)))

  def restore_meta(self, which: str, step: int | None = None):
    """(step, meta) of the `which` checkpoint, checked against the config;
    (None, None) when there is none."""
    mgr = self.managers[which]
    step = mgr.latest_step() if step is None else step
    if step is None:
      return None, None
    meta = mgr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']
    check_model_config(meta['model_config'], self.config,
                       str(mgr.directory / str(step)))
    return step, meta

  def restore(self, which: str, abstract_state, step: int | None = None, *,
              partial: bool = False):
    """(state_tree, meta) of the `which` checkpoint, or (None, None).

    `abstract_state` gives structure, shapes, dtypes and shardings (e.g.
    `jax.eval_shape` output with `.sharding` set). With `partial`, it may
    name a subset of the saved top-level entries; only those are read.
    """
    step, meta = self.restore_meta(which, step)
    if step is None:
      return None, None
    if partial:
      args = ocp.args.PyTreeRestore(
          abstract_state, partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(
              abstract_state))
    else:
      args = ocp.args.StandardRestore(abstract_state)
    state = self.managers[which].restore(step, args=ocp.args.Composite(
        state=args))['state']
    logging.info('Restored %s checkpoint at step %d.', which, step)
    return state, meta

  def wait(self):
    for mgr in self.managers.values():
      mgr.wait_until_finished()

  def close(self):
    for mgr in self.managers.values():
      mgr.close()


def abstract_with_sharding(tree, sharding):
  """ShapeDtypeStructs of `tree` (arrays or structs) placed on `sharding`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      tree)


def abstract_inference_tree(config, model, mesh) -> dict:
  """ShapeDtypeStructs (replicated on `mesh`) of the checkpoint entries that
  inference reads: step, params, batch_stats. They depend on the model only,
  not on the optimizer, so this module needs nothing from train.py (which
  imports this one: the dependency is one-way)."""
  from parallelnet import models  # pylint: disable=g-import-not-at-top

  def make():
    variables = models.init_variables(model, config, jax.random.key(0),
                                      load_pretrained=False)
    return dict(step=jnp.zeros((), jnp.int32), params=variables['params'],
                batch_stats=variables['batch_stats'])

  return abstract_with_sharding(jax.eval_shape(make), mesh_lib.replicated(mesh))


def restore_for_inference(config: ml_collections.ConfigDict, workdir: str,
                          which: str = 'best'):
  """(model, {'params', 'batch_stats'}, step) from a training workdir.

  Reads only step, params and batch_stats (an orbax partial restore): the
  optimizer state's layout (e.g. train.trunk_lr_multiplier) does not matter.
  Raises FileNotFoundError when `workdir` holds no `which` checkpoint and
  ValueError when it was written for another model configuration.
  """
  from parallelnet import models  # pylint: disable=g-import-not-at-top
  if which not in ('best', 'latest'):
    raise ValueError(f'which={which!r}; expected "best" or "latest".')
  if not has_checkpoint(workdir, which):  # Checked first: orbax would create
    raise MissingCheckpointError(         # the (empty) folders.
        f'No {which!r} checkpoint in --workdir={workdir}: it holds no '
        'trained model. Train first: python main.py --config=<your config> '
        f'--workdir={workdir}')
  model = models.get_model(config)
  mesh = mesh_lib.make_mesh()
  abstract = abstract_inference_tree(config, model, mesh)
  ckpts = Checkpoints(workdir, config, async_save=False)
  try:
    tree, _ = ckpts.restore(which, abstract, partial=True)
    if tree is None:
      raise MissingCheckpointError(
          f'No {which!r} checkpoint under {os.path.join(workdir, "checkpoints")}'
          f'; train first (python main.py --workdir={workdir}).')
    step = int(tree['step'])
  finally:
    ckpts.close()
  return model, {'params': tree['params'],
                 'batch_stats': tree['batch_stats']}, step


CONFIG_FILE = 'config.json'


def write_config(config: ml_collections.ConfigDict, workdir: str):
  """Writes the full `config` to `<workdir>/config.json` (process 0 only).

  Atomic (temporary file, then rename): a reader never sees half a file.
  """
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(config.to_json(indent=2, sort_keys=True))
    f.write('\n')
  os.replace(tmp, path)


def _merge(base: dict, saved: dict) -> dict:
  out = dict(base)
  for k, v in saved.items():
    out[k] = (_merge(base[k], v) if isinstance(v, dict)
              and isinstance(base.get(k), dict) else v)
  return out


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with, from its config.json.

  Every saved field wins; fields that the current code knows but the file
  lacks (added after the run) take configs/parallelnet.py's defaults.
  """
  from configs import parallelnet as default_config  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise errors.UserError(
        f'No {CONFIG_FILE} in {workdir!r}: it is not a training workdir of '
        'this codebase, or it was trained before training wrote its config. '
        f'Train it with main.py, or write its config there as {CONFIG_FILE}.')
  try:
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.UserError(f'{path} is not readable JSON ({e}).') from e
  if not isinstance(saved, dict):
    raise errors.UserError(f'{path} does not hold a config object.')
  return ml_collections.ConfigDict(
      _merge(default_config.get_config().to_dict(), saved))


def restore_from_workdir(workdir: str, which: str = 'best'):
  """(config, model, {'params', 'batch_stats'}, step) from a workdir alone,
  using the config it was trained with (its config.json)."""
  config = read_config(workdir)
  model, variables, step = restore_for_inference(config, workdir, which)
  return config, model, variables, step
