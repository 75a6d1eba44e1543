"""Progress lines for long steps, and the quiet default log.

Progress: a small progress line for long steps (builds, epochs, explanations,
folds).

`Progress(total, 'building train')` and `.update(n)` print
`building train: 120/450 (27%)  31.2/s  0:00:10 left` to stderr at most every
`interval_s` seconds (and once at the end), on one line rewritten in place when
stderr is a terminal and as separate lines otherwise, so logs stay short.
Hand-rolled rather than tqdm: tqdm is not a pinned dependency, and this is
the one format every mode shares. Only process 0 prints in multi-process runs
(callers pass `enabled=jax.process_index() == 0`).
"""

import logging
import os
import sys
import time

from absl import logging as absl_logging


def format_seconds(seconds):
  """H:MM:SS for a non-negative number of seconds."""
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


class Progress:
  """done/total, rate per second and time left, throttled, on stderr."""

  def __init__(self, total, desc, *, unit='', interval_s=10.0, stream=None,
               enabled=True, clock=time.monotonic):
    self.total = int(total) if total else 0
    self.desc = desc
    self.unit = unit
    self.interval_s = float(interval_s)
    self.stream = stream if stream is not None else sys.stderr
    self.enabled = enabled
    self._clock = clock
    self.done = 0
    self._start = clock()
    self._last = None  # Time of the last printed line.
    self._tty = bool(getattr(self.stream, 'isatty', lambda: False)())
    self._closed = False
    self._printed = -1  # `done` at the last printed line; -1: none yet.
    self._first = None  # (time, done) at the first update.

  def line(self):
    """The current progress text (no newline)."""
    now = self._clock()
    elapsed = max(now - self._start, 1e-9)
    finished = self.done >= self.total > 0 or self._closed
    # The rate counts from the first update on: the first item often holds
    # a one-off cost (jit compilation, opening files) that would make the
    # time left look far too long.
    rate = None
    if self._first is not None and self.done > self._first[1] and (
        now > self._first[0]):
      rate = (self.done - self._first[1]) / (now - self._first[0])
    elif finished:
      rate = self.done / elapsed
    unit = f' {self.unit}' if self.unit else ''
    if self.total:
      pct = 100.0 * self.done / self.total
      text = f'{self.desc}: {self.done}/{self.total}{unit} ({pct:.0f}%)'
    else:
      text = f'{self.desc}: {self.done}{unit}'
    if rate is not None:
      text += f'  {rate:.3g}/s'
    if finished:
      text += f'  {format_seconds(elapsed)} total'
    elif self.total and rate:
      text += f'  {format_seconds((self.total - self.done) / rate)} left'
    return text

  def update(self, n=1):
    """Adds n done items; prints if interval_s passed since the last line."""
    self.done += n
    now = self._clock()
    if self._first is None:
      self._first = (now, self.done)
    if self._last is None:
      # The first line waits one interval too: short steps print nothing
      # until they finish.
      self._last = self._start
    if now - self._last >= self.interval_s:
      self._print()
      self._last = now

  def close(self, always=False):
    """Prints the final line, if a progress line was printed before (a step
    shorter than interval_s stays silent) or `always`; once."""
    if self._closed:
      return
    self._closed = True
    if (self._printed >= 0 or always) and self._printed != self.done:
      self._print(final=True)
    elif self._tty and self._printed >= 0:
      self.stream.write('\n')

  def _print(self, final=False):
    if not self.enabled:
      return
    self._printed = self.done
    if self._tty:
      self.stream.write('\r' + self.line() + ('\n' if final else ''))
    else:
      self.stream.write(self.line() + '\n')
    self.stream.flush()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if exc[0] is None:
      self.close()
    elif self._tty and self._printed >= 0:
      self.stream.write('\n')
    return False


# ------------------------------------------------------------ quiet logs --

# Libraries whose warnings are noise for a user (TFDS: "Using custom data
# configuration", deprecations); their errors still show.
_WARNING_NOISE = ('tensorflow_datasets', 'tensorflow', 'orbax', 'absl',
                  'jax')
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _is_ours(pathname):
  path = os.path.abspath(pathname or '')
  return (path.startswith(_PROJECT_ROOT + os.sep)
          and os.sep + 'site-packages' + os.sep not in path)


class _QuietFilter(logging.Filter):
  """Keeps the project's INFO lines and everyone's errors; drops third-party
  INFO (orbax saves, TFDS readers) and library warnings."""

  def filter(self, record):
    if _is_ours(record.pathname):
      return True
    if record.levelno >= logging.ERROR:
      return True
    if record.levelno >= logging.WARNING:
      return not any(f'{os.sep}{lib}{os.sep}' in record.pathname
                     for lib in _WARNING_NOISE)
    return False


class _PlainFormatter(logging.Formatter):
  """The message alone; warnings and errors say so."""

  def format(self, record):
    text = super().format(record)
    if record.levelno >= logging.WARNING:
      text = f'{record.levelname.lower()}: {text}'
    return text


def quiet_logs():
  """The default console log: project lines as plain text, third-party INFO
  and progress bars off. main.py calls it unless --verbosity or --verbose is
  given. Idempotent."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _QuietFilter) for f in handler.filters):
    handler.addFilter(_QuietFilter())
  handler.setFormatter(_PlainFormatter('%(message)s'))
  absl_logging.set_verbosity(absl_logging.INFO)
  try:  # TFDS' tqdm bars ("Generating splits...", "Shuffling ...").
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()
  except ImportError:
    pass


# TensorFlow imports Keras' optimizers at its own import whenever Keras is
# installed (to register them for SavedModel), 1.5-2 s per process; we use
# tf.data only. An import that fails is skipped by TensorFlow, and Keras
# still imports normally afterwards (the tests' Keras comparisons do).
_KERAS_EAGER_IMPORT = 'keras.src.optimizers'


def import_tensorflow():
  """Imports and returns tensorflow without its eager Keras import. The
  library imports TensorFlow only through here (or the quiet variant
  below): whichever module imports it first decides what it costs."""
  block = _KERAS_EAGER_IMPORT not in sys.modules
  if block:
    sys.modules[_KERAS_EAGER_IMPORT] = None  # Makes its import fail at once.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  finally:
    if block and sys.modules.get(_KERAS_EAGER_IMPORT, 0) is None:
      del sys.modules[_KERAS_EAGER_IMPORT]
  return tf


def import_tensorflow_quietly(quiet=True):
  """Imports and returns tensorflow (without Keras). Its C++ code prints
  INFO lines (oneDNN, CPU features) while it is imported, before any log
  level applies; with `quiet` they go to /dev/null (stderr's file
  descriptor is redirected for the import only)."""
  if not quiet or 'tensorflow' in sys.modules:
    return import_tensorflow()
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    tf = import_tensorflow()
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
  return tf
