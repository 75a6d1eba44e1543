"""Dataset construction (paper §3.1, PAPER.md, "Building the dataset"): text + image -> speech + image.

From a B-T4SA-style source folder (`source.csv` with `id,text,image`, an
optional `label` and any other columns, plus the images), builds a dataset
folder in our manifest format (manifest.py) that the `iitr_sier` builder
reads unchanged (`b_t4sa` with `--label_from=source` and sentiment classes:
Table 3's setting):

  speech = TTS(text)                      (espeak-ng, or any command)
  p_s = SER teacher(speech), p_i = IER teacher(image)
  label = label_pair(p_i, p_s)            (the more confident teacher's argmax)

  python -m parallelnet.construct --source=SRC --out=OUT \\
      --ser_teacher=SER_WORKDIR --ier_teacher=IER_WORKDIR [--tts=espeak-ng |
      --tts_cmd='mytts --out {out} --text-file {text_file}'] [--threshold=0.5]
      [--require_agreement] [--class_map=excitement:happy,disgust:hate]
      [--label_from=teachers|source] [--skip_bad] [--workers=2]

Output folder: manifest.csv (id,image,audio,label,text + the source's other
columns; a source `label` becomes `source_label` when the teachers label),
images/ (copies of the kept rows' images), audio/ (16-bit mono WAV of the
kept rows), decisions.csv (one row per source row: id, decision, label,
image_probs, speech_probs, reason), stats.json (counts per class, per
decision and per labelling modality) and stats.png (a chart like the
paper's Fig. 1).

How a run proceeds. Rows are cut into chunks of `batch_size` in source order.
Worker processes synthesise and decode the rows of a chunk (TTS, the image
and the WAV decoded with each teacher's own preprocessing); the main process
runs both teachers on the chunk as one batch and appends the chunk's
probabilities to a journal (`OUT/.construct/chunks.jsonl`). Chunks are
processed and journaled strictly in order and their composition depends only
on the source, so the output does not depend on the number of workers. An
interrupted run resumes from the journal: journaled chunks (whose source rows
are unchanged: id, text, label, image path, size and mtime) are not redone;
the rows of unfinished chunks are (at most a few chunks in flight).
Every WAV and image is written to a temporary name in its folder and renamed
when complete. When all chunks are done the outputs are written (manifest.csv
last) and the journal is removed.

Teachers. Anything with `modality` ('speech' | 'image'), `classes` (its
class names in output order), `input_spec` (a picklable dict telling the
workers how to decode a file for it: {'kind': 'spectrogram', sample_rate,
n_fft, hop_length, n_mels, num_frames, duration_s}, {'kind': 'image',
image_size, image_scaling} or {'kind': 'path'}), `description` (a string
recorded in stats.json) and `predict(inputs) -> (n, len(classes))`
probabilities (inputs: the stacked decoded arrays, or the list of file paths
for kind 'path'). Two kinds exist:
  * a training workdir of this codebase (speech-only or image-only model),
    restored with the config it was trained with: parallelnet/teachers.py;
  * `module:function`, any importable callable taking a list of file paths
    (WAV paths for the SER teacher, image paths for the IER teacher) and
    returning probabilities; its class names are `function.classes` if set,
    else the target classes (`CallableTeacher`).
This module imports nothing of ours above input_pipeline: the library
(`construct_dataset`) takes teacher objects. The command line
(parallelnet/construct.py, `python -m parallelnet.construct`) loads a
workdir teacher through parallelnet.teachers (DESIGN.md).

Class map. Teacher classes are mapped onto the target classes: a class with a
target's name maps to it, others through `--class_map` (default
excitement->happy, disgust->hate); a teacher class that maps nowhere is an
error. Probabilities of teacher classes mapped onto one target are summed,
so p_s and p_i are distributions over the target classes (PAPER.md, "Building the dataset": "both
over the four emotions after mapping").
"""

import csv
import dataclasses
import hashlib
import importlib
import json
import multiprocessing
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import types
import warnings

import numpy as np

from input_pipeline import manifest as manifest_lib
from parallelnet.core import scaling as scaling_lib
from parallelnet.core.errors import UserError

from parallelnet.core.classes import EMOTIONS
DEFAULT_CLASS_MAP = 'excitement:happy,disgust:hate'
DECISIONS = ('kept', 'low_confidence', 'disagreement', 'bad_input')
STATE_DIR = '.construct'  # Journal of a run in progress; removed at the end.
MAX_LISTED = 50  # Bad rows named in one error message; the rest are counted.


class ConstructError(UserError):
  """Bad source rows in strict mode; `.bad` holds (id, reason) pairs."""

  def __init__(self, bad, source):
    self.bad = list(bad)
    lines = [f'{len(self.bad)} bad source row(s) in {source} (fix them, or '
             'pass --skip_bad to record them as bad_input and leave them out):']
    lines += [f'  id={rid!r}: {reason}' for rid, reason in self.bad[:MAX_LISTED]]
    if len(self.bad) > MAX_LISTED:
      lines.append(f'  ... and {len(self.bad) - MAX_LISTED} more.')
    super().__init__('\n'.join(lines))


# ------------------------------------------------------- the labelling rule --


def label_pair(p_image, p_speech, *, threshold=0.5, require_agreement=False):
  """The paper's labelling rule (§3.1, PAPER.md, "Building the dataset") for one pair.

  m_i = max p_image, m_s = max p_speech. Returns (label_index, 'kept') with
  the argmax of the more confident teacher, or (None, reason):
    * 'low_confidence' when max(m_i, m_s) < threshold (a maximum equal to
      the threshold is kept);
    * 'disagreement' when `require_agreement` and the two argmaxes differ
      (checked after the threshold: a pair failing both is low_confidence).
  Ties: equal maxima go to the image teacher; equal probabilities inside one
  vector go to the lower class index (numpy argmax).
  """
  pi = np.asarray(p_image, np.float64)
  ps = np.asarray(p_speech, np.float64)
  if pi.ndim != 1 or pi.shape != ps.shape or pi.size == 0:
    raise ValueError(f'label_pair needs two probability vectors of one length; '
                     f'got shapes {pi.shape} and {ps.shape}.')
  for name, p in (('image', pi), ('speech', ps)):
    if not np.all(np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1) > 1e-3:
      raise ValueError(f'{name} probabilities {p.tolist()} are not a '
                       'probability vector (finite, >= 0, summing to 1).')
  m_i, m_s = pi.max(), ps.max()
  if max(m_i, m_s) < threshold:
    return None, 'low_confidence'
  a_i, a_s = int(np.argmax(pi)), int(np.argmax(ps))
  if require_agreement and a_i != a_s:
    return None, 'disagreement'
  return (a_i if m_i >= m_s else a_s), 'kept'


def parse_class_map(text):
  """'excitement:happy,disgust:hate' -> {'excitement': 'happy', ...}."""
  out = {}
  for item in (text or '').split(','):
    item = item.strip()
    if not item:
      continue
    src, sep, dst = item.partition(':')
    if not sep or not src.strip() or not dst.strip():
      raise UserError(f'--class_map item {item!r} is not teacher_class:'
                      'target_class (e.g. excitement:happy).')
    out[src.strip()] = dst.strip()
  return out


def class_matrix(teacher_classes, target_classes, class_map, who='teacher'):
  """(len(teacher_classes), len(target_classes)) 0/1 matrix: p @ M maps a
  teacher's probabilities onto the targets (summing merged classes)."""
  targets = list(target_classes)
  m = np.zeros((len(teacher_classes), len(targets)), np.float64)
  unmapped = []
  for i, name in enumerate(teacher_classes):
    dst = class_map.get(name, name if name in targets else None)
    if dst not in targets:
      unmapped.append(f'{name!r}' + (f' (mapped to unknown class {dst!r})'
                                     if dst is not None else ''))
      continue
    m[i, targets.index(dst)] = 1.0
  if unmapped:
    raise UserError(
        f'The {who}\'s class(es) {", ".join(unmapped)} map to none of the '
        f'target classes ({", ".join(targets)}); add them to --class_map '
        '(teacher_class:target_class, comma-separated).')
  return m


# ---------------------------------------------------------------------- TTS --


class TTSError(Exception):
  """One text the engine could not speak; the message is the reason."""


def _write_wav_atomic(path, samples, sample_rate):
  """16-bit mono WAV at `path`, via a temporary name in the same folder."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  tmp = _tmp_name(path)
  try:
    sf.write(tmp, samples, sample_rate, subtype='PCM_16', format='WAV')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _tmp_name(path):
  folder, name = os.path.split(path)
  return os.path.join(folder, f'.{name}.tmp{os.getpid()}')


def _finish_engine_output(raw_path, out_path, sample_rate):
  """Reads what the engine wrote, checks it, writes the final WAV.

  Mono, 16-bit, resampled to `sample_rate` when given (soxr, as the input
  pipeline does). Raises TTSError when the output is missing or empty.
  """
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  if not os.path.exists(raw_path) or os.path.getsize(raw_path) == 0:
    raise TTSError('the TTS engine wrote no audio file')
  try:
    data, sr = sf.read(raw_path, dtype='float32', always_2d=True)
  except Exception as e:  # pylint: disable=broad-except
    raise TTSError(f'the TTS engine wrote unreadable audio ({e})') from e
  wav = data.mean(axis=1)
  if wav.size == 0 or not np.any(wav):
    raise TTSError('the TTS engine wrote silence (no samples)')
  if sample_rate and sr != sample_rate:
    # soxr 'HQ' is librosa.resample(res_type='soxr_hq'), without importing
    # librosa (seconds) in a process that may not need it otherwise.
    import soxr  # pylint: disable=g-import-not-at-top
    wav = soxr.resample(wav, sr, sample_rate, quality='HQ').astype(np.float32)
    sr = sample_rate
  _write_wav_atomic(out_path, np.clip(wav, -1.0, 1.0), sr)


def _run(cmd, timeout):
  try:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       check=False)
  except subprocess.TimeoutExpired as e:
    raise TTSError(f'the TTS command timed out after {timeout} s') from e
  except OSError as e:
    raise TTSError(f'the TTS command could not start ({e})') from e
  if p.returncode != 0:
    err = (p.stderr or p.stdout or '').strip().splitlines()
    raise TTSError(f'the TTS command failed (exit {p.returncode}'
                   f'{": " + err[-1] if err else ""})')


def _synthesize_with(make_argv, text, out_path, sample_rate, timeout):
  """Runs a TTS command and writes its output as the final WAV `out_path`.

  The text goes to a temporary UTF-8 file; `make_argv(raw, text_file)` gives
  the command, which must write the WAV `raw`. Both temporaries (next to
  `out_path`) are removed whatever happens.
  """
  raw = _tmp_name(out_path) + '.raw.wav'
  text_file = _tmp_name(out_path) + '.txt'
  try:
    with open(text_file, 'w', encoding='utf-8') as f:
      f.write(text)
    _run(make_argv(raw, text_file), timeout)
    _finish_engine_output(raw, out_path, sample_rate)
  finally:
    for p in (raw, text_file):
      if os.path.exists(p):
        os.remove(p)


@dataclasses.dataclass(frozen=True)
class EspeakTTS:
  """espeak-ng (a system package: `apt-get install espeak-ng`), offline."""
  voice: str = 'en-us'  # espeak-ng -v: language/voice name.
  rate: int = 175  # espeak-ng -s: words per minute.
  sample_rate: int = 16000  # Output WAV rate (espeak-ng speaks at 22050 Hz).
  program: str = 'espeak-ng'
  timeout_s: float = 60.0

  def describe(self):
    return f'espeak-ng voice={self.voice} rate={self.rate} sr={self.sample_rate}'

  def check(self):
    """Raises UserError if the program is missing or the voice unknown."""
    if shutil.which(self.program) is None:
      raise UserError(
          f'The TTS program {self.program!r} is not installed: install it '
          'with `apt-get install espeak-ng` (Debian/Ubuntu; `brew install '
          'espeak-ng` on macOS), or use another engine with --tts_cmd.')
    with tempfile.TemporaryDirectory() as d:
      try:
        self.synthesize('test', os.path.join(d, 'check.wav'))
      except TTSError as e:
        raise UserError(f'espeak-ng cannot speak with voice={self.voice!r}, '
                        f'rate={self.rate}: {e}. `espeak-ng --voices` lists '
                        'the voices.') from e

  def synthesize(self, text, out_path):
    _synthesize_with(
        lambda raw, text_file: [self.program, '-v', self.voice, '-s',
                                str(int(self.rate)), '-w', raw, '-f',
                                text_file],
        text, out_path, self.sample_rate, self.timeout_s)


@dataclasses.dataclass(frozen=True)
class CommandTTS:
  """Any engine run as a command, from a template (no shell involved).

  Placeholders: {out} (the WAV file the command must write; required),
  {text_file} (a UTF-8 file holding the text) and {text} (the text as one
  argument). E.g. `mytts --out {out} --text-file {text_file}`.
  """
  template: str
  sample_rate: int = 0  # Resample the output to this rate; 0 keeps the engine's.
  timeout_s: float = 120.0

  def describe(self):
    return f'command {self.template!r} sr={self.sample_rate or "engine"}'

  def _argv(self):
    try:
      argv = shlex.split(self.template)
    except ValueError as e:
      raise UserError(f'--tts_cmd={self.template!r}: {e}.') from e
    if not argv or not any('{out}' in a for a in argv):
      raise UserError(f'--tts_cmd={self.template!r} must contain {{out}}, '
                      'the WAV file the command writes.')
    return argv

  def check(self):
    argv = self._argv()
    if shutil.which(argv[0]) is None:
      raise UserError(f'--tts_cmd: program {argv[0]!r} not found on PATH.')

  def synthesize(self, text, out_path):
    def argv(raw, text_file):
      subs = {'{out}': raw, '{text_file}': text_file, '{text}': text}
      out = []
      for a in self._argv():
        for k, v in subs.items():
          a = a.replace(k, v)
        out.append(a)
      return out
    _synthesize_with(argv, text, out_path, self.sample_rate, self.timeout_s)


# ----------------------------------------------------------------- teachers --


class CallableTeacher:
  """A `module:function` teacher: function(list of paths) -> probabilities."""

  def __init__(self, fn, modality, classes, description):
    self.fn = fn
    self.modality = modality
    self.classes = tuple(classes)
    self.input_spec = {'kind': 'path'}
    self.description = description

  def predict(self, paths):
    return np.asarray(self.fn(list(paths)), np.float64)


def load_callable_teacher(spec, modality, default_classes):
  """CallableTeacher from 'module:function'; its classes are
  `function.classes` if set, else `default_classes`."""
  module_name, _, fn_name = spec.partition(':')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise UserError(f'Teacher {spec!r}: cannot import module '
                    f'{module_name!r} ({e}).') from e
  fn = getattr(module, fn_name, None)
  if not callable(fn):
    raise UserError(f'Teacher {spec!r}: {module_name} has no callable '
                    f'{fn_name!r}.')
  return CallableTeacher(fn, modality, getattr(fn, 'classes', default_classes),
                         f'callable {spec}')


def is_callable_spec(spec):
  """'pkg.module:function' (and not an existing folder)."""
  return (not os.path.isdir(spec) and
          re.fullmatch(r'[A-Za-z_][\w.]*:[A-Za-z_]\w*', spec) is not None)


def _teacher_probs(teacher, inputs, target_matrix, who):
  """The teacher's probabilities mapped onto the targets, checked."""
  n = len(inputs)
  p = np.asarray(teacher.predict(inputs), np.float64)
  if p.shape != (n, len(teacher.classes)):
    raise UserError(f'The {who} ({teacher.description}) returned shape '
                    f'{p.shape} for {n} inputs; expected ({n}, '
                    f'{len(teacher.classes)}) probabilities.')
  if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(
      np.abs(p.sum(-1) - 1) > 1e-3):
    raise UserError(f'The {who} ({teacher.description}) returned values that '
                    'are not probabilities (finite, >= 0, rows summing to 1); '
                    'apply a softmax.')
  return p @ target_matrix


# ------------------------------------------------------------- source rows --


def _safe_name(row_id):
  """A file name for an id: the id itself when it is plain, else a
  sanitised form with a hash suffix (so distinct ids never collide)."""
  if re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9_-]{0,99}', row_id):
    return row_id
  clean = re.sub(r'[^A-Za-z0-9_-]+', '_', row_id)[:60].strip('_') or 'row'
  return f'{clean}_{hashlib.sha256(row_id.encode()).hexdigest()[:10]}'


def read_source(source, *, classes, label_from):
  """Reads SOURCE/source.csv; returns (header, rows), each row a dict with
  its columns plus `_line`, `_bad` (reasons found without decoding) and
  `_image_path` (absolute)."""
  path = os.path.join(source, 'source.csv')
  if not os.path.isfile(path):
    raise UserError(f'No source.csv in {source!r}: the source folder needs '
                    'source.csv with columns id,text,image (optional label, '
                    'other columns kept) and the images.')
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.DictReader(f)
    header = list(reader.fieldnames or [])
    rows = list(reader)
  need = ['id', 'text', 'image'] + (['label'] if label_from == 'source' else [])
  missing = [c for c in need if c not in header]
  if missing:
    raise UserError(f'{path}: header lacks column(s) {missing}'
                    f'{" (--label_from=source reads label)" if "label" in missing else ""}'
                    f'; got {header}.')
  clash = [c for c in ('audio', 'source_label') if c in header]
  if clash:
    raise UserError(f'{path}: column(s) {clash} would clash with the '
                    'manifest\'s own; rename them.')
  seen, names = set(), {}
  for line, r in enumerate(rows, start=2):
    r['_line'] = line
    rid = (r.get('id') or '').strip()
    r['id'] = rid
    bad = []
    if not rid:
      bad.append(f'empty id (source.csv line {line})')
    elif rid in seen:
      bad.append(f'duplicate id (source.csv line {line})')
    seen.add(rid)
    name = _safe_name(rid or f'line{line}')
    if name in names:  # Only duplicate (hence bad) ids get here in practice.
      name = f'{name}_L{line}'
    names[name] = rid
    r['_name'] = name
    if not (r.get('text') or '').strip():
      bad.append('empty text')
    img = manifest_lib.resolve(source, (r.get('image') or '').strip())
    if img is None:
      bad.append(f'image path {r.get("image")!r} is empty or leaves the '
                 'source folder')
    elif not os.path.isfile(img):
      bad.append(f'missing image file {r.get("image")!r}')
    r['_image_path'] = img
    if label_from == 'source':
      label = (r.get('label') or '').strip()
      if label not in classes:
        bad.append(f'unknown label {label!r} (classes: {", ".join(classes)})')
    r['_bad'] = bad
  return header, rows


def _row_fingerprint(r):
  """Changes when the row's inputs change (the image by path, size, mtime)."""
  img = r['_image_path']
  stat = os.stat(img) if img and os.path.isfile(img) else None
  fields = {k: v for k, v in r.items() if not k.startswith('_')}
  key = json.dumps([fields, img, stat and stat.st_size,
                    stat and stat.st_mtime_ns], sort_keys=True)
  return hashlib.sha256(key.encode()).hexdigest()


# ------------------------------------------------------------ row workers --


def _input_config(spec):
  """A 'spectrogram' input_spec as the input config audio.py reads."""
  return types.SimpleNamespace(**{k: v for k, v in spec.items()
                                  if k != 'kind'})


def _decode_for(spec, path, modality):
  """One file decoded the way a teacher wants it (see the module doc)."""
  from input_pipeline import audio as audio_lib  # pylint: disable=g-import-not-at-top
  from input_pipeline import image as image_lib  # pylint: disable=g-import-not-at-top
  kind = spec['kind']
  if kind == 'path':  # The teacher reads the file itself; check it decodes.
    if modality == 'image':
      image_lib.load_image(path, 8)
    else:
      audio_lib.decode_audio(path, 8000)
    return path
  if kind == 'spectrogram':
    return audio_lib.load_spectrogram(path, _input_config(spec))[0]
  if kind == 'image':
    return scaling_lib.scale_image(
        image_lib.load_image(path, spec['image_size']), spec['image_scaling'])
  raise ValueError(f'unknown teacher input kind {kind!r}')


def _process_row(task):
  """TTS + decoding of one row (runs in a worker process).

  Returns dict(ok, reason, speech, image, tts_s, decode_s); never raises for
  a row's own problems (they become `reason`).
  """
  from input_pipeline import audio as audio_lib  # pylint: disable=g-import-not-at-top
  from input_pipeline import image as image_lib  # pylint: disable=g-import-not-at-top
  out = dict(ok=False, reason='', speech=None, image=None, tts_s=0.0,
             decode_s=0.0)
  if task['bad']:
    out['reason'] = '; '.join(task['bad'])
    return out
  reasons = []
  t0 = time.perf_counter()
  try:
    out['image'] = _decode_for(task['image_spec'], task['image_path'],
                               'image')
  except image_lib.ImageError as e:
    reasons.append(f'image: {e}')
  t1 = time.perf_counter()
  wav = task['audio_path']
  if not reasons:  # No TTS for a row that is bad already.
    try:
      task['tts'].synthesize(task['text'], wav)
    except TTSError as e:
      reasons.append(f'tts: {e}')
  t2 = time.perf_counter()
  if not reasons:
    try:
      out['speech'] = _decode_for(task['speech_spec'], wav, 'speech')
    except audio_lib.AudioError as e:
      reasons.append(f'synthesised audio: {e}')
  t3 = time.perf_counter()
  out.update(ok=not reasons, reason='; '.join(reasons), tts_s=t2 - t1,
             decode_s=(t1 - t0) + (t3 - t2))
  return out


def _warm_up(speech_spec):
  """librosa loads its parts lazily on first use: do it before timing rows."""
  if speech_spec and speech_spec.get('kind') == 'spectrogram':
    from input_pipeline import audio as audio_lib  # pylint: disable=g-import-not-at-top
    ic = _input_config(speech_spec)
    audio_lib.log_mel(np.ones(audio_lib.num_samples(ic), np.float32), ic)


def _worker_init(speech_spec):
  import signal  # pylint: disable=g-import-not-at-top
  import threadpoolctl  # pylint: disable=g-import-not-at-top
  # Ctrl-C is the main process's to handle (it stops the pool); workers
  # would only print a traceback each.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threadpoolctl.threadpool_limits(1)  # One BLAS thread per worker process.
  _warm_up(speech_spec)


class _Runner:
  """Maps _process_row over chunks, in a process pool when workers > 1,
  keeping a few chunks in flight (bounded memory) and their order."""

  def __init__(self, workers, speech_spec):
    self.workers = workers
    self.pool = None
    if workers <= 1:
      _warm_up(speech_spec)
    else:
      with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*fork.*')
        # forkserver: workers do not inherit the parent's JAX/TF threads.
        ctx = multiprocessing.get_context('forkserver')
        # Imported once in the fork server, so each worker starts warm
        # (not this module: a `python -m` run re-executes it in each worker
        # as __mp_main__, which must find it unimported).
        ctx.set_forkserver_preload(['input_pipeline.audio',
                                    'input_pipeline.image'])
        self.pool = ctx.Pool(workers, initializer=_worker_init,
                             initargs=(speech_spec,))

  def map_chunks(self, chunk_tasks):
    """Yields the results of each chunk's task list, in order."""
    if self.pool is None:
      for tasks in chunk_tasks:
        yield [_process_row(t) for t in tasks]
      return
    pending = []
    it = iter(chunk_tasks)
    ahead = 2 * self.workers
    done = False
    while True:
      while not done and len(pending) < ahead:
        try:
          tasks = next(it)
        except StopIteration:
          done = True
          break
        pending.append(self.pool.map_async(_process_row, tasks, chunksize=1))
      if not pending:
        return
      yield pending.pop(0).get()

  def close(self):
    if self.pool is not None:
      self.pool.terminate()
      self.pool.join()


# ------------------------------------------------------------------ the run --


def _settings_record(tts, ser, ier, classes, label_from, batch_size,
                     class_map):
  return dict(
      tts=tts.describe(),
      ser_teacher=ser.description if ser else None,
      ier_teacher=ier.description if ier else None,
      classes=list(classes), label_from=label_from, batch_size=batch_size,
      class_map=dict(sorted(class_map.items())))


def _prepare_out(out, settings):
  """Creates OUT (refusing a finished or foreign folder) and its state dir;
  returns the journal's accepted chunk records {k: record}."""
  state = os.path.join(out, STATE_DIR)
  settings_path = os.path.join(state, 'settings.json')
  if os.path.isdir(out) and os.listdir(out) and not os.path.isdir(state):
    what = ('a finished construction (manifest.csv)'
            if os.path.exists(os.path.join(out, 'manifest.csv'))
            else 'files of something else')
    raise UserError(f'--out={out} is not empty and holds {what}; choose a new '
                    'or empty folder.')
  os.makedirs(state, exist_ok=True)
  for sub in ('audio', 'images'):
    os.makedirs(os.path.join(out, sub), exist_ok=True)
  if os.path.exists(settings_path):
    with open(settings_path, encoding='utf-8') as f:
      before = json.load(f)
    if before != json.loads(json.dumps(settings)):
      diffs = [f'{k}: {before.get(k)!r} then, {settings[k]!r} now'
               for k in settings if before.get(k) != json.loads(
                   json.dumps(settings[k]))]
      raise UserError(
          f'--out={out} holds an interrupted run with other settings '
          f'({"; ".join(diffs)}); resume with the same settings, or choose a '
          'new --out.')
  else:
    with open(settings_path, 'w', encoding='utf-8') as f:
      json.dump(settings, f, indent=1, sort_keys=True)
  # Left-over temporary files of an interrupted run.
  for sub in ('audio', 'images'):
    for name in os.listdir(os.path.join(out, sub)):
      if name.startswith('.') and '.tmp' in name:
        os.remove(os.path.join(out, sub, name))
  records = {}
  journal = os.path.join(state, 'chunks.jsonl')
  if os.path.exists(journal):
    with open(journal, encoding='utf-8') as f:
      for line in f:
        try:
          rec = json.loads(line)
        except ValueError:
          continue  # A line cut short by the interruption.
        records[rec['chunk']] = rec
  return records


def _fmt_probs(p):
  return '' if p is None else ' '.join(f'{x:.6f}' for x in p)


def construct_dataset(source, out, *, tts, ser_teacher=None, ier_teacher=None,
                      classes=EMOTIONS, class_map=None, threshold=0.5,
                      require_agreement=False, label_from='teachers',
                      skip_bad=False, workers=1, batch_size=32,
                      show_progress=True, on_chunk=None):
  """Builds the dataset folder `out` from `source` (see the module doc).

  `tts`: EspeakTTS or CommandTTS (or anything with check/synthesize/
  describe, picklable). Teachers: see the module doc; both are required with
  label_from='teachers', optional with 'source' (then only recorded).
  `on_chunk(k)` is called after chunk k is journaled (tests interrupt there).
  Returns the stats dict (as in stats.json) plus `timing` (seconds: tts and
  decode summed over rows, teachers, wall).
  """
  from parallelnet.core import progress as progress_lib  # pylint: disable=g-import-not-at-top
  t_start = time.perf_counter()
  classes = tuple(classes)
  if label_from not in ('teachers', 'source'):
    raise UserError(f'--label_from={label_from!r}; use teachers or source.')
  if label_from == 'teachers' and (ser_teacher is None or ier_teacher is None):
    raise UserError('--label_from=teachers needs both --ser_teacher and '
                    '--ier_teacher.')
  if not 0.0 <= threshold <= 1.0:
    raise UserError(f'--threshold={threshold} must be in [0, 1].')
  if batch_size < 1 or workers < 1:
    raise UserError('--batch_size and --workers must be at least 1.')
  if class_map is None:
    class_map = DEFAULT_CLASS_MAP
  class_map = (parse_class_map(class_map) if isinstance(class_map, str)
               else dict(class_map))
  teachers = {}
  for who, t, modality in (('SER teacher', ser_teacher, 'speech'),
                           ('IER teacher', ier_teacher, 'image')):
    if t is None:
      continue
    if t.modality != modality:
      raise UserError(f'The {who} ({t.description}) is a {t.modality} model; '
                      f'expected a {modality} one.')
    teachers[modality] = (t, class_matrix(t.classes, classes, class_map, who))
  tts.check()
  header, rows = read_source(source, classes=classes, label_from=label_from)
  if not rows:
    raise UserError(f'{source}/source.csv has no rows.')
  settings = _settings_record(tts, ser_teacher, ier_teacher, classes,
                              label_from, batch_size, class_map)
  records = _prepare_out(out, settings)
  journal_path = os.path.join(out, STATE_DIR, 'chunks.jsonl')

  chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
  prints = [hashlib.sha256(''.join(_row_fingerprint(r) for r in c).encode()
                           ).hexdigest() for c in chunks]
  todo = [k for k in range(len(chunks))
          if records.get(k, {}).get('fingerprint') != prints[k]]
  # The resume unit is the chunk: audio of unfinished chunks is redone (the
  # source rows may have changed since).
  for k in todo:
    for r in chunks[k]:
      wav = os.path.join(out, 'audio', r['_name'] + '.wav')
      if os.path.exists(wav):
        os.remove(wav)
  # Without a teacher, files are still checked to decode ('path').
  speech_spec = (teachers['speech'][0].input_spec if 'speech' in teachers
                 else {'kind': 'path'})
  image_spec = (teachers['image'][0].input_spec if 'image' in teachers
                else {'kind': 'path'})

  def tasks_of(k):
    return [dict(bad=r['_bad'], text=r.get('text', ''), tts=tts,
                 image_path=r['_image_path'],
                 audio_path=os.path.join(out, 'audio', r['_name'] + '.wav'),
                 speech_spec=speech_spec, image_spec=image_spec)
            for r in chunks[k]]

  timing = dict(tts_s=0.0, decode_s=0.0, teachers_s=0.0)
  runner = _Runner(min(workers, max(1, len(todo) * batch_size)), speech_spec)
  bar = progress_lib.Progress(sum(len(chunks[k]) for k in todo),
                              'constructing', unit='rows',
                              enabled=show_progress)
  try:
    with open(journal_path, 'a', encoding='utf-8') as journal:
      for k, results in zip(todo, runner.map_chunks(tasks_of(k) for k in todo)):
        probs = {}
        t0 = time.perf_counter()
        for modality, (t, matrix) in teachers.items():
          ok = [i for i, res in enumerate(results) if res['ok']]
          if not ok:
            continue
          inputs = [results[i][modality] for i in ok]
          if t.input_spec['kind'] != 'path':
            inputs = np.stack(inputs)
          p = _teacher_probs(t, inputs, matrix,
                             'SER teacher' if modality == 'speech'
                             else 'IER teacher')
          probs[modality] = dict(zip(ok, p))
        timing['teachers_s'] += time.perf_counter() - t0
        rec_rows = []
        for i, res in enumerate(results):
          timing['tts_s'] += res['tts_s']
          timing['decode_s'] += res['decode_s']
          rec_rows.append(dict(
              id=chunks[k][i]['id'], ok=res['ok'], reason=res['reason'],
              speech=[float(x) for x in probs['speech'][i]]
              if i in probs.get('speech', {}) else None,
              image=[float(x) for x in probs['image'][i]]
              if i in probs.get('image', {}) else None))
        journal.write(json.dumps(dict(chunk=k, fingerprint=prints[k],
                                      rows=rec_rows)) + '\n')
        journal.flush()
        os.fsync(journal.fileno())
        records[k] = dict(chunk=k, fingerprint=prints[k], rows=rec_rows)
        bar.update(len(results))
        if on_chunk is not None:
          on_chunk(k)
  finally:
    runner.close()
  bar.close()

  stats = _finish(source, out, header, rows, chunks, records, classes,
                  threshold, require_agreement, label_from, skip_bad,
                  settings)
  timing['wall_s'] = time.perf_counter() - t_start
  stats['timing'] = timing
  return stats


def _finish(source, out, header, rows, chunks, records, classes, threshold,
            require_agreement, label_from, skip_bad, settings):
  """Decisions, then decisions.csv, stats, images, manifest.csv (last)."""
  results = [rec_row for k in range(len(chunks))
             for rec_row in records[k]['rows']]
  bad = [(r['id'] or f'(line {r["_line"]})', res['reason'])
         for r, res in zip(rows, results) if not res['ok']]
  if bad and not skip_bad:
    raise ConstructError(bad, os.path.join(source, 'source.csv'))
  decisions = []  # (decision, label index or None, labelling modality)
  for r, res in zip(rows, results):
    if not res['ok']:
      decisions.append(('bad_input', None, None))
    elif label_from == 'source':
      decisions.append(('kept', classes.index(r['label'].strip()), 'source'))
    else:
      label, decision = label_pair(res['image'], res['speech'],
                                   threshold=threshold,
                                   require_agreement=require_agreement)
      who = None
      if label is not None:
        who = 'image' if max(res['image']) >= max(res['speech']) else 'speech'
      decisions.append((decision, label, who))

  with _atomic_open(os.path.join(out, 'decisions.csv')) as f:
    w = csv.writer(f, lineterminator='\n')
    w.writerow(['id', 'decision', 'label', 'image_probs', 'speech_probs',
                'reason'])
    for r, res, (decision, label, _) in zip(rows, results, decisions):
      w.writerow([r['id'], decision, '' if label is None else classes[label],
                  _fmt_probs(res['image']), _fmt_probs(res['speech']),
                  res['reason']])

  kept = [(r, label) for r, (d, label, _) in zip(rows, decisions)
          if d == 'kept']
  stats = dict(
      rows=len(rows), kept=len(kept),
      decisions={d: sum(x[0] == d for x in decisions) for d in DECISIONS},
      classes={c: sum(label == i for _, label in kept)
               for i, c in enumerate(classes)},
      label_modality={m: sum(x[2] == m for x in decisions)
                      for m in (('source',) if label_from == 'source'
                                else ('image', 'speech'))},
      threshold=threshold, require_agreement=require_agreement,
      settings=settings)
  with _atomic_open(os.path.join(out, 'stats.json')) as f:
    json.dump(stats, f, indent=2)
    f.write('\n')
  plot_stats(stats, os.path.join(out, 'stats.png'))

  # Images of kept rows copied; audio of the others removed (the folder holds
  # exactly the dataset its manifest describes).
  keep_names = set()
  extra = [c for c in header if c not in ('id', 'image', 'label', 'text')]
  manifest_rows = []
  for r, label in kept:
    ext = os.path.splitext(r['_image_path'])[1].lower()
    image_rel = f'images/{r["_name"]}{ext}'
    dst = os.path.join(out, image_rel)
    if not os.path.exists(dst):
      tmp = _tmp_name(dst)
      shutil.copyfile(r['_image_path'], tmp)
      os.replace(tmp, dst)
    keep_names.add(r['_name'])
    row = [r['id'], image_rel, f'audio/{r["_name"]}.wav', classes[label],
           r.get('text', '')]
    if label_from == 'teachers' and 'label' in header:
      row.append(r.get('label', ''))
    manifest_rows.append(row + [r.get(c, '') for c in extra])
  for name in sorted(os.listdir(os.path.join(out, 'audio'))):
    if os.path.splitext(name)[0] not in keep_names:
      os.remove(os.path.join(out, 'audio', name))
  columns = ['id', 'image', 'audio', 'label', 'text']
  if label_from == 'teachers' and 'label' in header:
    columns.append('source_label')
  with _atomic_open(os.path.join(out, 'manifest.csv')) as f:
    w = csv.writer(f, lineterminator='\n')
    w.writerow(columns + extra)
    w.writerows(manifest_rows)
  shutil.rmtree(os.path.join(out, STATE_DIR))
  return stats


class _atomic_open:  # pylint: disable=invalid-name
  """open(path, 'w') that renames a temporary file into place on success."""

  def __init__(self, path):
    self.path = path
    self.tmp = _tmp_name(path)

  def __enter__(self):
    self.f = open(self.tmp, 'w', newline='', encoding='utf-8')
    return self.f

  def __exit__(self, exc_type, *unused):
    self.f.close()
    if exc_type is None:
      os.replace(self.tmp, self.path)
    else:
      os.remove(self.tmp)
    return False


def plot_stats(stats, path):
  """A chart like the paper's Fig. 1: kept samples per class, which
  modality's teacher labelled them, and kept/discarded counts."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = [('Kept samples per class', stats['classes'], '#4C72B0'),
            ('Label taken from', stats['label_modality'], '#55A868'),
            ('Decisions', stats['decisions'], '#C44E52')]
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.6),
                           gridspec_kw=dict(width_ratios=[4, 2, 4]))
  for ax, (title, counts, colour) in zip(axes, panels):
    names, values = list(counts), [counts[k] for k in counts]
    bars = ax.bar(range(len(names)), values, color=colour)
    ax.set_xticks(range(len(names)), [n.replace('_', '\n') for n in names])
    ax.set_title(title)
    ax.bar_label(bars, [str(v) for v in values])
    ax.set_ylim(0, max(values + [1]) * 1.18)
    ax.spines[['top', 'right']].set_visible(False)
  fig.suptitle(f'Constructed dataset: {stats["kept"]} of {stats["rows"]} '
               f'source rows kept (threshold {stats["threshold"]}'
               f'{", teachers must agree" if stats["require_agreement"] else ""})')
  fig.tight_layout()
  fig.savefig(path, dpi=100, metadata={'Software': None})
  plt.close(fig)
