"""Row workers: TTS and decoding of source rows, in a process pool.

`process_row` runs in the worker processes, so it and what it calls are
module-level functions (picklable by name).
"""

import multiprocessing
import signal
import time
import warnings

import threadpoolctl

from input_pipeline import audio as audio_lib
from input_pipeline import image as image_lib
from input_pipeline.construct import tts as tts_lib
from parallelnet.core import scaling as scaling_lib


def decode_for(spec, path, modality):
  """One file decoded the way a teacher wants it (its `input_spec`)."""
  kind = spec['kind']
  if kind == 'path':  # The teacher reads the file itself; check it decodes.
    if modality == 'image':
      image_lib.load_image(path, 8)
    else:
      audio_lib.decode_audio(path, 8000)
    return path
  if kind == 'spectrogram':
    return audio_lib.load_spectrogram(path, audio_lib.input_settings(spec))[0]
  if kind == 'image':
    return scaling_lib.scale_image(
        image_lib.load_image(path, spec['image_size']), spec['image_scaling'])
  raise ValueError(f'unknown teacher input kind {kind!r}')


def process_row(task):
  """TTS + decoding of one row (runs in a worker process).

  Returns dict(ok, reason, speech, image, tts_s, decode_s); never raises for
  a row's own problems (they become `reason`).
  """
  out = dict(ok=False, reason='', speech=None, image=None, tts_s=0.0,
             decode_s=0.0)
  if task['bad']:
    out['reason'] = '; '.join(task['bad'])
    return out
  reasons = []
  t0 = time.perf_counter()
  try:
    out['image'] = decode_for(task['image_spec'], task['image_path'], 'image')
  except image_lib.ImageError as e:
    reasons.append(f'image: {e}')
  t1 = time.perf_counter()
  wav = task['audio_path']
  if not reasons:  # No TTS for a row that is bad already.
    try:
      task['tts'].synthesize(task['text'], wav)
    except tts_lib.TTSError as e:
      reasons.append(f'tts: {e}')
  t2 = time.perf_counter()
  if not reasons:
    try:
      out['speech'] = decode_for(task['speech_spec'], wav, 'speech')
    except audio_lib.AudioError as e:
      reasons.append(f'synthesised audio: {e}')
  t3 = time.perf_counter()
  out.update(ok=not reasons, reason='; '.join(reasons), tts_s=t2 - t1,
             decode_s=(t1 - t0) + (t3 - t2))
  return out


def _warm_up(speech_spec):
  """audio.warm_up (librosa's lazy parts) before rows are timed."""
  if speech_spec and speech_spec.get('kind') == 'spectrogram':
    audio_lib.warm_up(speech_spec)


def _stop_worker(signum, frame):
  """SIGTERM (Pool.terminate, when a build stops early) unwinds the row in
  progress: subprocess.run then kills and reaps the TTS command, and the
  row's temporaries are removed. Dying at once instead would orphan that
  command, which would go on writing into the output folder after
  construct_dataset has returned (or while a resumed run works there)."""
  del frame
  raise SystemExit(128 + signum)


def _worker_init(speech_spec):
  # Ctrl-C is the main process's to handle (it stops the pool); workers
  # would only print a traceback each.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, _stop_worker)
  threadpoolctl.threadpool_limits(1)  # One BLAS thread per worker process.
  _warm_up(speech_spec)


class Runner:
  """Maps process_row over chunks, in a process pool when workers > 1,
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
        # Imported once in the fork server, so each worker starts warm.
        ctx.set_forkserver_preload(['input_pipeline.construct.workers'])
        self.pool = ctx.Pool(workers, initializer=_worker_init,
                             initargs=(speech_spec,))

  def map_chunks(self, chunk_tasks):
    """Yields the results of each chunk's task list, in order."""
    if self.pool is None:
      for tasks in chunk_tasks:
        yield [process_row(t) for t in tasks]
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
        pending.append(self.pool.map_async(process_row, tasks, chunksize=1))
      if not pending:
        return
      yield pending.pop(0).get()

  def close(self):
    if self.pool is not None:
      self.pool.terminate()
      self.pool.join()
