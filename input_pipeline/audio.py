"""Speech decoding and the log-mel representation (SPEC §1).

Every clip becomes a (num_frames, n_mels, 1) float32 array, time first,
holding log-mel dB (ref=max, top_db=80) mapped to [0, 1] by (dB + 80) / 80, so
0 is silence. The same functions serve the dataset build, `preprocess_pair` and
the explanation step (which re-decodes the clip to play segments back).
"""

import functools
import os

import librosa
import numpy as np
import soundfile as sf

from input_pipeline.errors import UserError

TOP_DB = 80.0  # Dynamic range kept by power_to_db; also the [0, 1] scale.


class AudioError(UserError, ValueError):
  """A clip that cannot be used; the message is the reason shown to users."""


def check_duration(input_config):
  """Raises unless duration_s yields exactly num_frames frames (centered STFT)."""
  c = input_config
  expected = (c.num_frames - 1) * c.hop_length / c.sample_rate
  if abs(c.duration_s - expected) > 0.5 / c.sample_rate:
    raise ValueError(
        f'config.input.duration_s={c.duration_s} does not give num_frames='
        f'{c.num_frames} frames: it must be (num_frames - 1) * hop_length / '
        f'sample_rate = {expected!r}.')


def num_samples(input_config):
  """Samples per clip after pad/crop."""
  c = input_config
  return (c.num_frames - 1) * c.hop_length


def decode_audio(path, sample_rate):
  """Reads a file, downmixes to mono and resamples; returns float32 samples.

  WAV/FLAC/OGG go through soundfile; anything soundfile cannot open (MP3) is
  tried with librosa's audioread fallback. Raises AudioError with a reason.
  """
  if not os.path.exists(path):
    raise AudioError('missing file')
  if os.path.getsize(path) == 0:
    raise AudioError('zero-length audio file')
  _check_riff_length(path)
  try:
    with sf.SoundFile(path) as f:
      sr = f.samplerate
      frames = f.frames
      data = f.read(dtype='float32', always_2d=True)
    if frames > 0 and data.shape[0] < frames:
      raise AudioError(
          f'truncated audio: header says {frames} frames, read {data.shape[0]}')
  except AudioError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if os.path.splitext(path)[1].lower() not in ('.mp3', '.m4a', '.aac'):
      raise AudioError(f'corrupt audio ({type(e).__name__}: {e})') from e
    try:  # MP3 and friends: decoders that audioread finds on this machine.
      data, sr = librosa.load(path, sr=None, mono=False)
      data = np.atleast_2d(data).T.astype(np.float32)
    except Exception as e2:  # pylint: disable=broad-except
      raise AudioError(f'undecodable audio ({type(e2).__name__}: {e2})') from e2
  if data.shape[0] == 0:
    raise AudioError('zero-length audio (no samples)')
  if not np.all(np.isfinite(data)):
    raise AudioError('non-finite audio samples (NaN or Inf)')
  wav = data.mean(axis=1)  # Downmix: average the channels.
  if sr != sample_rate:
    wav = librosa.resample(wav, orig_sr=sr, target_sr=sample_rate,
                           res_type='soxr_hq')
  return wav.astype(np.float32)


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


def load_waveform(path, input_config):
  """The clip exactly as the spectrogram sees it: decoded, padded/cropped."""
  check_duration(input_config)
  wav = decode_audio(path, input_config.sample_rate)
  return pad_or_crop(wav, num_samples(input_config))


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
