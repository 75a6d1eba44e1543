"""TFDS builders: iitr_sier, b_t4sa and the synthetic_sier demo corpus.

All three read the manifest layout of manifest.py and share one build path:
read + check the manifest, decode every file (in worker processes, streaming:
memory does not grow with the number of examples), fail once listing every
bad file (strict) or skip them into skipped.csv (skip_bad), assign
deterministic stratified splits, then write each example once into its split
"cell" (manifest.cell_name); pipeline.split_names joins cells into
train / validation / test and the cross-validation folds.

The input settings are part of the builder config: its name spells them
(e.g. `sr16000_fft1024_hop512_mel128_t128_img128_k5_val0p1_test0p3`), so a
different setting builds a different dataset, and they are recorded in
`info.metadata`, which `check_metadata` compares with the config at load time.
So is the source: a build from config.dataset.manual_dir ends its name with
`_src<fingerprint>` (manifest.source_fingerprint: the manifest and each
listed file's size and modification time), so a folder whose manifest or
files changed since builds a new dataset beside the old one, never reusing it.

Building from the command line (`tfds build`), e.g. the demo corpus at the
paper's settings and IIT-R SIER at the runlocal settings:

  tfds build synthetic_sier --imports=input_pipeline.builders --config=paper
  tfds build iitr_sier --imports=input_pipeline.builders --config=runlocal \
      --manual_dir=/path/to/folder_with_manifest --data_dir=~/tensorflow_datasets

The `tfds` script of tensorflow-datasets 4.9.10 needs apache_beam installed
just to start; without it, run the same command code as

  python -m input_pipeline.build synthetic_sier --config=runlocal

(same flags as `tfds build`, no --imports). Configs `paper` and `runlocal`
hold the settings of configs/parallelnet.py with and without `runlocal`;
any other setting is built from Python: `input_pipeline.get_builder(config)`
(its dataset directory is then named after the settings).
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import tempfile
import time
import warnings

import numpy as np
import threadpoolctl

from parallelnet.core import progress as progress_lib

progress_lib.import_tensorflow()  # Before TFDS imports it, with Keras.
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-order

from input_pipeline import audio as audio_lib  # pylint: disable=g-import-not-at-top
from parallelnet.core import errors  # pylint: disable=g-import-not-at-top
from input_pipeline import image as image_lib  # pylint: disable=g-import-not-at-top
from input_pipeline import manifest as manifest_lib  # pylint: disable=g-import-not-at-top
from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top

from parallelnet.core.classes import EMOTIONS
from parallelnet.core.classes import SENTIMENTS
# Settings recorded in the metadata and checked against config at load time.
SETTING_KEYS = ('sample_rate', 'n_fft', 'hop_length', 'n_mels', 'num_frames',
                'duration_s', 'image_size', 'classes', 'test_fraction',
                'val_fraction', 'num_folds', 'synthetic_size', 'synthetic_seed',
                'source', 'synthetic_image_cue')
# Settings added after datasets were built without them: their value then.
LATER_SETTINGS = {'source': '', 'synthetic_image_cue': ''}

MANIFEST_LAYOUT = """
Put every file under one folder with a `manifest.csv` whose header is
`id,image,audio,label` plus optional `split` (train|validation|test), `text`
and any other columns. `image` and `audio` are paths relative to the folder
(they may not leave it): single-frame images in any format and mode PIL
reads (JPEG, PNG, WebP, BMP, TIFF; input_pipeline/image.py gives the rules)
and WAV/FLAC/OGG/MP3 audio (any rate, any number of channels).
`label` is one of: {classes}. Point `config.dataset.manual_dir` (or
`tfds build --manual_dir`) at the folder.
"""


@dataclasses.dataclass(eq=False)
class SierConfig(tfds.core.BuilderConfig):
  """Input settings that determine the built arrays."""
  sample_rate: int = 16000
  n_fft: int = 1024
  hop_length: int = 512
  n_mels: int = 128
  num_frames: int = 128
  duration_s: float = 127 * 512 / 16000
  image_size: int = 128
  classes: tuple = EMOTIONS
  test_fraction: float = 0.3
  val_fraction: float = 0.1
  num_folds: int = 5
  synthetic_size: int = 0  # synthetic_sier only.
  synthetic_seed: int = 0  # synthetic_sier only.
  source: str = ''  # manifest.source_fingerprint of manual_dir; '' = unnamed.
  synthetic_image_cue: str = ''  # synthetic_sier only: '' (colour) | side.

  def settings(self):
    return {k: (list(getattr(self, k)) if k == 'classes' else getattr(self, k))
            for k in SETTING_KEYS}


def _num(x):
  return str(x).replace('.', 'p').replace('-', 'm')


def settings_name(s, default_classes):
  """Builder config name that spells the settings (valid TFDS name)."""
  name = (f'sr{s["sample_rate"]}_fft{s["n_fft"]}_hop{s["hop_length"]}_'
          f'mel{s["n_mels"]}_t{s["num_frames"]}_img{s["image_size"]}_'
          f'k{s["num_folds"]}_val{_num(s["val_fraction"])}_'
          f'test{_num(s["test_fraction"])}')
  if tuple(s['classes']) != tuple(default_classes):
    digest = hashlib.sha1(','.join(s['classes']).encode()).hexdigest()[:8]
    name += f'_cls{digest}'
  if s['synthetic_size']:
    name += f'_n{s["synthetic_size"]}_seed{s["synthetic_seed"]}'
  if s.get('source'):
    name += f'_src{s["source"]}'
  if s.get('synthetic_image_cue'):
    name += f'_cue{s["synthetic_image_cue"]}'
  return name


def reads_manual_dir(name):
  """Whether dataset `name` is built from config.dataset.manual_dir."""
  return name in BUILDERS and BUILDERS[name] is not SyntheticSier


def settings_from_config(config):
  """The SETTING_KEYS values that `config` asks for (`source`: the
  fingerprint of config.dataset.manual_dir when the dataset reads it)."""
  audio_lib.check_duration(config.input)
  synth = config.dataset.name == 'synthetic_sier'
  manual_dir = os.path.expanduser(config.dataset.get('manual_dir') or '')
  source = (manifest_lib.source_fingerprint(manual_dir)
            if manual_dir and reads_manual_dir(config.dataset.name) else '')
  cue = str(config.dataset.get('image_cue', 'colour'))
  if cue not in synthetic.IMAGE_CUE_KINDS:
    raise errors.UserValueError(
        f'config.dataset.image_cue={cue!r}; expected one of '
        f'{", ".join(synthetic.IMAGE_CUE_KINDS)}.')
  return dict(
      sample_rate=int(config.input.sample_rate), n_fft=int(config.input.n_fft),
      hop_length=int(config.input.hop_length), n_mels=int(config.input.n_mels),
      num_frames=int(config.input.num_frames),
      duration_s=float(config.input.duration_s),
      image_size=int(config.input.image_size),
      classes=list(config.dataset.classes),
      test_fraction=float(config.dataset.test_fraction),
      val_fraction=float(config.dataset.val_fraction),
      num_folds=int(config.dataset.num_folds),
      synthetic_size=int(config.dataset.synthetic_size) if synth else 0,
      synthetic_seed=int(config.dataset.get('synthetic_seed', 0)) if synth else 0,
      source=source,
      synthetic_image_cue='' if not synth or cue == 'colour' else cue)


def make_builder_config(settings, default_classes):
  s = dict(settings)
  s['classes'] = tuple(s['classes'])
  return SierConfig(name=settings_name(s, default_classes),
                    description='Input settings: ' + ', '.join(
                        f'{k}={v}' for k, v in sorted(s.items())), **s)


def check_metadata(builder, settings):
  """Raises if the built dataset was made with other settings than asked."""
  stored = dict(builder.info.metadata or {})
  diffs = []
  for k, v in settings.items():
    got = stored.get(k, LATER_SETTINGS.get(k))
    if isinstance(v, float) and isinstance(got, (int, float)):
      same = abs(got - v) < 1e-9
    else:
      same = got == v
    if not same:
      diffs.append(f'{k}: built with {got!r}, config has {v!r}')
  if diffs:
    raise errors.UserValueError(
        f'Dataset at {builder.data_dir} does not match the config:\n  ' +
        '\n  '.join(diffs) + '\nDelete it or change data_dir to rebuild.')


def _paper_and_runlocal(classes, synthetic_size=0):
  paper = dict(sample_rate=16000, n_fft=1024, hop_length=512, n_mels=128,
               num_frames=128, duration_s=127 * 512 / 16000, image_size=128,
               classes=classes, test_fraction=0.3, val_fraction=0.1,
               num_folds=5, synthetic_size=synthetic_size, synthetic_seed=0,
               source='')
  runlocal = dict(paper, sample_rate=8000, n_fft=512, hop_length=256,
                  n_mels=32, num_frames=32, duration_s=31 * 256 / 8000,
                  image_size=32, synthetic_size=min(synthetic_size, 64))
  out = []
  for name, s in (('paper', paper), ('runlocal', runlocal)):
    c = make_builder_config(s, classes)
    out.append(dataclasses.replace(c, name=name))
  return out


def _decode_row(row, settings):
  """Decodes one manifest row; returns (example_dict, None) or (None, reason).

  The example carries `clip_fit` (audio.FITS, or 'missing'), which the build
  counts and pops before writing. A row without its image (path None,
  config.dataset.allow_missing) stores a black image, one without its audio
  silence: the model's missing input for speech, and for the image under
  'unit' scaling (DESIGN.md, "Missing modalities").
  """
  ic = audio_lib.input_settings(settings)
  reasons = []
  s = settings['image_size']
  try:
    if row['image'] is None:
      img, (h, w) = np.zeros((s, s, 3), np.uint8), (s, s)
    else:
      img, (h, w) = image_lib.decode_image(row['image'], s)
  except image_lib.ImageError as e:
    reasons.append(f'image: {e}')
  try:
    if row['audio'] is None:
      fit = 'missing'
      spec = np.zeros((ic.num_frames, ic.n_mels, 1), np.float32)
    else:
      wav, fit = audio_lib.decode_clip(row['audio'], ic)
      spec = audio_lib.log_mel(wav, ic)
  except audio_lib.AudioError as e:
    reasons.append(f'audio: {e}')
  if reasons:
    return None, '; '.join(reasons)
  box = np.asarray(row['image_cue_box'], np.float32)
  if box[0] >= 0:  # Displayed-image pixels -> model-input pixels.
    box = box * np.array([s / h, s / w, s / h, s / w], np.float32)
  return dict(_features(row, img, spec.astype(np.float16), box),
              clip_fit=fit), None


def _features(row, image, spectrogram, box):
  """The example as the TFDS features declare it."""
  return dict(id=row['id'], image=image, spectrogram=spectrogram,
              label=row['label'], audio_path=row['audio'] or '',
              image_cue_box=np.asarray(box, np.float32),
              speech_cue_span=np.asarray(row['speech_cue_span'], np.float32),
              fold=row.get('fold', 0), part=row.get('part', ''))


def _decode_chunk(rows, settings):
  return [_decode_row(r, settings) for r in rows]


PARALLEL_MIN_ROWS = 256  # Fewer rows decode in-process (no pool start-up).
CHUNK = 16  # Rows per task sent to a worker.


def iter_decoded(rows, settings, workers=None, window=None):
  """Yields (row, example, reason) for every row, in row order.

  Decodes ahead in forked worker processes with at most `window` chunks of
  CHUNK rows in flight (default 2 per worker), so the decoded examples held
  at any time are bounded whatever len(rows) is. Workers only run
  numpy/librosa/PIL code, never TF or JAX, which is what makes forking a
  process that has loaded them safe enough here.
  """
  workers = workers or min(os.cpu_count() or 1, 8)
  window = window or 2 * workers
  # One BLAS thread per process: the mel matmul is tiny, and OpenBLAS
  # threads on a busy machine make it 10-20x slower.
  with threadpoolctl.threadpool_limits(1):
    if workers <= 1 or len(rows) < PARALLEL_MIN_ROWS:
      for r in rows:
        yield (r, *_decode_row(r, settings))
      return
    audio_lib.warm_up(settings)  # librosa's lazy modules, before forking.
    chunks = (rows[i:i + CHUNK] for i in range(0, len(rows), CHUNK))
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context('fork'),
        initializer=threadpoolctl.threadpool_limits, initargs=(1,)) as pool:
      pending = collections.deque()

      def submit():
        chunk = next(chunks, None)
        if chunk is not None:
          with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='.*fork.*')
            pending.append((chunk, pool.submit(_decode_chunk, chunk,
                                               settings)))

      for _ in range(window):
        submit()
      while pending:
        chunk, future = pending.popleft()
        results = future.result()
        submit()
        for r, (ex, reason) in zip(chunk, results):
          yield r, ex, reason


class _Spill:
  """Decoded image + spectrogram arrays in a scratch file, one fixed-size
  record per example, so that the build holds none of them in memory
  between decoding (in manifest order) and writing (split cell by cell)."""

  def __init__(self, folder, image_shape, spec_shape):
    self._shapes = ((image_shape, np.uint8), (spec_shape, np.float16))
    self._sizes = [int(np.prod(s)) * np.dtype(d).itemsize
                   for s, d in self._shapes]
    self._path = os.path.join(folder, 'decoded.bin')
    self._file = open(self._path, 'w+b')  # pylint: disable=consider-using-with
    self._n = 0

  def append(self, image, spectrogram):
    """Stores one example's arrays; returns its record index."""
    for x, (shape, dtype) in zip((image, spectrogram), self._shapes):
      self._file.write(np.ascontiguousarray(x, dtype).reshape(shape).tobytes())
    self._n += 1
    return self._n - 1

  def get(self, i):
    """(image, spectrogram) of record i."""
    self._file.seek(i * sum(self._sizes))
    out = []
    for size, (shape, dtype) in zip(self._sizes, self._shapes):
      out.append(np.frombuffer(self._file.read(size), dtype).reshape(shape))
    self._file.seek(0, os.SEEK_END)
    return out

  def close(self):
    self._file.close()
    os.remove(self._path)


class _SierBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared build logic; subclasses name the dataset and its classes."""

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '2.0.0': 'Image and spectrogram stored as raw bytes.'}
  CLASSES = EMOTIONS

  def __init__(self, *, skip_bad=False, allow_missing=False, **kwargs):
    self._skip_bad = skip_bad
    self._skipped = None
    self._allow_missing = allow_missing
    super().__init__(**kwargs)

  def download_and_prepare(self, *args, **kwargs):  # pylint: disable=arguments-differ
    super().download_and_prepare(*args, **kwargs)
    if self._skipped:  # Named once the folder has its final name.
      n, folder = self._skipped
      self._skipped = None
      logging.warning('Skipped %d bad input(s) of %s; reasons in %s', n,
                      folder, os.path.abspath(
                          os.path.join(os.fspath(self.data_dir),
                                       'skipped.csv')))

  def _info(self):
    c = self.builder_config
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            # Raw bytes (Encoding.BYTES): TFDS's default int64/float lists
            # cost ~20 ms an example to serialize, most of the build.
            'image': tfds.features.Tensor(
                shape=(c.image_size, c.image_size, 3), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            # (time, frequency, 1) log-mel in [0, 1]; float16 halves storage.
            'spectrogram': tfds.features.Tensor(
                shape=(c.num_frames, c.n_mels, 1), dtype=np.float16,
                encoding=tfds.features.Encoding.BYTES),
            'label': tfds.features.ClassLabel(names=list(c.classes)),
            'audio_path': tfds.features.Text(),
            # y0 x0 y1 x1 in model-input pixels; -1 when absent.
            'image_cue_box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
            # t0 t1 in seconds of the padded/cropped clip; -1 when absent.
            'speech_cue_span': tfds.features.Tensor(shape=(2,),
                                                    dtype=np.float32),
            'fold': tfds.features.Scalar(dtype=np.int32),
            'part': tfds.features.Text(),
        }),
        supervised_keys=None,
        metadata=tfds.core.MetadataDict(c.settings()),
    )

  def _source_folder(self, dl_manager):
    return dl_manager.manual_dir

  # TFDS prints these two with print(), whatever the log level; one log
  # line each instead ("download" means nothing here).
  def _log_download_bytes(self):
    logging.info('Building %s into %s (first use of these settings).',
                 self.name, self.data_dir)

  def _log_download_done(self):
    logging.info('Built %s in %s.', self.name, self.data_dir)

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    # Local scratch for _Spill ($TMPDIR; data_dir may be a bucket).
    with tempfile.TemporaryDirectory(prefix=f'{self.name}_build_') as tmp:
      self._scratch_dir = tmp
      try:
        return super()._download_and_prepare(dl_manager, download_config)
      finally:
        if getattr(self, '_spill', None) is not None:
          self._spill.close()
          self._spill = None

  def _split_generators(self, dl_manager):
    """Decodes every file once, streaming, then assigns splits.

    Examples go from the decoders (iter_decoded: bounded in flight) into a
    scratch file (_Spill); only the rows' small fields stay in memory. Bad
    files are all found before anything is written; the cells' generators
    then read their examples back one at a time for the TFDS writer.
    """
    c = self.builder_config
    folder = os.path.abspath(os.fspath(self._source_folder(dl_manager)))
    if c.source and manifest_lib.source_fingerprint(folder) != c.source:
      raise errors.UserError(
          f'The files in {folder} changed between the start of the build and '
          'now; run again once they are in place.')
    rows, bad = manifest_lib.read_manifest(
        folder, c.classes, allow_missing=self._allow_missing)
    self._spill = _Spill(self._scratch_dir,
                         (c.image_size, c.image_size, 3),
                         (c.num_frames, c.n_mels, 1))
    kept, fits = [], collections.Counter()
    start = time.monotonic()
    with progress_lib.Progress(len(rows), f'Decoding {self.name}',
                               unit='examples') as progress:
      for row, ex, reason in iter_decoded(rows, c.settings()):
        progress.update()
        if reason:
          bad.append((row['id'], f"{row['image']};{row['audio']}", reason))
          continue
        fits[ex['clip_fit']] += 1
        row['record'] = self._spill.append(ex['image'], ex['spectrogram'])
        row['image_cue_box'] = ex['image_cue_box']  # In model-input pixels.
        kept.append(row)
    seconds = time.monotonic() - start
    if bad and not self._skip_bad:
      # Raised before any example is written: TFDS leaves no finished dataset.
      raise manifest_lib.BadInputError(bad, where=folder)
    if bad:  # Into the build's temporary folder, which becomes data_dir.
      manifest_lib.write_skipped(
          os.path.join(os.fspath(self.data_dir), 'skipped.csv'), bad)
      self._skipped = (len(bad), folder)
    if not kept:
      raise ValueError(f'No usable examples in {folder}.')
    summary = build_summary(len(kept), fits, len(bad), seconds, c.duration_s)
    logging.info('%s: %s', self.name, summary)
    self.info.metadata.update(
        {f'clips_{k}': fits[k] for k in audio_lib.FITS}, skipped=len(bad),
        source_dir=folder)
    kept = manifest_lib.assign_splits(
        kept, test_fraction=c.test_fraction, val_fraction=c.val_fraction,
        num_folds=c.num_folds)
    cells = {}
    for row in kept:
      cells.setdefault(
          manifest_lib.cell_name(row['part'], row['fold'], row['fold_val']),
          []).append(row)
    return {name: self._generate_examples(rs)
            for name, rs in sorted(cells.items())}

  def _generate_examples(self, rows):
    for row in rows:
      image, spectrogram = self._spill.get(row['record'])
      yield row['id'], _features(row, image, spectrogram,
                                 row['image_cue_box'])


def build_summary(n, fits, n_bad, seconds, duration_s):
  """One line: examples, rate, clips padded/cropped to duration_s, skipped."""
  return (f'decoded {n} examples in {seconds:.1f} s '
          f'({(n + n_bad) / max(seconds, 1e-9):.1f}/s); audio clips: '
          f'{fits["padded"]} padded (shorter than {duration_s:.3g} s, zeros '
          f'appended), {fits["cropped"]} cropped (longer: the first '
          f'{duration_s:.3g} s kept), {fits["exact"]} exact'
          f'{f"; {n_bad} bad input(s) skipped" if n_bad else ""}.')


class IitrSier(_SierBuilder):
  """IIT-R SIER: speech + image emotion pairs (anger, happy, hate, sad)."""

  name = 'iitr_sier'
  CLASSES = EMOTIONS
  BUILDER_CONFIGS = _paper_and_runlocal(EMOTIONS)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'IIT-R SIER is distributed by its authors (P. Kumar, S. Malik, '
      'B. Raman, IIT Roorkee); the paper points to '
      'https://github.com/MIntelligence-Group/SpeechImg_EmoRec. Request '
      'access there (fill in the access form it links to), download and '
      'extract the archive, then arrange it as a manifest folder '
      '(manifest.manifest_from_class_folders writes one for a '
      'class-per-folder layout):' +
      MANIFEST_LAYOUT.format(classes=', '.join(EMOTIONS)))


class BT4sa(_SierBuilder):
  """B-T4SA-style speech + image pairs with three sentiment classes."""

  name = 'b_t4sa'
  CLASSES = SENTIMENTS
  BUILDER_CONFIGS = _paper_and_runlocal(SENTIMENTS)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'B-T4SA images and tweets come from the T4SA project (request access '
      'from its authors); speech is made by TTS of the tweet text (PAPER.md, "Building the dataset"). '
      'Arrange the result as a manifest folder:' +
      MANIFEST_LAYOUT.format(classes=', '.join(SENTIMENTS)))


class SyntheticSier(_SierBuilder):
  """The demo corpus (synthetic.py), generated then built like real data."""

  name = 'synthetic_sier'
  VERSION = tfds.core.Version('2.1.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '1.1.0': 'Cue noise 2%, near-grey backgrounds.',
                   '2.0.0': 'Image and spectrogram stored as raw bytes.',
                   '2.1.0': 'Both changes.'}
  CLASSES = EMOTIONS
  BUILDER_CONFIGS = _paper_and_runlocal(EMOTIONS, synthetic_size=2000)

  def _source_folder(self, dl_manager):
    c = self.builder_config
    folder = os.path.join(os.fspath(dl_manager.download_dir),
                          f'synthetic_sier_source_{c.name}')
    return synthetic.generate_corpus(
        folder, num_examples=c.synthetic_size, seed=c.synthetic_seed,
        classes=c.classes, image_size=c.image_size,
        sample_rate=c.sample_rate, duration_s=c.duration_s,
        image_cue=c.synthetic_image_cue or 'colour')


BUILDERS = {b.name: b for b in (IitrSier, BT4sa, SyntheticSier)}

