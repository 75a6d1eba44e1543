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
from parallelnet.core import scaling as core_scaling
from parallelnet.models import scaling as model_scaling
from input_pipeline import manifest as manifest_lib

CLASSES = parallelnet.EMOTIONS


@pytest.fixture(autouse=True, scope='module')
def _quiet_tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.display_progress_bar(False)


def _config(tmp, name='iitr_sier', manual_dir='', size=40, skip_bad=False):
  c = parallelnet.get_config('runlocal')
  c.dataset.name = name
  c.dataset.data_dir = str(tmp / 'tfds')
  c.dataset.manual_dir = str(manual_dir)
  c.dataset.synthetic_size = size
  c.dataset.skip_bad = skip_bad
  c.input.image_scaling = 'caffe'  # What 'auto' resolves to without weights.
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
  ours = core_scaling.scale_image(img, 'caffe')
  np.testing.assert_allclose(ours, vgg16.preprocess_input(
      img.astype(np.float32)), atol=1e-4)
  np.testing.assert_allclose(core_scaling.unscale_image(ours, 'caffe'),
                             img / 255.0, atol=1e-6)
  unit = core_scaling.scale_image(img, 'unit')
  assert unit.max() <= 1.0 and unit.min() >= 0.0
  np.testing.assert_allclose(core_scaling.unscale_image(unit, 'unit'), img / 255.)


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


# --- Builds: unusual files accepted, bad files reported ------------------------


def _good_folder(folder, n=24, unusual=True):
  """A manifest folder with n valid pairs, the first few in unusual formats."""
  os.makedirs(folder / 'img', exist_ok=True)
  os.makedirs(folder / 'wav', exist_ok=True)
  rows = []
  for i in range(n):
    img, aud = f'img/{i}.png', f'wav/{i}.wav'
    mode, size, sr, ch, subtype = 'RGB', (32, 32), 8000, 1, 'PCM_16'
    if unusual and i == 0:
      mode, aud, sr, ch = 'RGBA', f'wav/{i}.flac', 44100, 2
    if unusual and i == 1:
      mode, size, subtype = 'L', (37, 53), 'PCM_U8'  # grayscale, 8-bit WAV
    if unusual and i == 2:
      img, aud, mode = f'img/{i}.jpg', f'wav/{i}.ogg', 'RGB'
    if unusual and i == 3:
      mode, sr, ch = 'P', 22050, 2
    _image(folder / img, mode, size)
    sf.write(str(folder / aud), _tone(sr, 0.5 + 0.1 * (i % 5), 200 + 20 * i, ch),
             sr, **({'subtype': subtype} if aud.endswith('.wav') else {}))
    rows.append([f'ex{i}', img, aud, CLASSES[i % 4]])
  return rows


def _bad_folder(folder):
  """Valid rows plus one row per bad-input case; returns (rows, {id: reason})."""
  rows = _good_folder(folder, n=16, unusual=False)
  d = folder / 'bad'
  os.makedirs(d, exist_ok=True)
  img_ok = 'img/0.png'
  (d / 'corrupt.wav').write_bytes(b'RIFF\x00\x01garbage' * 50)
  (d / 'empty.wav').write_bytes(b'')
  sf.write(str(d / 'full.wav'), _tone(8000, 1.0), 8000, subtype='PCM_16')
  data = (d / 'full.wav').read_bytes()
  (d / 'trunc.wav').write_bytes(data[:len(data) // 2])
  nan = _tone(8000, 0.5)
  nan[100] = np.nan
  sf.write(str(d / 'nan.wav'), nan, 8000, subtype='FLOAT')
  (d / 'junk.png').write_bytes(b'\x89PNGnot really' * 40)
  _image(d / 'big.png', 'RGB', (64, 64))
  png = (d / 'big.png').read_bytes()
  (d / 'trunc.png').write_bytes(png[:len(png) // 2])
  wav_ok = 'wav/0.wav'
  bad = {
      'b_corrupt': ([img_ok, 'bad/corrupt.wav', 'sad'], 'corrupt audio'),
      'b_empty': ([img_ok, 'bad/empty.wav', 'sad'], 'zero-length'),
      'b_trunc_audio': ([img_ok, 'bad/trunc.wav', 'sad'], 'truncated audio'),
      'b_nan': ([img_ok, 'bad/nan.wav', 'sad'], 'non-finite'),
      'b_junk_img': (['bad/junk.png', wav_ok, 'sad'], 'undecodable image'),
      'b_trunc_img': (['bad/trunc.png', wav_ok, 'sad'], 'truncated image'),
      'b_missing': (['bad/nope.png', wav_ok, 'sad'], 'missing file'),
      'b_label': ([img_ok, wav_ok, 'bored'], 'unknown label'),
      'ex3': ([img_ok, wav_ok, 'sad'], 'duplicate id'),
      'b_escape': ([img_ok, '../outside.wav', 'sad'], 'leaves the dataset'),
      'b_blank': (['', wav_ok, 'sad'], 'image cell is empty'),
  }
  (folder.parent / 'outside.wav').write_bytes(data)
  rows += [[k, *v[0]] for k, v in bad.items()]
  return rows, {k: v[1] for k, v in bad.items()}


def test_unusual_files_are_converted_not_rejected(tmp_path):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'data'
  _write_manifest(folder if folder.mkdir() is None else folder,
                  _good_folder(folder))
  c = _config(tmp_path, manual_dir=folder)
  assert sum(pipeline.num_examples(c, s) for s in ('train', 'test')) == 24
  ex = pipeline.load_examples(c, 'train', None)
  assert ex['image_raw'].shape[1:] == (32, 32, 3)
  assert ex['spectrogram'].shape[1:] == (32, 32, 1)
  assert np.all(ex['image_cue_box'] == -1) and np.all(ex['speech_cue_span'] == -1)


def test_strict_build_lists_every_bad_file_and_writes_nothing(tmp_path):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'data'
  folder.mkdir()
  rows, reasons = _bad_folder(folder)
  _write_manifest(folder, rows)
  c = _config(tmp_path, manual_dir=folder)
  with pytest.raises(manifest_lib.BadInputError) as err:
    pipeline.get_builder(c)
  msg = str(err.value)
  for rid, reason in reasons.items():
    line = [l for l in msg.splitlines() if f"id='{rid}'" in l]
    assert line and reason in line[-1], (rid, reason, msg)
  assert f'{len(reasons)} bad input(s)' in msg
  assert len(err.value.bad) == len(reasons)
  # No finished dataset: nothing TFDS would load as prepared.
  built = list((tmp_path / 'tfds').rglob('dataset_info.json'))
  assert not built
  assert not list((tmp_path / 'tfds').rglob('*.tfrecord*')) or all(
      'incomplete' in str(p) for p in (tmp_path / 'tfds').rglob('*.tfrecord*'))


def test_skip_bad_writes_skipped_csv(tmp_path):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'data'
  folder.mkdir()
  rows, reasons = _bad_folder(folder)
  _write_manifest(folder, rows)
  c = _config(tmp_path, manual_dir=folder, skip_bad=True)
  b = pipeline.get_builder(c)
  with open(os.path.join(b.data_dir, 'skipped.csv')) as f:
    skipped = {r['id']: r['reason'] for r in csv.DictReader(f)}
  assert set(skipped) == set(reasons)
  for rid, reason in reasons.items():
    assert reason in skipped[rid]
  total = sum(pipeline.num_examples(c, s) for s in ('train', 'test'))
  assert total == 16  # The good rows, the first 'ex3' included.


def test_message_lists_first_50_then_counts():
  err = manifest_lib.BadInputError(
      [(f'id{i}', f'f{i}', 'missing file') for i in range(60)])
  assert "id='id49'" in str(err) and "id='id50'" not in str(err)
  assert '... and 10 more.' in str(err)


# --- Pipeline: shards, order, padding, metadata --------------------------------


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
  """A tiny synthetic_sier build (48 examples) shared by the tests below."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp('synth')
  c = _config(tmp, name='synthetic_sier', size=48)
  c.dataset.val_fraction = 0.2
  pipeline.get_builder(c)
  return c


def _ids(builder, split):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return [ex['id'].decode() for ex in tfds.as_numpy(ds)]


@pytest.mark.slow
def test_two_processes_cover_each_example_once(synth):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  b = pipeline.get_builder(synth)
  names = pipeline.split_names(synth)
  all_ids = []
  for split in ('train', 'validation', 'test'):
    ids = _ids(b, names[split])
    shards = [_ids(b, pipeline.process_split(b, names[split], i, 2))
              for i in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(ids)
    assert not set(shards[0]) & set(shards[1])
    assert abs(len(shards[0]) - len(shards[1])) <= 1
    all_ids += ids
  assert len(all_ids) == len(set(all_ids)) == 48  # Splits are disjoint too.
  # Training: each simulated process yields steps_per_epoch local batches.
  c = synth.copy_and_resolve_references()
  c.train.max_steps_per_epoch = -1
  c.train.batch_size = 8
  steps = pipeline.steps_per_epoch(c)
  assert steps == pipeline.num_examples(c, 'train') // 8
  for i in range(2):
    batches = list(pipeline.train_dataset(
        c, epoch=0, process_index=i, process_count=2).as_numpy_iterator())
    assert len(batches) == steps
    assert all(bt['image'].shape == (4, 32, 32, 3) for bt in batches)


def test_eval_padding_is_masked_and_covers_split_once(synth):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  c = synth.copy_and_resolve_references()
  c.train.eval_batch_size = 8
  n = pipeline.num_examples(c, 'test')
  assert n % 8  # The test needs a ragged last batch.
  labels = pipeline.load_examples(c, 'test', None)['label']
  for pc in (1, 2):
    got_labels, total = [], 0
    for i in range(pc):
      batches = list(pipeline.eval_dataset(
          c, 'test', process_index=i, process_count=pc).as_numpy_iterator())
      assert len(batches) == -(-n // 8)  # Every process: same batch count.
      for bt in batches:
        assert bt['image'].shape[0] == 8 // pc
        got_labels += list(bt['label'][bt['mask']])
        total += bt['mask'].size
        assert not np.any(bt['spectrogram'][~bt['mask']])  # Padding is zeros.
    assert len(got_labels) == n and total > n
    assert sorted(got_labels) == sorted(labels.tolist())


def test_global_batches_on_a_mesh(synth):
  import jax  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  c = synth.copy_and_resolve_references()
  first = list(pipeline.train_batches(c, mesh, epoch=3))
  again = list(pipeline.train_batches(c, mesh, epoch=3))
  other = list(pipeline.train_batches(c, mesh, epoch=4))
  resumed = list(pipeline.train_batches(c, mesh, epoch=3, start_step=1))
  assert len(first) == pipeline.steps_per_epoch(c) == 2
  bt = first[0]
  assert isinstance(bt['image'], jax.Array)
  assert bt['image'].shape == (8, 32, 32, 3) and bt['image'].dtype == np.float32
  assert bt['spectrogram'].shape == (8, 32, 32, 1)
  assert bt['label'].dtype == np.int32
  assert bt['image'].sharding.spec == jax.sharding.PartitionSpec('data')
  for a, b in zip(first, again):  # Order: a pure function of (seed, epoch).
    np.testing.assert_array_equal(a['spectrogram'], b['spectrogram'])
  assert any(not np.array_equal(a['spectrogram'], b['spectrogram'])
             for a, b in zip(first, other))
  assert len(resumed) == 1
  np.testing.assert_array_equal(resumed[0]['spectrogram'],
                                first[1]['spectrogram'])
  ev = list(pipeline.eval_batches(c, mesh, 'validation'))
  assert sum(int(e['mask'].sum()) for e in ev) == pipeline.num_examples(
      c, 'validation')


@pytest.mark.slow
def test_cv_folds_partition_the_data(synth):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  b = pipeline.get_builder(synth)
  tests = []
  for k in range(synth.dataset.num_folds):
    c = synth.copy_and_resolve_references()
    c.dataset.fold = k
    names = pipeline.split_names(c)
    ids = {s: set(_ids(b, names[s])) for s in names}
    assert not ids['train'] & ids['test'] and not ids['validation'] & ids['test']
    assert not ids['train'] & ids['validation']
    assert len(ids['train'] | ids['validation'] | ids['test']) == 48
    tests.append(ids['test'])
  assert sum(len(t) for t in tests) == 48 and len(set().union(*tests)) == 48


def test_settings_mismatch_is_an_error(synth):
  from input_pipeline import builders  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  b = pipeline.get_builder(synth)
  settings = builders.settings_from_config(synth)
  builders.check_metadata(b, settings)  # Matches.
  settings['n_mels'] = 64
  with pytest.raises(ValueError, match='n_mels: built with 32, config has 64'):
    builders.check_metadata(b, settings)


def test_preprocess_pair_matches_the_dataset(synth):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  ex = pipeline.load_examples(synth, 'test', 2)
  folder = os.path.dirname(os.path.dirname(ex['audio_path'][0]))
  img_path = os.path.join(folder, 'images', ex['id'][0] + '.png')
  out = pipeline.preprocess_pair(synth, img_path, ex['audio_path'][0])
  np.testing.assert_array_equal(out['image_raw'], ex['image_raw'][0])
  np.testing.assert_allclose(out['image'], ex['image'][0])
  np.testing.assert_array_equal(out['spectrogram'], ex['spectrogram'][0])
  np.testing.assert_allclose(out['waveform'], ex['waveform'][0])
  with pytest.raises(ValueError, match='nope.wav: missing file'):
    pipeline.preprocess_pair(synth, img_path, '/nope.wav')


def test_manifest_from_class_folders(tmp_path):
  for label in ('happy', 'sad'):
    (tmp_path / label).mkdir()
    for i in range(2):
      _image(tmp_path / label / f'{i}.png')
      sf.write(str(tmp_path / label / f'{i}.wav'), _tone(8000, 0.2), 8000)
  assert manifest_lib.manifest_from_class_folders(str(tmp_path)) == 4
  rows, bad = manifest_lib.read_manifest(str(tmp_path), CLASSES)
  assert not bad and sorted(r['id'] for r in rows) == [
      'happy/0', 'happy/1', 'sad/0', 'sad/1']
  assert {r['label'] for r in rows} == {CLASSES.index('happy'),
                                        CLASSES.index('sad')}
  (tmp_path / 'sad' / '0.wav').unlink()
  with pytest.raises(ValueError, match='sad/0'):
    manifest_lib.manifest_from_class_folders(str(tmp_path))


def test_b_t4sa_builds_three_sentiment_classes(tmp_path):
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'data'
  folder.mkdir()
  rows = _good_folder(folder, n=12, unusual=False)
  for i, r in enumerate(rows):
    r[3] = parallelnet.SENTIMENTS[i % 3]
  _write_manifest(folder, rows)
  c = _config(tmp_path, manual_dir=folder)
  c.dataset.name = 'b_t4sa'
  c.dataset.classes = parallelnet.SENTIMENTS
  b = pipeline.get_builder(c)
  assert b.info.features['label'].names == list(parallelnet.SENTIMENTS)
  ex = pipeline.load_examples(c, 'train', None)
  assert set(ex['label'].tolist()) == {0, 1, 2}


def test_cue_box_is_rescaled_to_model_pixels(tmp_path):
  from input_pipeline import builders  # pylint: disable=g-import-not-at-top
  _image(tmp_path / 'i.png', 'RGB', size=(40, 80))  # width 40, height 80
  sf.write(str(tmp_path / 'a.wav'), _tone(8000, 0.3), 8000)
  with open(tmp_path / 'manifest.csv', 'w', encoding='utf-8-sig') as f:
    f.write('id,image,audio,label,image_cue_box,speech_cue_span\n'
            'e1,i.png,a.wav,sad,8 4 40 20,0.1 0.2\n')
  rows, bad = manifest_lib.read_manifest(str(tmp_path), CLASSES)
  assert not bad
  c = parallelnet.get_config('runlocal')
  c.dataset.name = 'iitr_sier'
  ex, reason = builders._decode_row(rows[0], builders.settings_from_config(c))
  assert reason is None
  np.testing.assert_allclose(ex['image_cue_box'], [3.2, 3.2, 16, 16])
  np.testing.assert_allclose(ex['speech_cue_span'], [0.1, 0.2])
