"""tf.data pipelines that turn the built TFDS data into global jax.Arrays.

Batch dicts (all global `jax.Array`s sharded on the mesh's 'data' axis):
  train_batches: image (B, S, S, 3) float32 scaled per
                 the explicit input.image_scaling (resolved by the entry point),
                 spectrogram (B, T, F, 1) float32 in [0, 1], label (B,) int32.
  eval_batches:  the same plus mask (B,) bool, False on padding.
Each process reads its own contiguous shard of the split (process_split)
and feeds global_batch // process_count examples per step; steps per epoch
= num_examples('train') // global batch (steps_per_epoch), the same on every
process. Splits: see split_names.
"""

import contextlib
import functools
import logging
import math
import os
import shutil

from parallelnet.core import progress

tf = progress.import_tensorflow()  # Without Keras: ~1 s less per process.
# TF only feeds data here: keep it off the accelerators that JAX owns.
tf.config.set_visible_devices([], 'GPU')

import jax  # pylint: disable=g-import-not-at-top
from jax._src import distributed  # pylint: disable=g-import-not-at-top
from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from input_pipeline import audio as audio_lib  # pylint: disable=g-import-not-at-top
from input_pipeline import builders  # pylint: disable=g-import-not-at-top
from parallelnet.core import errors  # pylint: disable=g-import-not-at-top
from input_pipeline import image as image_lib  # pylint: disable=g-import-not-at-top
from input_pipeline import manifest as manifest_lib  # pylint: disable=g-import-not-at-top
from parallelnet.core import scaling as scaling_lib  # pylint: disable=g-import-not-at-top

MODEL_KEYS = ('image', 'spectrogram', 'label')


def _scaling(config):
  """The explicit pixel scaling of `config.input.image_scaling`.

  'auto' depends on the model's weights, which the pipeline does not know:
  the entry point resolves it first (parallelnet.models.scaling.resolve_config).
  """
  mode = config.input.image_scaling
  if mode not in scaling_lib.SCALINGS:
    raise errors.UserError(
        f'input.image_scaling={mode!r} reached the input pipeline unresolved; '
        f'resolve it with parallelnet.models.scaling.resolve_config(config) '
        f'(or set one of {", ".join(scaling_lib.SCALINGS)}).')
  return mode


# How long the other processes wait at the build barrier for process 0 to
# build a dataset (B-T4SA's 80k examples take hours on a small host).
BUILD_BARRIER_TIMEOUT_S = 24 * 3600
_barriers_passed = 0


def wait_for_all_processes(name, timeout_s=BUILD_BARRIER_TIMEOUT_S):
  """Blocks until every process of a multi-process run has called this.

  The coordination service's barrier of jax.distributed, rather than
  multihost_utils.sync_global_devices: that is a device collective, which
  an accelerator runtime may time out long before a build of hours ends;
  this one takes an explicit timeout. All processes must call it in the same
  order (a counter makes each barrier's id unique).
  """
  global _barriers_passed
  if jax.process_count() == 1:
    return
  client = distributed.global_state.client
  _barriers_passed += 1
  if client is None:  # Not started by jax.distributed.initialize.
    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(f'{name}#{_barriers_passed}',
                         int(timeout_s * 1000))


@functools.lru_cache(maxsize=16)
def _builder(name, settings_items, data_dir, manual_dir, skip_bad, build,
             allow_missing=False):
  settings = dict(settings_items)
  settings['classes'] = list(settings['classes'])
  cls = builders.BUILDERS[name]

  def make():
    return cls(config=builders.make_builder_config(settings, cls.CLASSES),
               data_dir=data_dir, skip_bad=skip_bad,
               allow_missing=allow_missing)

  def prepare(b):
    _log_older_builds(b, settings, manual_dir)
    with _removed_on_failure(b, data_dir):
      b.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir or None))

  b = make()
  if build and jax.process_count() > 1:
    # Every process meets at the barrier, whether it found the dataset built
    # or not: process 0 builds first if needed (into the shared data_dir),
    # the others wait for it there. A process that skipped the barrier
    # because process 0 had already finished would leave process 0 waiting.
    failure = None
    if jax.process_index() == 0 and not b.is_prepared():
      try:
        prepare(b)
      except Exception as e:  # pylint: disable=broad-exception-caught
        failure = e  # Release the others first; they then fail too.
    wait_for_all_processes(f'built {b.info.full_name}')
    if failure is not None:
      raise failure
    b = make()  # Reads the dataset_info that process 0 wrote.
    if not b.is_prepared():
      raise errors.UserError(
          f'Process {jax.process_index()} does not see the dataset '
          f'{b.info.full_name} in data_dir {data_dir!r} after process 0 '
          'built it (or failed to: see its log). data_dir must be shared '
          'storage that every process reads (a GCS bucket given as its URL, '
          'gs://BUCKET/tfds, or NFS).')
  elif build and not b.is_prepared():
    prepare(b)
  builders.check_metadata(b, settings)
  return b


@contextlib.contextmanager
def _removed_on_failure(builder, data_dir):
  """Removes, when the build fails, the folders it created (TFDS leaves
  `<name>/.config/metadata.json`, empty folders and downloads/)."""
  root = os.path.abspath(data_dir)
  name_dir = os.path.join(root, builder.name)
  candidates = [os.path.join(name_dir, '.config'),
                os.path.dirname(os.path.abspath(os.fspath(builder.data_dir))),
                os.path.join(root, 'downloads'), name_dir, root]
  new = [p for p in candidates if not os.path.exists(p)]
  try:
    yield
  except BaseException:
    for p in new:  # Deepest first; each was made by this build.
      shutil.rmtree(p, ignore_errors=True)
    raise


def _log_older_builds(builder, settings, manual_dir):
  """Says, before a build from a changed source, where the old build is."""
  if not settings.get('source'):
    return
  config_dir = os.path.dirname(os.path.abspath(os.fspath(builder.data_dir)))
  prefix = os.path.basename(config_dir).rsplit('_src', 1)[0] + '_src'
  parent = os.path.dirname(config_dir)
  older = sorted(os.path.join(parent, d) for d in (
      os.listdir(parent) if os.path.isdir(parent) else ())
                 if d.startswith(prefix) and os.path.join(parent, d) != config_dir)
  if older:
    logging.warning(
        'The files in %s differ from those of the earlier build(s) %s '
        '(manifest rows, or files added, removed or modified); building anew '
        'into %s. Delete the old folder(s) to free their space.',
        manual_dir,
        ', '.join(older), config_dir)


def get_builder(config, *, build=True):
  """The TFDS builder for config.dataset.name at config's settings, built.

  Building happens once per setting (a different setting is a different
  builder config, hence a different dataset directory). In a multi-process
  run the first call for a setting is a barrier that every process must
  reach: process 0 builds, all load.
  """
  check_source(config)
  name = config.dataset.name
  settings = builders.settings_from_config(config)
  settings['classes'] = tuple(settings['classes'])
  manual_dir = os.path.abspath(os.path.expanduser(
      config.dataset.manual_dir)) if config.dataset.manual_dir else ''
  return _builder(name, tuple(sorted(settings.items())),
                  os.path.expanduser(config.dataset.data_dir), manual_dir,
                  bool(config.dataset.skip_bad), build,
                  bool(config.dataset.get('allow_missing', False)))


def built_dir(config, settings=None):
  """Where TFDS keeps the dataset config asks for (built or not)."""
  cls = builders.BUILDERS[config.dataset.name]
  settings = settings or builders.settings_from_config(config)
  name = builders.make_builder_config(settings, cls.CLASSES).name
  return os.path.join(os.path.expanduser(config.dataset.data_dir), cls.name,
                      name, str(cls.VERSION))


def check_source(config):
  """Raises a one-line UserError, before anything is read or written, when
  config.dataset.manual_dir cannot be the source of config.dataset.name:
  set for a dataset that does not read it (the synthetic corpus), or not
  set, not a folder, or a folder without manifest.csv or class folders."""
  name = config.dataset.name
  if name not in builders.BUILDERS:
    raise errors.UserValueError(
        f'Unknown config.dataset.name {name!r}; known: '
        f'{", ".join(builders.BUILDERS)}.')
  manual_dir = config.dataset.manual_dir or ''
  full = os.path.abspath(os.path.expanduser(manual_dir)) if manual_dir else ''
  if not builders.reads_manual_dir(name):
    if manual_dir:
      readers = [n for n in builders.BUILDERS if builders.reads_manual_dir(n)]
      raise errors.UserValueError(
          f'config.dataset.manual_dir={manual_dir} is set but config.dataset.'
          f'name={name!r} is the generated demo corpus, which reads no '
          f'folder; add --config.dataset.name={readers[0]} (or '
          f'{", ".join(readers[1:])}) to train on the folder, or drop '
          'manual_dir.')
    return
  if not manual_dir:
    why = 'config.dataset.manual_dir is not set'
  elif not os.path.isdir(full):
    why = f'config.dataset.manual_dir={full} is not a folder'
  elif not (os.path.isfile(os.path.join(full, 'manifest.csv')) or
            manifest_lib.has_class_folders(full)):
    why = (f'config.dataset.manual_dir={full} has neither a manifest.csv nor '
           'class folders (<label>/<name>.png next to <label>/<name>.wav)')
  else:
    return
  raise errors.UserError(
      f'Dataset {name} is built from a folder and {why}. Point '
      '--config.dataset.manual_dir at the folder holding manifest.csv and '
      'the files it lists, or class folders (README, "Your own data"); the '
      'first run builds the dataset from it under config.dataset.data_dir='
      f'{config.dataset.data_dir}, or build it ahead with: python -m '
      'input_pipeline.build --config=<the same config file> '
      '--config.dataset.manual_dir=DIR')


def _cells(builder):
  """{cell name: (part, fold, fold_val)} of the built dataset."""
  out = {}
  for name in builder.info.splits.keys():
    part, rest = name.rsplit('_f', 1)
    out[name] = (part, int(rest[:-1]), rest[-1] == 'v')
  return out


def split_names(config, builder=None):
  """TFDS split strings for train / validation / test.

  config.dataset.fold == -1: the manifest split or the 70/30 split, with
  validation carved from train. fold == k: fold k is the test set, the
  other folds (less their validation share) train, and their validation
  shares validate. When val_fraction == 0 (and the manifest has no
  validation rows), validation is the test split.
  """
  builder = builder or get_builder(config)
  cells = _cells(builder)
  fold = int(config.dataset.fold)
  if fold >= int(config.dataset.num_folds):
    raise errors.UserValueError(f'config.dataset.fold={fold} but num_folds='
                                f'{config.dataset.num_folds}.')
  if fold < 0:
    pick = {s: [c for c, (p, _, _) in cells.items() if p == s]
            for s in ('train', 'validation', 'test')}
  else:
    pick = dict(
        train=[c for c, (_, k, v) in cells.items() if k != fold and not v],
        validation=[c for c, (_, k, v) in cells.items() if k != fold and v],
        test=[c for c, (_, k, _) in cells.items() if k == fold])
  if not pick['validation']:
    if float(config.dataset.val_fraction) > 0:
      logging.warning('No validation examples in %s (val_fraction=%s is too '
                      'small for this dataset); validating on the test split.',
                      builder.info.full_name, config.dataset.val_fraction)
    pick['validation'] = pick['test']
  for s in ('train', 'test'):
    if not pick[s]:
      raise ValueError(f'The {s} split of {builder.info.full_name} is empty.')
  return {s: '+'.join(sorted(c)) for s, c in pick.items()}


def _resolve_split(config, builder, split):
  names = split_names(config, builder)
  return names.get(split, split)


def process_split(builder, split, process_index, process_count):
  """This process's share of `split` ('a+b+...' of stored splits).

  Contiguous, disjoint ranges of the concatenated split whose sizes differ by
  at most one. (tfds.split_for_jax_process divides each joined part
  separately, which gives process 0 every part's remainder: with our many
  small cells that unbalances the shards badly.)
  """
  parts = split.split('+')
  sizes = [builder.info.splits[p].num_examples for p in parts]
  total = sum(sizes)
  if total < process_count:
    raise ValueError(f'Split {split!r} has {total} examples, fewer than the '
                     f'{process_count} processes.')
  base, extra = divmod(total, process_count)
  start = process_index * base + min(process_index, extra)
  end = start + base + (process_index < extra)
  pieces, offset = [], 0
  for part, n in zip(parts, sizes):
    a, b = max(start, offset) - offset, min(end, offset + n) - offset
    if a < b:
      pieces.append(f'{part}[{a}:{b}]')
    offset += n
  return '+'.join(pieces)


def num_examples(config, split):
  """Examples in 'train' | 'validation' | 'test' (or any TFDS split string)."""
  b = get_builder(config)
  return b.info.splits[_resolve_split(config, b, split)].num_examples


def steps_per_epoch(config):
  """Training steps per epoch: full global batches, capped by
  config.train.max_steps_per_epoch when it is positive."""
  steps = num_examples(config, 'train') // int(config.train.batch_size)
  cap = int(config.train.get('max_steps_per_epoch', -1))
  return min(steps, cap) if cap > 0 else steps


def epoch_seed(seed, epoch):
  """A 31-bit shuffle seed that is a pure function of (seed, epoch)."""
  return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0]
             & 0x7FFFFFFF)


@functools.lru_cache(maxsize=32)
def _read(builder, split):
  """`split` (a split string) of a built dataset, in stored order. The
  dataset object is re-iterable, so it is made once per (builder, split):
  every epoch reads the training and validation splits again, and making the
  TFDS reader (its traced decode functions) costs about 0.2 s each time.
  `_builder` already keys builders by every setting and the source, so a
  changed dataset is a different builder and never a cached read."""
  read_config = tfds.ReadConfig(try_autocache=False)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          read_config=read_config)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def _to_model_inputs(scaling):
  def fn(ex):
    return dict(
        image=scaling_lib.scale_float(tf.cast(ex['image'], tf.float32), scaling),
        spectrogram=tf.cast(ex['spectrogram'], tf.float32),
        label=tf.cast(ex['label'], tf.int32))
  return fn


def _local_batch_size(global_batch, process_count):
  if global_batch % process_count:
    raise ValueError(f'Global batch {global_batch} is not divisible by the '
                     f'{process_count} processes.')
  return global_batch // process_count


def train_dataset(config, *, epoch, start_step=0, process_index=None,
                  process_count=None):
  """This process's tf.data.Dataset of local training batches (numpy-able)."""
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  b = get_builder(config)
  split = process_split(b, split_names(config, b)['train'], pi, pc)
  local_bs = _local_batch_size(int(config.train.batch_size), pc)
  steps = steps_per_epoch(config)
  if steps < 1:
    raise ValueError(
        f'The train split has {num_examples(config, "train")} examples, fewer '
        f'than one global batch of {config.train.batch_size}.')
  ds = _read(b, split)
  ds = ds.map(lambda ex: {k: ex[k] for k in MODEL_KEYS})
  ds = ds.shuffle(int(config.dataset.shuffle_buffer),
                  seed=epoch_seed(config.seed, epoch),
                  reshuffle_each_iteration=False)
  ds = ds.map(_to_model_inputs(_scaling(config)),
              num_parallel_calls=tf.data.AUTOTUNE)
  # Every shard holds >= total // pc examples, so each process has `steps`
  # full local batches and all processes step together.
  ds = ds.batch(local_bs, drop_remainder=True).take(steps).skip(start_step)
  return ds.prefetch(tf.data.AUTOTUNE)


def _globalize(mesh, local_batch):
  sharding = NamedSharding(mesh, P('data'))
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}


def train_batches(config, mesh, *, epoch, start_step=0):
  """Iterator of global training batches; order = f(config.seed, epoch).

  Yields steps_per_epoch(config) - start_step batches of
  image/spectrogram/label; start_step skips the batches a resumed run has
  already seen this epoch.
  """
  ds = train_dataset(config, epoch=epoch, start_step=start_step)
  for local in ds.as_numpy_iterator():
    yield _globalize(mesh, local)


def eval_dataset(config, split='validation', *, process_index=None,
                 process_count=None, with_id=False):
  """This process's local eval batches; every process yields the same
  number of batches, padded at the end with mask=False (and id '' with
  with_id=True, which keeps the examples' ids)."""
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  b = get_builder(config)
  full = _resolve_split(config, b, split)
  local_bs = _local_batch_size(int(config.train.eval_batch_size), pc)
  sizes = [b.info.splits[process_split(b, full, i, pc)].num_examples
           for i in range(pc)]
  num_batches = math.ceil(max(sizes) / local_bs)
  ds = _read(b, process_split(b, full, pi, pc))
  to_inputs = _to_model_inputs(_scaling(config))
  if with_id:
    to_inputs = lambda ex, f=to_inputs: dict(f(ex), id=ex['id'])
  ds = ds.map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.map(lambda ex: dict(ex, mask=tf.constant(True)))
  pad = tf.data.Dataset.from_tensors(
      {k: tf.zeros(s.shape, s.dtype) for k, s in ds.element_spec.items()}
  ).repeat()
  ds = ds.concatenate(pad).take(num_batches * local_bs)
  return ds.batch(local_bs, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_batches(config, mesh, split='validation'):
  """Iterator of global eval batches covering `split` exactly once, plus
  `mask` (bool, False on padding: weight metrics by it)."""
  for local in eval_dataset(config, split).as_numpy_iterator():
    yield _globalize(mesh, local)


def load_examples(config, split='test', n=None):
  """The first n examples of `split` (stored order) as numpy arrays.

  Keys: id (str), image (model-scaled float32), image_raw (uint8),
  spectrogram (float32), label (int32), waveform (float32, re-decoded from
  audio_path with the same pad/crop), audio_path, image_cue_box (y0 x0 y1 x1
  model-input pixels, -1 if absent), speech_cue_span (t0 t1 s, -1 if absent).
  """
  b = get_builder(config)
  ds = _read(b, _resolve_split(config, b, split))
  if n is not None and n > 0:
    ds = ds.take(n)
  exs = list(ds.as_numpy_iterator())
  if not exs:
    raise ValueError(f'No examples in split {split!r}.')
  out = {k: np.stack([e[k] for e in exs]) for k in exs[0]}
  out['id'] = np.array([e['id'].decode() for e in exs])
  out['audio_path'] = np.array([e['audio_path'].decode() for e in exs])
  out['image_raw'] = out['image']
  out['image'] = scaling_lib.scale_image(out['image_raw'],
                                       _scaling(config))
  out['spectrogram'] = out['spectrogram'].astype(np.float32)
  out['label'] = out['label'].astype(np.int32)
  silence = np.zeros(audio_lib.num_samples(config.input), np.float32)
  out['waveform'] = np.stack([audio_lib.load_waveform(p, config.input)
                              if p else silence  # A row without its audio.
                              for p in out['audio_path']])
  del out['part']
  return out


def preprocess_pair(config, image_path, audio_path):
  """One user pair through the dataset's preprocessing (unbatched numpy).

  Returns image (model-scaled), image_raw (uint8), spectrogram (T, F, 1),
  waveform, audio_seconds (the file's length), audio_notice (a line for
  the user when the file is longer or shorter than the model's clip, else
  None; callers show it) and missing ('image' | 'speech' | ''). A None (or
  empty) path is a missing modality: its arrays are None, for the caller
  to fill with the model's missing input (parallelnet/modality.py). Errors
  name the file and the reason.
  """
  if not image_path and not audio_path:
    raise errors.UserValueError('A pair needs an image or an audio file; '
                                'both are missing.')
  raw = image = spec = wav = notice = None
  seconds = 0.0
  if image_path:
    try:
      raw = image_lib.load_image(image_path, int(config.input.image_size))
    except image_lib.ImageError as e:
      raise image_lib.ImageError(
          f'image {os.path.abspath(image_path)}: {e}') from e
    image = scaling_lib.scale_image(raw, _scaling(config))
  if audio_path:
    try:
      wav, _, file_samples = audio_lib.decode_clip_and_length(audio_path,
                                                             config.input)
    except audio_lib.AudioError as e:
      raise audio_lib.AudioError(
          f'audio {os.path.abspath(audio_path)}: {e}') from e
    notice = audio_lib.fit_notice(audio_path, file_samples, config.input)
    # float16 round trip: the same values the built dataset stores.
    spec = audio_lib.log_mel(wav, config.input)
    spec = spec.astype(np.float16).astype(np.float32)
    seconds = file_samples / config.input.sample_rate
  return dict(image=image, image_raw=raw, spectrogram=spec, waveform=wav,
              audio_seconds=seconds, audio_notice=notice,
              missing='' if image_path and audio_path else
              'image' if audio_path else 'speech')
