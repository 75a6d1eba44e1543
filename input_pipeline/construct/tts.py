"""Text to speech: espeak-ng, or any engine run as a command template.

An engine object has `describe()`, `check()` (a UserError when it cannot
run) and `synthesize(text, out_path)`, which writes a complete 16-bit mono
WAV at `out_path` or raises TTSError; it is picklable (worker processes run
it).
"""

import dataclasses
import os
import shlex
import shutil
import subprocess
import tempfile
import time

import numpy as np
import soundfile as sf
import soxr

from parallelnet.core import paths
from parallelnet.core.errors import UserError


class TTSError(Exception):
  """One text the engine could not speak; the message is the reason."""


def _finish_engine_output(raw_path, out_path, sample_rate):
  """Reads what the engine wrote, checks it, writes the final WAV.

  Mono, 16-bit, resampled to `sample_rate` when given (soxr 'HQ', which is
  librosa.resample(res_type='soxr_hq')). Raises TTSError when the output is
  missing or empty.
  """
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
    wav = soxr.resample(wav, sr, sample_rate, quality='HQ').astype(np.float32)
    sr = sample_rate
  with paths.atomic_open(out_path, 'wb') as f:
    sf.write(f, np.clip(wav, -1.0, 1.0), sr, subtype='PCM_16', format='WAV')


class Stopped(Exception):
  """The build stopped (stop_on's event) while a TTS command ran."""


_stop_event = None  # Set by stop_on in the row workers (workers.py).


def stop_on(event):
  """A running TTS command is killed once `event` (a multiprocessing.Event,
  or None: never) is set: a build stopped early ends the commands in flight
  instead of leaving them writing into its folder afterwards."""
  global _stop_event
  _stop_event = event


def stopping() -> bool:
  """Whether stop_on's event is set (the build stopped early)."""
  return _stop_event is not None and _stop_event.is_set()


def _run(cmd, timeout):
  # subprocess.run, polling the stop event while the command runs (run()
  # can only wait for the command or its timeout).
  try:
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
  except OSError as e:
    raise TTSError(f'the TTS command could not start ({e})') from e
  deadline = time.monotonic() + timeout
  with p:
    try:
      while True:
        try:
          stdout, stderr = p.communicate(timeout=0.1)
          break
        except subprocess.TimeoutExpired:
          if stopping():
            raise Stopped() from None
          if time.monotonic() > deadline:
            raise TTSError(f'the TTS command timed out after {timeout} s'
                           ) from None
    except BaseException:  # Stopped, timed out, Ctrl-C: the command ends too.
      p.kill()
      p.communicate()
      raise
  if p.returncode != 0:
    err = (stderr or stdout or '').strip().splitlines()
    raise TTSError(f'the TTS command failed (exit {p.returncode}'
                   f'{": " + err[-1] if err else ""})')


def _synthesize_with(make_argv, text, out_path, sample_rate, timeout):
  """Runs a TTS command and writes its output as the final WAV `out_path`.

  The text goes to a temporary UTF-8 file; `make_argv(raw, text_file)` gives
  the command, which must write the WAV `raw`. Both temporaries (next to
  `out_path`) are removed whatever happens.
  """
  raw = paths.tmp_name(out_path) + '.raw.wav'
  text_file = paths.tmp_name(out_path) + '.txt'
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
