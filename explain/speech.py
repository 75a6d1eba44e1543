"""From a speech attribution map to the speech that mattered (paper §3.3).

The paper averages the speech Shapley values over frequency to one importance
per time step, zeroes the segments under the 30th percentile and keeps the
rest as audio (which it then transcribes). Here (PAPER.md, "DnCShap"):

1. `frame_importance`: the (T, F) speech map averaged over frequency.
2. `keep_frames`: frames whose importance is strictly below the
   `keep_percentile`-th percentile (numpy's linear interpolation) are dropped.
   Frame importance is constant across each leaf's time span (2**ceil(depth/2)
   time bands), so ties are the rule: a band is dropped whole or kept whole.
   At depth 4 (four bands of 25%) the lowest band goes; at depth 2 (two bands
   of 50%) the percentile falls inside the lowest band and nothing is dropped.
3. Frames map to samples of the original waveform. The spectrogram is a
   centred STFT (librosa's default), so frame t's window is centred on sample
   t * hop. We give frame t the hop-centred range
   [t * hop - hop // 2, t * hop - hop // 2 + hop), clipped to the clip: these
   ranges tile the waveform without overlap, so every sample belongs to
   exactly one frame (the full n_fft window would make neighbours overlap).
4. Adjacent kept frames merge into segments (start, end) in seconds.
5. The kept speech is the original waveform with the dropped samples set to
   zero (same length, so it stays aligned with the clip and the figure; the
   paper also 'reduces to zero'), optionally written as a WAV.
6. An optional `transcriber(waveform, sample_rate) -> str` is applied to the
   kept audio. None is bundled: no recogniser can be downloaded here.
"""

import dataclasses
import io
from typing import Callable, Optional

import numpy as np
import soundfile as sf

from parallelnet.core import paths

# transcriber(kept_waveform, sample_rate) -> text; none is bundled.
Transcriber = Callable[[np.ndarray, int], str]


@dataclasses.dataclass(frozen=True)
class SpeechExplanation:
  """The speech part of an explanation, in the waveform's time base."""
  frame_importance: np.ndarray  # (T,) speech map averaged over frequency.
  keep: np.ndarray  # (T,) bool, frames at or above the percentile.
  threshold: float  # The percentile value used as the cut.
  segments: np.ndarray  # (K, 2) float seconds, merged kept frames.
  kept_waveform: np.ndarray  # Original waveform, dropped samples zeroed.
  transcript: Optional[str] = None  # transcriber(kept audio), if given.


def frame_importance(speech_map) -> np.ndarray:
  """(T, F) or (T, F, 1) speech map -> (T,) mean over frequency."""
  m = np.asarray(speech_map, np.float64)
  if m.ndim == 3 and m.shape[-1] == 1:
    m = m[..., 0]
  if m.ndim != 2:
    raise ValueError(f'speech_map must have shape (T, F); got {m.shape}.')
  return m.mean(axis=1)


def keep_frames(importance, keep_percentile: float):
  """Frames kept: importance >= the given percentile. Returns (keep, cut)."""
  if not 0.0 <= keep_percentile <= 100.0:
    raise ValueError(f'keep_percentile must be in [0, 100]; got '
                     f'{keep_percentile}.')
  importance = np.asarray(importance, np.float64)
  cut = float(np.percentile(importance, keep_percentile))
  return importance >= cut, cut


def frame_sample_ranges(num_frames: int, hop_length: int,
                        num_samples: int) -> np.ndarray:
  """(T, 2) int half-open sample ranges, hop-centred on t * hop, clipped."""
  if hop_length < 1:
    raise ValueError(f'hop_length must be >= 1; got {hop_length}.')
  start = np.arange(num_frames) * hop_length - hop_length // 2
  ranges = np.stack([start, start + hop_length], axis=1)
  return np.clip(ranges, 0, num_samples)


def kept_segments(keep, hop_length: int, sample_rate: int,
                  num_samples: int) -> np.ndarray:
  """(K, 2) seconds: runs of adjacent kept frames, as sample-range spans."""
  keep = np.asarray(keep, bool)
  ranges = frame_sample_ranges(keep.shape[0], hop_length, num_samples)
  edges = np.diff(np.concatenate([[0], keep.astype(np.int8), [0]]))
  starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
  spans = [(ranges[s, 0], ranges[e, 1]) for s, e in zip(starts, ends)
           if ranges[e, 1] > ranges[s, 0]]  # Frames clipped away are empty.
  return np.asarray(spans, np.float64).reshape(-1, 2) / sample_rate


def keep_mask_samples(keep, hop_length: int, num_samples: int) -> np.ndarray:
  """(num_samples,) bool: samples covered by a kept frame."""
  keep = np.asarray(keep, bool)
  ranges = frame_sample_ranges(keep.shape[0], hop_length, num_samples)
  mask = np.zeros(num_samples, bool)
  for (a, b), k in zip(ranges, keep):
    if k:
      mask[a:b] = True
  return mask


def write_wav(path, waveform, sample_rate: int):
  """A 16-bit PCM WAV at `path` (local or URL), written atomically."""
  buf = io.BytesIO()
  sf.write(buf, np.asarray(waveform, np.float32), sample_rate, format='WAV',
           subtype='PCM_16')
  paths.write_bytes_atomic(path, buf.getvalue())


def explain_speech(speech_map, waveform, *, hop_length: int, sample_rate: int,
                   keep_percentile: float = 30.0,
                   wav_path: Optional[str] = None,
                   clip_wav_path: Optional[str] = None,
                   transcriber: Optional[Transcriber] = None
                   ) -> SpeechExplanation:
  """Frame importance, the percentile cut, kept segments and kept audio.

  Args:
    speech_map: (T, F) per-pixel speech attribution (time first).
    waveform: (num_samples,) the clip the spectrogram was computed from.
    hop_length, sample_rate: the STFT hop and rate (config.input).
    keep_percentile: frames strictly under this percentile are dropped.
    wav_path: if given, the kept audio is written there (16-bit PCM WAV).
    clip_wav_path: if given, the whole clip is written there, to hear
      beside the kept audio (the run report plays both).
    transcriber: optional `fn(kept_waveform, sample_rate) -> str`.
  """
  waveform = np.asarray(waveform, np.float32)
  if waveform.ndim != 1:
    raise ValueError(f'waveform must be 1-D (mono samples); got shape '
                     f'{waveform.shape}.')
  importance = frame_importance(speech_map)
  keep, cut = keep_frames(importance, keep_percentile)
  mask = keep_mask_samples(keep, hop_length, waveform.shape[0])
  kept = np.where(mask, waveform, 0.0).astype(np.float32)
  if wav_path is not None:
    write_wav(wav_path, kept, sample_rate)
  if clip_wav_path is not None:
    write_wav(clip_wav_path, waveform, sample_rate)
  transcript = transcriber(kept, sample_rate) if transcriber else None
  return SpeechExplanation(
      frame_importance=importance.astype(np.float32),
      keep=keep,
      threshold=cut,
      segments=kept_segments(keep, hop_length, sample_rate,
                             waveform.shape[0]),
      kept_waveform=kept,
      transcript=transcript)
