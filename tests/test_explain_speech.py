"""Tests of explain/speech.py: frames -> segments -> kept audio."""

import numpy as np
import pytest
import soundfile as sf

from explain import speech

HOP = 64
SR = 8000
T, F = 32, 8
NUM_SAMPLES = (T - 1) * HOP  # Centred STFT of this many samples: T frames.


def _noise(n, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.uniform(0.1, 0.9, n) * rng.choice([-1, 1], n)).astype(
      np.float32)


def test_frame_ranges_tile_the_waveform_centred_on_the_frames():
  ranges = speech.frame_sample_ranges(T, HOP, NUM_SAMPLES)
  assert ranges[0, 0] == 0 and ranges[-1, 1] == NUM_SAMPLES
  np.testing.assert_array_equal(ranges[1:, 0], ranges[:-1, 1])  # No gaps.
  centres = np.arange(1, T - 1) * HOP
  assert np.all((ranges[1:-1, 0] <= centres) & (centres < ranges[1:-1, 1]))


def test_percentile_cut_and_frequency_average():
  rng = np.random.default_rng(1)
  speech_map = rng.normal(size=(T, F))
  importance = speech.frame_importance(speech_map)
  np.testing.assert_allclose(importance, speech_map.mean(1))
  keep, cut = speech.keep_frames(importance, 30.0)
  assert keep.sum() == T - int(np.floor(0.3 * (T - 1))) - 1  # Distinct values.
  assert np.all(importance[~keep] < cut) and np.all(importance[keep] >= cut)


def test_segments_and_wav_line_up_with_frame_importance(tmp_path):
  # Frames 0-4 and 20-31 important, 5-19 not (with varied values inside).
  importance = np.full(T, -1.0)
  importance[:5] = 2.0
  importance[20:] = np.linspace(1.0, 3.0, T - 20)
  importance[5:20] = np.linspace(-3.0, -1.0, 15)
  speech_map = np.repeat(importance[:, None], F, axis=1)
  waveform = _noise(NUM_SAMPLES)
  path = tmp_path / 'kept.wav'
  out = speech.explain_speech(speech_map, waveform, hop_length=HOP,
                              sample_rate=SR, keep_percentile=30.0,
                              wav_path=str(path))
  # The 30th percentile sits at rank 0.3 * 31 = 9.3, between the 10th and
  # 11th lowest: the 10 lowest frames (5..14) go, 15..19 stay.
  expected_keep = np.ones(T, bool)
  expected_keep[5:15] = False
  np.testing.assert_array_equal(out.keep, expected_keep)
  # One segment per run of kept frames, in seconds on the waveform.
  ranges = speech.frame_sample_ranges(T, HOP, NUM_SAMPLES)
  np.testing.assert_allclose(
      out.segments,
      np.array([[0, ranges[4, 1]], [ranges[15, 0], NUM_SAMPLES]]) / SR)
  # Kept audio: non-zero exactly on the kept frames' samples, equal there.
  inside = np.zeros(NUM_SAMPLES, bool)
  for (a, b), k in zip(ranges, expected_keep):
    inside[a:b] |= k
  np.testing.assert_array_equal(out.kept_waveform != 0, inside)
  np.testing.assert_array_equal(out.kept_waveform[inside], waveform[inside])
  # The WAV holds the same audio (16-bit PCM round-off).
  data, rate = sf.read(str(path), dtype='float32')
  assert rate == SR and data.shape == (NUM_SAMPLES,)
  np.testing.assert_array_equal(data != 0, inside)
  np.testing.assert_allclose(data, out.kept_waveform, atol=1 / 2**15)


def test_transcriber_hook_gets_the_kept_audio():
  seen = {}

  def transcriber(wav, rate):
    seen['wav'], seen['rate'] = wav, rate
    return 'hello'

  importance = np.arange(T, dtype=np.float64)
  out = speech.explain_speech(np.repeat(importance[:, None], F, 1),
                              _noise(NUM_SAMPLES), hop_length=HOP,
                              sample_rate=SR, transcriber=transcriber)
  assert out.transcript == 'hello' and seen['rate'] == SR
  np.testing.assert_array_equal(seen['wav'], out.kept_waveform)


def test_bad_inputs():
  with pytest.raises(ValueError, match='speech_map must have shape'):
    speech.frame_importance(np.zeros((2, 3, 4)))
  with pytest.raises(ValueError, match='keep_percentile'):
    speech.keep_frames(np.zeros(4), 130)
  with pytest.raises(ValueError, match='waveform must be 1-D'):
    speech.explain_speech(np.zeros((T, F)), np.zeros((10, 2)), hop_length=HOP,
                          sample_rate=SR)


@pytest.mark.parametrize('bands,dropped', [(2, 0), (4, T // 4)])
def test_band_constant_importance_is_cut_whole_bands(bands, dropped):
  """DnCShap frame importance is constant per leaf time band (ties)."""
  importance = np.repeat(np.arange(bands, dtype=np.float64), T // bands)
  keep, _ = speech.keep_frames(importance, 30.0)
  assert (~keep).sum() == dropped
  assert np.all(~keep[:dropped])  # The lowest band, whole.
