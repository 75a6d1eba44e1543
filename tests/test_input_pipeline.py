"""Tests of input_pipeline: decoding, log-mel, manifest checks, splits,
TFDS builds, sharding, padding. Tiny corpora, runlocal sizes, tmp dirs."""

import collections
import csv
import os

import numpy as np
from PIL import Image
import pytest
import soundfile as sf
import librosa

from configs import parallelnet
from input_pipeline import audio as audio_lib
from input_pipeline import image as image_lib
from input_pipeline import manifest as manifest_lib

CLASSES = parallelnet.EMOTIONS


def _config(tmp, name='iitr_sier', manual_dir='', size=40, skip_bad=False):
  c = parallelnet.get_config('runlocal')
  c.dataset.name = name
  c.dataset.data_dir = str(tmp / 'tfds')
  c.dataset.manual_dir = str(manual_dir)
  c.dataset.synthetic_size = size
  c.dataset.skip_bad = skip_bad
  return c


def _tone(sr, seconds, f=440.0, channels=1):
  t = np.arange(int(sr * seconds)) / sr
  x = 0.5 * np.sin(2 * np.pi * f * t) * np.linspace(0.2, 1, t.size)
  if channels == 2:
    return np.stack([x, 0.5 * x], 1).astype(np.float32)
  return x.astype(np.float32)


def _image(path, mode='RGB', size=(40, 40)):
  rng = np.random.default_rng(len(str(path)))
  arr = rng.integers(0, 255, (size[1], size[0], 4), dtype=np.uint8)
  im = Image.fromarray(arr, 'RGBA').convert(mode)
  im.save(path)


def _write_manifest(folder, rows, extra=()):
  with open(os.path.join(folder, 'manifest.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['id', 'image', 'audio', 'label', *extra])
    w.writerows(rows)


# --- Audio and image decoding -----------------------------------------------


def test_log_mel_matches_librosa_on_the_same_file(tmp_path):
  c = parallelnet.get_config('runlocal').input
  path = str(tmp_path / 'a.wav')
  sf.write(path, _tone(c.sample_rate, 0.7), c.sample_rate, subtype='FLOAT')
  spec, wav = audio_lib.load_spectrogram(path, c)
  assert spec.shape == (c.num_frames, c.n_mels, 1)
  # librosa directly: same file, same pad to duration_s, same dB mapping.
  y, sr = librosa.load(path, sr=None)
  y = np.pad(y, (0, int(round(c.duration_s * sr)) - y.size))
  mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=c.n_fft,
                                       hop_length=c.hop_length, n_mels=c.n_mels)
  ref = (librosa.power_to_db(mel, ref=np.max, top_db=80) + 80) / 80
  np.testing.assert_allclose(spec[:, :, 0], ref.T, atol=1e-5)
  assert spec.min() >= 0 and spec.max() == pytest.approx(1.0)
  assert wav.shape == (audio_lib.num_samples(c),)


def test_resampling_and_stereo_downmix(tmp_path):
  c = parallelnet.get_config('runlocal').input  # 8 kHz
  path = str(tmp_path / 's.wav')
  x = _tone(44100, 0.5, f=440.0, channels=2)  # right = half of left
  sf.write(path, x, 44100)
  wav = audio_lib.decode_audio(path, c.sample_rate)
  expected = librosa.resample(x.mean(1), orig_sr=44100, target_sr=8000,
                              res_type='soxr_hq')
  assert wav.shape == (4000,)
  np.testing.assert_allclose(wav, expected, atol=1e-4)
  # The tone is still at 440 Hz and has 0.75 of the left channel's level.
  spectrum = np.abs(np.fft.rfft(wav))
  assert np.argmax(spectrum) * 8000 / wav.size == pytest.approx(440, abs=4)
  assert np.abs(wav).max() == pytest.approx(0.75 * 0.5, rel=0.05)


def test_duration_must_give_num_frames():
  c = parallelnet.get_config('runlocal')
  c.input.duration_s = 1.0
  with pytest.raises(ValueError, match='duration_s'):
    audio_lib.check_duration(c.input)


def test_caffe_scaling_matches_keras_and_inverts():
  from keras.applications import vgg16  # pylint: disable=g-import-not-at-top
  img = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3)).astype(np.uint8)
  ours = image_lib.scale_image(img, 'caffe')
  np.testing.assert_allclose(ours, vgg16.preprocess_input(
      img.astype(np.float32)), atol=1e-4)
  np.testing.assert_allclose(image_lib.unscale_image(ours, 'caffe'),
                             img / 255.0, atol=1e-6)
  unit = image_lib.scale_image(img, 'unit')
  assert unit.max() <= 1.0 and unit.min() >= 0.0
  np.testing.assert_allclose(image_lib.unscale_image(unit, 'unit'), img / 255.)


def test_image_modes_converted(tmp_path):
  for mode in ('RGBA', 'L', 'P', 'RGB'):
    p = tmp_path / f'{mode}.png'
    _image(p, mode, size=(37, 53))
    out = image_lib.load_image(str(p), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  gray = image_lib.load_image(str(tmp_path / 'L.png'), 32)
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


# --- Manifest and splits -----------------------------------------------------


def _rows(n, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.choice(4, n, p=[0.246, 0.531, 0.054, 0.169])
  return [dict(id=f'x{i}', label=int(l), split=None) for i, l in
          enumerate(labels)]


def test_splits_deterministic_and_stratified():
  rows = _rows(1000)
  a = manifest_lib.assign_splits([dict(r) for r in rows], test_fraction=0.3,
                                 val_fraction=0.1, num_folds=5)
  shuffled = [dict(r) for r in reversed(rows)]
  b = manifest_lib.assign_splits(shuffled, test_fraction=0.3,
                                 val_fraction=0.1, num_folds=5)
  key = lambda rs: {r['id']: (r['part'], r['fold'], r['fold_val']) for r in rs}
  assert key(a) == key(b)  # A function of the ids, not of the row order.
  per_label = collections.Counter(r['label'] for r in a)
  for label, n in per_label.items():
    got = [r for r in a if r['label'] == label]
    n_test = sum(r['part'] == 'test' for r in got)
    assert abs(n_test - 0.3 * n) <= 1
    n_val = sum(r['part'] == 'validation' for r in got)
    assert abs(n_val - 0.1 * (n - n_test)) <= 1
    fold_sizes = collections.Counter(r['fold'] for r in got)
    assert max(fold_sizes.values()) - min(fold_sizes.values()) <= 1
  # Folds: every id in exactly one fold, all folds used, sizes balanced.
  folds = collections.Counter(r['fold'] for r in a)
  assert sorted(folds) == list(range(5)) and sum(folds.values()) == 1000
  assert max(folds.values()) - min(folds.values()) <= 1


def test_manifest_split_column_wins(tmp_path):
  rows = _rows(60)
  for i, r in enumerate(rows):
    r['split'] = 'test' if i % 3 == 0 else 'train'
  out = manifest_lib.assign_splits(rows, test_fraction=0.3, val_fraction=0.1,
                                   num_folds=5)
  for i, r in enumerate(out):
    if i % 3 == 0:
      assert r['part'] == 'test'
    else:
      assert r['part'] in ('train', 'validation')
  assert sum(r['part'] == 'validation' for r in out) >= 2
