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
  if tts_lib.stopping():
    out['reason'] = 'the build stopped'  # Nobody reads it.
    return out
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
    except tts_lib.Stopped:
      out['reason'] = 'the build stopped'
      return out
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


def _worker_init(speech_spec, stop_event):
  tts_lib.stop_on(stop_event)  # Set when the build stops early (close).
  # Ctrl-C is the main process's to handle (it stops the pool); workers
  # would only print a traceback each.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threadpoolctl.threadpool_limits(1)  # One BLAS thread per worker process.
  _warm_up(speech_spec)


class Runner:
  """Maps process_row over chunks, in a process pool when workers > 1,
  keeping a few chunks in flight (bounded memory) and their order."""

  def __init__(self, workers, speech_spec):
    self.workers = workers
    self.pool = None
    self.pending = []  # AsyncResults of the chunks in flight.
    if workers <= 1:
      _warm_up(speech_spec)
    else:
      with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*fork.*')
        # forkserver: workers do not inherit the parent's JAX/TF threads.
        ctx = multiprocessing.get_context('forkserver')
        # Imported once in the fork server, so each worker starts warm.
        ctx.set_forkserver_preload(['input_pipeline.construct.workers'])
        self.stop = ctx.Event()
        self.pool = ctx.Pool(workers, initializer=_worker_init,
                             initargs=(speech_spec, self.stop))

  def map_chunks(self, chunk_tasks):
    """Yields the results of each chunk's task list, in order."""
    if self.pool is None:
      for tasks in chunk_tasks:
        yield [process_row(t) for t in tasks]
      return
    pending = self.pending
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

  def close(self, wait_s=30.0):
    """Ends the pool. Rows still in flight (the build stopped early: Ctrl-C,
    an error) stop first, so that no TTS command outlives the build and
    writes into its folder afterwards: queued rows are skipped, running
    commands killed (tts.stop_on), for at most `wait_s`; then the workers
    are terminated. (Terminating at once would orphan the commands.)"""
    if self.pool is None:
      return
    try:
      self.stop.set()
      deadline = time.monotonic() + wait_s
      for r in self.pending:
        r.wait(max(0.0, deadline - time.monotonic()))
    finally:
      self.pool.terminate()
      self.pool.join()
