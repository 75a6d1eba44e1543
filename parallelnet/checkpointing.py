"""Preemption-safe orbax checkpoints: the latest one and the best one.

Layout under `<workdir>/checkpoints/`:
  latest/<step>/{state,meta}  kept: 2. Written at every epoch end and every
                              `train.checkpoint_every_steps`; training resumes
                              from the newest that restores.
  best/<step>/{state,meta}    kept: 1. Written when the validation loss
                              improves; the final test evaluation, --mode=eval
                              and the explanations read it.
  damaged/<which>_<step>      checkpoints that failed to restore, set aside
                              by a resume that fell back to an older step.
`state` is a pytree (step, params, batch_stats, opt_state, plateau, rng),
packed into one flat array per entry and dtype (parallelnet/packing.py:
orbax's cost is per array); checkpoints without `format` in their meta were
written unpacked and restore as they are;
`meta` is JSON: epoch, position in the epoch, early-stopping state, running
train-loss sums, `model_config`, the fields that fix the parameter shapes
(compared on restore, so a checkpoint of another model is refused by name),
and `state_crc32`, a checksum per array (compared on restore, so damaged
values are refused rather than trained on).
Two managers rather than one with `best_fn`: a best_fn manager with
max_to_keep=1 would delete the latest checkpoint whenever it is not the best.

Beside them, `<workdir>/config.json` holds the full config the run trained
with (written by training), so a workdir alone can be restored with its own
preprocessing: `restore_from_workdir(workdir)` (dataset construction's
teachers use it), and the modes that read a trained workdir take its model,
input and dataset settings from it (`config_for_workdir`).
"""

import os
from typing import Any
import zlib

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from configs import parallelnet as default_config
from parallelnet.core import errors
from parallelnet.core import paths

from parallelnet import mesh as mesh_lib
from parallelnet import models
from parallelnet import packing


# Steps kept of each kind: two `latest`, so that a damaged newest one (bit
# rot, a partial copy) has an older one to fall back to.
KEEP = {'latest': 2, 'best': 1}


def _absolute(path: str) -> str:
  """os.path.abspath for local paths; URLs (gs://...) unchanged."""
  return path if '://' in path else os.path.abspath(path)


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
  root = epath.Path(_absolute(workdir)) / 'checkpoints' / which
  return root.is_dir() and any(p.name.isdigit() for p in root.iterdir())


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


class DamagedCheckpointError(errors.UserError):
  """A checkpoint that cannot be read back intact (bit rot, partial copy)."""


# What the precheck and the orbax restore of a damaged checkpoint raise:
# tensorstore's ValueError (DATA_LOSS, CRC mismatch) or a plain Exception
# ("Encountered error while reading array index"), OSError for missing files.
_READ_ERRORS = (Exception,)


def tree_checksums(tree) -> dict[str, int]:
  """CRC-32 of every leaf's bytes, keyed by its tree path.

  Saved in `meta` and compared on restore: OCDBT checksums its b-tree nodes
  but not the array chunks, so a flipped byte in the data would otherwise
  restore silently as wrong weights. (zlib's CRC-32 runs at GB/s; hashlib
  digests are slower and guard against nothing more here.)
  """
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    out[jax.tree_util.keystr(path)] = zlib.crc32(
        np.ascontiguousarray(np.asarray(leaf)).view(np.uint8))
  return out


def _reason(e: BaseException) -> str:
  """The first line of a read error, without tensorstore's spec dump."""
  text = str(e).strip().split('\n')[0]
  for cut in (' See full TensorStore details', ' [tensorstore_spec'):
    text = text.split(cut)[0]
  return text[:400]


def _all_processes_agree(ok: bool) -> bool:
  """True only if `ok` on every process: they fall back together (shared
  storage makes a disagreement rare, but one would desynchronise them)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


class Checkpoints:
  """The `latest` and `best` CheckpointManagers of one workdir."""

  def __init__(self, workdir: str, config, *, async_save: bool = True):
    self.config = config
    self.root = epath.Path(_absolute(workdir)) / 'checkpoints'
    self.managers = {
        which: ocp.CheckpointManager(
            self.root / which, item_names=('state', 'meta'),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=KEEP[which], create=True,
                cleanup_tmp_directories=True,
                enable_async_checkpointing=async_save))
        for which in ('latest', 'best')}
    self._best_in_flight = None  # The step of a best save maybe unfinished.

  def latest_step(self, which: str = 'latest') -> int | None:
    return self.managers[which].latest_step()

  def path(self, which: str, step: int) -> str:
    return str(self.root / which / str(step))

  def save(self, which: str | tuple[str, ...], step: int, state_tree,
           meta: dict):
    """Saves (async) `state_tree` and `meta` as `which` at `step`: one kind
    or several ('best', 'latest'), which then share one packed copy."""
    kinds = (which,) if isinstance(which, str) else tuple(which)
    # Packed into new buffers: the async save reads them after training has
    # moved on and the step function has donated (reused) the originals.
    state_tree = packing.pack(state_tree)
    meta = dict(meta, model_config=model_config(self.config),
                format=packing.FORMAT, state_crc32=tree_checksums(state_tree))
    for kind in kinds:
      mgr = self.managers[kind]
      if step in mgr.all_steps():
        # A resumed run redoing work that was saved just before the kill:
        # the content is identical (training is deterministic), keep it.
        continue
      if kind == 'latest' and self._best_in_flight is not None and (
          self._best_in_flight != step or jax.process_count() > 1):
        # An older best must be on disk before a newer `latest`, or a kill
        # in between would resume with a stale best. A best of this same
        # step may still be writing: `repair_best` rewrites it from
        # `latest` if a kill interrupts it. Not across processes: orbax
        # names its commit barriers by step, so two managers committing
        # the same step at once would wait on each other's barrier.
        self.managers['best'].wait_until_finished()
        self._best_in_flight = None
      if kind == 'best':
        self._best_in_flight = step
      mgr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state_tree),
          meta=ocp.args.JsonSave(meta)))

  def repair_best(self, step: int, state_tree, meta: dict):
    """Writes `best` at `step` from the latest checkpoint of that step when
    a kill interrupted its write: a `latest` whose meta names itself as
    the best (`best_step`) holds the same state."""
    newest = self.managers['best'].latest_step()
    if meta.get('best_step') != step or (newest is not None
                                         and newest >= step):
      return  # Not a best, or written (a newer best: a fallback's resume).
    logging.info('The best checkpoint of step %d was cut short; writing it '
                 'again from the latest checkpoint of the same step.', step)
    self.save('best', step, state_tree, meta)
    self.managers['best'].wait_until_finished()

  def _steps(self, which: str, step: int | None) -> list[int]:
    """[step], or (None) all `which` steps, newest first."""
    if step is not None:
      return [step]
    return sorted(self.managers[which].all_steps(), reverse=True)

  def _read_meta(self, which: str, step: int) -> dict:
    try:
      return self.managers[which].restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))['meta']
    except _READ_ERRORS as e:
      raise DamagedCheckpointError(
          f'its meta is unreadable: {_reason(e)}') from e

  def restore_meta(self, which: str, step: int | None = None):
    """(step, meta) of the `which` checkpoint (default: the newest whose
    meta reads), checked against the config; (None, None) when none."""
    for s in self._steps(which, step):
      try:
        meta = self._read_meta(which, s)
      except DamagedCheckpointError:
        if step is not None:
          raise
        continue  # restore() reports it.
      check_model_config(meta['model_config'], self.config,
                         self.path(which, s))
      return s, meta
    return None, None

  def _check_btree(self, which: str, step: int):
    """Lists the state's OCDBT database: reads (and CRC-checks) every b-tree
    node. Cheap, and it fails cleanly where orbax's restore would leave
    pending reads that print 'Event loop is closed' tracebacks."""
    state_dir = self.root / which / str(step) / 'state'
    if not (state_dir / 'manifest.ocdbt').exists():
      return  # Not OCDBT: orbax's restore does the checking.
    url = str(state_dir) + '/'
    if '://' not in url:
      url = 'file://' + url
    ts.KvStore.open({'driver': 'ocdbt', 'base': url}).result().list().result()

  def _restore_step(self, which: str, step: int, abstract_state,
                    partial: bool):
    """(state, meta) of one step; DamagedCheckpointError if unreadable."""
    meta = self._read_meta(which, step)
    check_model_config(meta['model_config'], self.config,
                       self.path(which, step))
    packed = meta.get('format') == packing.FORMAT  # Else written unpacked.
    wanted = abstract_state
    if packed:
      abstract_state = packing.packed_abstract(abstract_state)
    if partial:
      args = ocp.args.PyTreeRestore(
          abstract_state, partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(
              abstract_state))
    else:
      args = ocp.args.StandardRestore(abstract_state)
    try:
      self._check_btree(which, step)
      state = self.managers[which].restore(step, args=ocp.args.Composite(
          state=args))['state']
    except _READ_ERRORS as e:
      raise DamagedCheckpointError(
          f'its state is unreadable: {_reason(e)}') from e
    saved = meta.get('state_crc32')
    if saved is not None:  # Absent in checkpoints written before it was.
      for key, crc in tree_checksums(state).items():
        if key in saved and saved[key] != crc:
          raise DamagedCheckpointError(
              f'the values of {key} do not match the checksum saved with '
              'them')
    if packed:
      state = packing.unpack(state, wanted)
    return state, meta

  def restore(self, which: str, abstract_state, step: int | None = None, *,
              partial: bool = False, fallback: bool = False):
    """(state_tree, meta) of the `which` checkpoint, or (None, None).

    `abstract_state` gives structure, shapes, dtypes and shardings (e.g.
    `jax.eval_shape` output with `.sharding` set). With `partial`, it may
    name a subset of the saved top-level entries; only those are read.

    A damaged checkpoint (unreadable, or values that do not match their
    saved checksums) raises DamagedCheckpointError naming it; with
    `fallback` (training's resume) it is logged, set aside under
    `checkpoints/damaged/` and the next older step is tried, and only when
    none restores does the error come, naming the folder.
    """
    damaged = []
    for s in self._steps(which, step):
      try:
        state, meta = self._restore_step(which, s, abstract_state, partial)
        failure = None
      except DamagedCheckpointError as e:
        state, failure = None, e
      if not _all_processes_agree(failure is None):
        reason = failure or 'it is unreadable on another process'
        if not fallback:
          raise DamagedCheckpointError(
              f'The {which!r} checkpoint {self.path(which, s)} is damaged: '
              f'{reason}. Restore that folder from a backup, use another '
              'checkpoint, or train again.')
        logging.error('Checkpoint %s is damaged (%s); trying an older one.',
                      self.path(which, s), reason)
        damaged.append((s, reason))
        continue
      if damaged:
        self._set_aside(which, [d for d, _ in damaged])
        logging.warning(
            'Resuming from %s, the newest %r checkpoint that restores; the '
            'damaged step(s) %s were moved to %s.', self.path(which, s),
            which, ', '.join(str(d) for d, _ in damaged),
            self.root / 'damaged')
      logging.vlog(1, 'Restored %s checkpoint at step %d.', which, s)
      return state, meta
    if damaged:
      raise DamagedCheckpointError(
          f'No {which!r} checkpoint in {self.root / which} restores: ' +
          '; '.join(f'step {d}: {r}' for d, r in damaged) +
          '. Restore the folder from a backup, or move it away to train '
          'from scratch.')
    return None, None

  def _set_aside(self, which: str, steps: list[int]):
    """Moves damaged steps out of the manager's folder, so that training can
    write those steps again (orbax saves no step below its latest)."""
    if jax.process_index() == 0:
      dest = self.root / 'damaged'
      dest.mkdir(parents=True, exist_ok=True)
      for s in steps:
        target = dest / f'{which}_{s}'
        n = 1
        while target.exists():
          target, n = dest / f'{which}_{s}.{n}', n + 1
        paths.move(self.root / which / str(s), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('parallelnet damaged set aside')
    self.managers[which].reload()

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
          f'No {which!r} checkpoint under {paths.join(workdir, "checkpoints")}'
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
  paths.write_text_atomic(paths.join(workdir, CONFIG_FILE),
                          config.to_json(indent=2, sort_keys=True) + '\n')


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with, from its config.json.

  Every saved field wins; fields that the current code knows but the file
  lacks (added after the run) take configs/parallelnet.py's defaults.
  """
  path = paths.join(workdir, CONFIG_FILE)
  if not paths.isfile(path):
    raise errors.UserError(
        f'No {CONFIG_FILE} in {workdir!r}: it is not a training workdir of '
        'this codebase, or it was trained before training wrote its config. '
        f'Train it with main.py, or write its config there as {CONFIG_FILE}.')
  return default_config.config_from_json(path)


# Modes that run a trained workdir's model: they take its settings.
WORKDIR_MODES = ('eval', 'explain', 'predict', 'robustness', 'report')
# The sections that make the model what it is: its structure, the inputs it
# was trained on (preprocessing) and the data (classes, splits, source).
WORKDIR_SECTIONS = ('model', 'input', 'dataset')


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = _normalise(v)
  return out


def config_for_workdir(config: ml_collections.ConfigDict, workdir: str,
                       overrides: dict | None = None
                       ) -> ml_collections.ConfigDict:
  """The config a mode that reads a trained `workdir` runs with.

  The model, input and dataset sections come from `<workdir>/config.json`
  (training wrote it), the other sections (train.eval_batch_size, explain,
  predict) from `config`, and the command line's `overrides` (config_flags'
  flat {'a.b': value}) apply on top. An override of a model or input field
  that differs from the saved value contradicts the trained weights: a
  one-line UserError naming both. Without config.json, `config` as is.
  """
  path = paths.join(workdir, CONFIG_FILE)
  if not paths.isfile(path):
    return config
  saved = read_config(workdir)
  overrides = dict(overrides or {})
  flat_saved = _flat(saved.to_dict())
  for key, value in sorted(overrides.items()):
    if key.split('.')[0] in ('model', 'input') and key in flat_saved and (
        _normalise(value) != flat_saved[key]):
      raise ModelMismatchError(
          f'--config.{key}={value!r} contradicts the model in {workdir}, '
          f'trained with {key}={flat_saved[key]!r} (its {CONFIG_FILE}); drop '
          'the override, or train another workdir with it.')
  out = ml_collections.ConfigDict(config.to_dict())
  for section in WORKDIR_SECTIONS:
    out[section] = ml_collections.ConfigDict(saved[section].to_dict())
  out.update_from_flattened_dict(overrides)
  changed = sorted(k for k, v in _flat(out.to_dict()).items()
                   if k.split('.')[0] in WORKDIR_SECTIONS
                   and _flat(config.to_dict()).get(k) != v)
  if changed:
    logging.info('Model, input and dataset settings from %s (differ from '
                 'the --config file in %s).', paths.abspath(path),
                 ', '.join(changed[:8]) + (' ...' if len(changed) > 8 else ''))
  out.lock()
  return out


def restore_from_workdir(workdir: str, which: str = 'best'):
  """(config, model, {'params', 'batch_stats'}, step) from a workdir alone,
  using the config it was trained with (its config.json)."""
  config = read_config(workdir)
  model, variables, step = restore_for_inference(config, workdir, which)
  return config, model, variables, step
