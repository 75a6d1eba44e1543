"""Speech decoding and the log-mel representation (PAPER.md, "Inputs").

Every clip becomes a (num_frames, n_mels, 1) float32 array, time first,
holding log-mel dB (ref=max, top_db=80) mapped to [0, 1] by (dB + 80) / 80, so
0 is silence. The same functions serve the dataset build, `preprocess_pair` and
the explanation step (which re-decodes the clip to play segments back).
"""

import functools
import os
import types

import librosa
import numpy as np
import soundfile as sf

from parallelnet.core.errors import UserError
from parallelnet.core.errors import UserValueError

TOP_DB = 80.0  # Dynamic range kept by power_to_db; also the [0, 1] scale.


class AudioError(UserError, ValueError):
  """A clip that cannot be used; the message is the reason shown to users."""


INPUT_KEYS = ('sample_rate', 'n_fft', 'hop_length', 'n_mels', 'num_frames',
              'duration_s')  # The config.input fields this module reads.


def input_settings(settings):
  """The input config this module reads, from any mapping holding
  INPUT_KEYS (a builder's settings, a teacher's input_spec)."""
  return types.SimpleNamespace(**{k: settings[k] for k in INPUT_KEYS})


def check_duration(input_config):
  """Raises unless duration_s yields exactly num_frames frames (centered STFT)."""
  c = input_config
  expected = (c.num_frames - 1) * c.hop_length / c.sample_rate
  if abs(c.duration_s - expected) > 0.5 / c.sample_rate:
    # The num_frames whose clip is nearest to the duration asked for.
    frames = max(1, round(c.duration_s * c.sample_rate / c.hop_length) + 1)
    seconds = (frames - 1) * c.hop_length / c.sample_rate
    raise UserValueError(
        f'config.input.duration_s={c.duration_s} does not give num_frames='
        f'{c.num_frames} frames: it must be (num_frames - 1) * hop_length / '
        f'sample_rate = {expected!r}. For clips of about {c.duration_s} s, '
        f'set --config.input.num_frames={frames} '
        f'--config.input.duration_s={seconds!r} (at hop_length='
        f'{c.hop_length}, sample_rate={c.sample_rate}); to keep '
        f'num_frames={c.num_frames}, set --config.input.duration_s='
        f'{expected!r}.')


def num_samples(input_config):
  """Samples per clip after pad/crop."""
  c = input_config
  return (c.num_frames - 1) * c.hop_length


# Source frames read past the kept span, per unit of ceil(source/target
# rate), so that soxr_hq's filter sees the same input as on the whole file:
# the first samples then equal the whole-file result to float rounding (at
# 1024 the difference measured <= 1e-7 from 8 kHz to 192 kHz sources; at 256
# it is up to 1e-3). tests/test_media.py checks it.
RESAMPLE_MARGIN = 1024
FITS = ('padded', 'cropped', 'exact')  # How a clip met duration_s.
TAIL = 8192  # Frames read at a long file's end to check that it is there.


def decode_audio(path, sample_rate, max_samples=None):
  """Reads a file, downmixes to mono and resamples; returns float32 samples.

  With `max_samples`, only the first max_samples samples (at sample_rate)
  are produced, and only the source frames they need (plus RESAMPLE_MARGIN)
  are read, so memory does not depend on the file's length.
  WAV/FLAC/OGG/MP3 go through soundfile; anything soundfile cannot open
  (e.g. M4A) is tried with librosa's audioread fallback. Raises AudioError.
  """
  return _decode(path, sample_rate, max_samples)[0]


def _source_frames(max_samples, sr, sample_rate):
  """Source frames to read for max_samples output samples (None: all)."""
  if max_samples is None:
    return None
  if sr == sample_rate:
    return max_samples
  return (-(-max_samples * sr // sample_rate) +
          RESAMPLE_MARGIN * -(-sr // sample_rate))


def _decode(path, sample_rate, max_samples):
  """(samples, length the whole file has at sample_rate)."""
  if not os.path.exists(path):
    raise AudioError('missing file')
  if os.path.getsize(path) == 0:
    raise AudioError('zero-length audio file')
  _check_riff_length(path)
  try:
    with sf.SoundFile(path) as f:
      sr, total = f.samplerate, f.frames
      want = _source_frames(max_samples, sr, sample_rate)
      if want is None or (total > 0 and want >= total):
        want = total if total > 0 else -1
      data = f.read(frames=want, dtype='float32', always_2d=True)
      expect = total if want < 0 else min(want, total)
      if total > 0 and data.shape[0] < expect:
        raise AudioError(f'truncated audio: header says {total} frames, '
                         f'read {data.shape[0]}')
      if total > data.shape[0]:  # The rest is not read: is its end there?
        try:  # The last TAIL frames (libsndfile's Vorbis seek is coarse).
          f.seek(max(total - TAIL, data.shape[0]))
          ok = f.read(TAIL, dtype='float32').shape[0] > 0
        except Exception:  # pylint: disable=broad-except
          ok = False
        if not ok:
          raise AudioError(f'truncated audio: header says {total} frames, '
                           'the file ends before that')
    full_length = -(-max(total, data.shape[0]) * sample_rate // sr)
  except AudioError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if os.path.splitext(path)[1].lower() not in ('.mp3', '.m4a', '.aac'):
      raise AudioError(f'corrupt audio ({type(e).__name__}: {e})') from e
    try:  # M4A and friends: decoders that audioread finds on this machine.
      duration = None
      if max_samples is not None:
        duration = (max_samples + 2 * RESAMPLE_MARGIN) / sample_rate
      data, sr = librosa.load(path, sr=None, mono=False, duration=duration)
      data = np.atleast_2d(data).T.astype(np.float32)
      # Only what was read is known: a file cut at `duration` counts as
      # longer than the clip.
      full_length = -(-data.shape[0] * sample_rate // sr)
    except Exception as e2:  # pylint: disable=broad-except
      raise AudioError(f'undecodable audio ({type(e2).__name__}: {e2})') from e2
  if data.shape[0] == 0:
    raise AudioError('zero-length audio (no samples)')
  if not np.all(np.isfinite(data)):
    raise AudioError('non-finite audio samples (NaN or Inf)')
  wav = data.mean(axis=1)  # Downmix: average the channels.
  del data
  if sr != sample_rate:
    wav = librosa.resample(wav, orig_sr=sr, target_sr=sample_rate,
                           res_type='soxr_hq')
  if max_samples is not None:
    wav = wav[:max_samples]
  return wav.astype(np.float32), full_length


def _check_riff_length(path):
  """Raises if a WAV's data chunk claims more bytes than the file holds.

  libsndfile quietly reads what is there, so a cut-off download would pass
  as a shorter clip; the RIFF header tells the length it should have.
  """
  with open(path, 'rb') as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] != b'RIFF' or head[8:12] != b'WAVE':
      return  # Not a RIFF WAV; soundfile judges it.
    size = os.path.getsize(path)
    pos = 12
    while pos + 8 <= size:
      f.seek(pos)
      chunk = f.read(8)
      n = int.from_bytes(chunk[4:8], 'little')
      if chunk[:4] == b'data':
        if n not in (0, 0xFFFFFFFF) and pos + 8 + n > size:
          raise AudioError(f'truncated audio: data chunk declares {n} bytes, '
                           f'file holds {size - pos - 8}')
        return
      pos += 8 + n + (n & 1)


def pad_or_crop(wav, length):
  """Zero-pads at the end or keeps the first `length` samples."""
  if wav.shape[0] >= length:
    return wav[:length]
  return np.pad(wav, (0, length - wav.shape[0]))


def decode_clip(path, input_config):
  """(clip, fit): the clip as the spectrogram sees it and how the file met
  duration_s: 'padded' (shorter, zeros appended), 'cropped' (longer, the
  first duration_s kept) or 'exact'. Reads only the span the clip keeps."""
  return decode_clip_and_length(path, input_config)[:2]


def decode_clip_and_length(path, input_config):
  """decode_clip plus the file's length in samples at the model's rate."""
  check_duration(input_config)
  n = num_samples(input_config)
  wav, full_length = _decode(path, input_config.sample_rate, n)
  fit = ('padded' if full_length < n else
         'cropped' if full_length > n else 'exact')
  return pad_or_crop(wav, n), fit, full_length


def fit_notice(path, file_samples, input_config):
  """One line telling a user how their file met the model's clip length, or
  None when it fits: a longer file is cut to its first duration_s (the rest
  is neither classified nor explained), a shorter one padded with silence.
  `file_samples` is decode_clip_and_length's length (at the model's rate)."""
  n = num_samples(input_config)
  if file_samples == n:
    return None
  sr = input_config.sample_rate
  have, clip = file_samples / sr, n / sr
  if file_samples > n:
    return (f'audio {path} is {have:.2f} s long; the model hears its first '
            f'{clip:.2f} s (config.input.duration_s), the rest is not used.')
  return (f'audio {path} is {have:.2f} s long, shorter than the model\'s '
          f'{clip:.2f} s clip: silence fills the remaining '
          f'{clip - have:.2f} s.')


def load_waveform(path, input_config):
  """The clip exactly as the spectrogram sees it: decoded, padded/cropped."""
  return decode_clip(path, input_config)[0]


def log_mel(wav, input_config):
  """(num_frames, n_mels, 1) float32 in [0, 1] from a padded/cropped clip."""
  c = input_config
  # Same as librosa.feature.melspectrogram(y=wav, sr, n_fft, hop_length,
  # n_mels) (the tests check it), but with a cached mel basis and a BLAS
  # matmul: librosa's einsum path costs ~45 ms a clip on numpy 2, which
  # would dominate the build.
  power = np.abs(librosa.stft(wav, n_fft=c.n_fft, hop_length=c.hop_length,
                              center=True, pad_mode='constant')) ** 2
  mel = np.dot(_mel_basis(c.sample_rate, c.n_fft, c.n_mels), power)
  if not np.any(mel > 0):  # All-silent clip: define it as silence, 0.
    return np.zeros((c.num_frames, c.n_mels, 1), np.float32)
  db = librosa.power_to_db(mel, ref=np.max, top_db=TOP_DB)
  spec = ((db + TOP_DB) / TOP_DB).T[:, :, None].astype(np.float32)
  if spec.shape[0] != c.num_frames:
    raise AssertionError(f'{spec.shape[0]} frames != num_frames {c.num_frames}')
  return spec


@functools.lru_cache(maxsize=8)
def _mel_basis(sample_rate, n_fft, n_mels):
  return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)


def load_spectrogram(path, input_config):
  """Decode + pad/crop + log-mel; returns (spectrogram, waveform)."""
  wav = load_waveform(path, input_config)
  return log_mel(wav, input_config), wav


def warm_up(settings):
  """Runs log-mel and resampling once: librosa loads its parts lazily on
  first use, which should happen before forking workers or timing rows."""
  ic = input_settings(settings)
  log_mel(np.random.default_rng(0).standard_normal(
      num_samples(ic)).astype(np.float32), ic)
  librosa.resample(np.zeros(1000, np.float32), orig_sr=44100,
                   target_sr=ic.sample_rate, res_type='soxr_hq')
