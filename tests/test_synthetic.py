"""Tests of the synthetic_sier demo corpus: class mix, determinism, and the
planted cues lying where the manifest says they are."""

import csv
import os

import librosa
import numpy as np
from PIL import Image
import pytest

from configs import parallelnet
from input_pipeline import synthetic

CLASSES = parallelnet.EMOTIONS


def _generate(folder, n=24, seed=0, size=48, sr=8000, duration=31 * 256 / 8000):
  synthetic.generate_corpus(str(folder), num_examples=n, seed=seed,
                            classes=CLASSES, image_size=size, sample_rate=sr,
                            duration_s=duration)
  with open(os.path.join(folder, 'manifest.csv')) as f:
    return list(csv.DictReader(f))


def test_class_mix_and_cue_noise():
  counts = synthetic.class_counts(2000, CLASSES)
  assert sum(counts.values()) == 2000
  for c, p in synthetic.CLASS_MIX.items():
    assert abs(counts[c] / 2000 - p) <= 1 / 2000 + 1e-9  # mix sums to 99.9%
  labels, a, b = synthetic.plan(2000, 0, CLASSES, cue_noise=0.03)
  assert {c: int(np.sum(labels == c)) for c in CLASSES} == counts
  clean_a = np.array([synthetic.IMAGE_CUE[c] for c in labels])
  clean_b = np.array([synthetic.SPEECH_CUE[c] for c in labels])
  assert 0.015 < np.mean(a != clean_a) < 0.045
  assert 0.015 < np.mean(b != clean_b) < 0.045


def test_cue_codes_are_complementary():
  # Each (image cue, speech cue) pair names exactly one class ...
  pairs = {(synthetic.IMAGE_CUE[c], synthetic.SPEECH_CUE[c]) for c in CLASSES}
  assert len(pairs) == 4
  # ... while each modality alone is capped well below the fused ceiling.
  ceil = synthetic.ceilings(cue_noise=0.0)
  assert ceil['image'] == pytest.approx(0.531 + 0.168, abs=2e-3)
  assert ceil['speech'] == pytest.approx(0.531 + 0.246, abs=2e-3)
  assert ceil['fused'] == pytest.approx(1.0)
  noisy = synthetic.ceilings()  # The generator's default cue noise.
  assert noisy['fused'] - max(noisy['image'], noisy['speech']) > 0.15


def test_generation_is_deterministic_from_the_seed(tmp_path):
  a = _generate(tmp_path / 'a', n=6, seed=3)
  b = _generate(tmp_path / 'b', n=6, seed=3)
  c = _generate(tmp_path / 'c', n=6, seed=4)
  assert a == b and a != c
  for row in a:
    for col in ('image', 'audio'):
      assert ((tmp_path / 'a' / row[col]).read_bytes() ==
              (tmp_path / 'b' / row[col]).read_bytes())


def test_an_interrupted_rebuild_leaves_no_marker(tmp_path, monkeypatch):
  """corpus.json says which corpus the folder holds: a build that stops
  part-way leaves none, so neither corpus is read back half-written."""
  first = _generate(tmp_path / 'a', n=6, seed=3)

  def stop(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(synthetic.json, 'dump', stop)
  with pytest.raises(KeyboardInterrupt):
    _generate(tmp_path / 'a', n=6, seed=4)  # Files of seed 4 written.
  monkeypatch.undo()
  assert not (tmp_path / 'a' / 'corpus.json').exists()
  assert not [p for p in os.listdir(tmp_path / 'a') if '.tmp' in p]
  assert _generate(tmp_path / 'a', n=6, seed=3) == first  # Built again.
  assert _generate(tmp_path / 'b', n=6, seed=4) != first


def test_image_cue_box_holds_the_cue(tmp_path):
  rows = _generate(tmp_path, n=24, size=48)
  for row in rows:
    img = np.asarray(Image.open(tmp_path / row['image'])).astype(int)
    assert img.std() > 10  # Textured, not a flat field.
    y0, x0, y1, x1 = map(int, row['image_cue_box'].split())
    warm = (img[..., 0] - img[..., 2]) > 100
    cold = (img[..., 2] - img[..., 0]) > 100
    cue, other = (warm, cold) if row['image_cue'] == '1' else (cold, warm)
    inside = np.zeros(cue.shape, bool)
    inside[y0:y1, x0:x1] = True
    assert cue[inside].mean() > 0.5  # The disc fills most of its box ...
    assert cue[~inside].sum() == 0  # ... and the cue colour is nowhere else.
    assert other.sum() == 0


def _f0_track(wav, sr):
  """Median-able f0 per frame, and a voiced (loud) mask."""
  f0 = librosa.yin(wav, fmin=60, fmax=600, sr=sr, frame_length=512,
                   hop_length=64)
  rms = librosa.feature.rms(y=wav, frame_length=512, hop_length=64)[0]
  times = librosa.frames_to_time(np.arange(f0.size), sr=sr, hop_length=64)
  return f0, rms > 0.1 * rms.max(), times


def test_speech_cue_span_holds_the_prosody(tmp_path):
  sr = 8000
  rows = _generate(tmp_path, n=16, sr=sr, duration=2.0)
  for row in rows:
    wav, got_sr = librosa.load(tmp_path / row['audio'], sr=None)
    assert got_sr == sr and wav.size == 2 * sr
    t0, t1 = map(float, row['speech_cue_span'].split())
    assert 0 <= t0 < t1 <= 2.0 and t1 - t0 == pytest.approx(0.6, abs=1e-3)
    f0, voiced, times = _f0_track(wav, sr)
    inside = (times > t0 + 0.03) & (times < t1 - 0.03) & voiced
    outside = ((times < t0 - 0.03) | (times > t1 + 0.03)) & voiced
    f_in = np.median(f0[inside])
    if row['speech_cue'] == '1':
      assert f_in > 270, row  # High pitch in the span.
    else:
      assert f_in < 125, row  # Low pitch in the span.
    if outside.sum() > 10:
      assert 140 < np.median(f0[outside]) < 235, row  # Neutral elsewhere.
    # Speech-like: syllables with pauses, not a steady tone.
    env = librosa.feature.rms(y=wav, frame_length=128, hop_length=64)[0]
    assert 0.05 < np.mean(env < 0.1 * env.max()) < 0.6


def test_side_cue_box_lies_in_its_half_and_the_mix_is_unchanged(tmp_path):
  colour = _generate(tmp_path / 'colour', n=24, size=48)
  synthetic.generate_corpus(str(tmp_path / 'side'), num_examples=24, seed=0,
                            classes=CLASSES, image_size=48, sample_rate=8000,
                            duration_s=31 * 256 / 8000, image_cue='side')
  with open(tmp_path / 'side' / 'manifest.csv') as f:
    side = list(csv.DictReader(f))
  # Same labels, cue bits and speech in the same order; only the image moves.
  for key in ('id', 'label', 'image_cue', 'speech_cue', 'speech_cue_span'):
    assert [r[key] for r in side] == [r[key] for r in colour]
  assert {r['image_cue'] for r in side} == {'0', '1'}
  for row in side:
    img = np.asarray(Image.open(tmp_path / 'side' / row['image'])).astype(int)
    y0, x0, y1, x1 = map(int, row['image_cue_box'].split())
    if row['image_cue'] == '1':
      assert x0 >= 24  # Right half.
    else:
      assert x1 <= 24  # Left half.
    warm = (img[..., 0] - img[..., 2]) > 100
    inside = np.zeros(warm.shape, bool)
    inside[y0:y1, x0:x1] = True
    assert warm[inside].mean() > 0.5 and warm[~inside].sum() == 0
    assert ((img[..., 2] - img[..., 0]) > 100).sum() == 0  # Never cold.
  assert (tmp_path / 'side' / 'audio' / 'syn00003.wav').read_bytes() == (
      tmp_path / 'colour' / 'audio' / 'syn00003.wav').read_bytes()


def test_side_corpus_gets_its_own_build_and_the_default_keeps_its_name():
  from configs import demo  # pylint: disable=g-import-not-at-top
  from input_pipeline import builders  # pylint: disable=g-import-not-at-top
  c = demo.get_config()
  default = builders.settings_name(builders.settings_from_config(c),
                                   CLASSES)
  assert default == ('sr8000_fft512_hop256_mel32_t32_img32_k5_val0p1_'
                     'test0p3_n1500_seed0')  # As before the option existed.
  c.dataset.image_cue = 'side'
  settings = builders.settings_from_config(c)
  assert builders.settings_name(settings, CLASSES) == default + '_cueside'
  c.dataset.image_cue = 'shape'
  with pytest.raises(ValueError, match='config.dataset.image_cue'):
    builders.settings_from_config(c)
