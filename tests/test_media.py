"""Real media files: every image mode and audio format decoded right, span
decoding that reads only the clip, and a build whose memory does not grow
with the data. Each decoded result is compared with an
expectation computed here from the raw data (numpy), or, for audio, with
soundfile reading the whole file, not just with shapes."""

import gc
import json
import os
import pathlib
import subprocess
import sys
import tracemalloc

import librosa
import numpy as np
from PIL import Image
import pytest
import soundfile as sf

from configs import parallelnet
from input_pipeline import audio as audio_lib
from input_pipeline import image as image_lib

RNG = np.random.default_rng(13)
WHITE = np.float64(255)


def _load(path, im=None):
  """Our decoder at the image's own (square) size: no resize, exact pixels."""
  with Image.open(path) as f:
    size = f.size[0]
  return image_lib.load_image(str(path), size)


def _composite(rgb, alpha):
  """c * a + 255 * (1 - a), a = alpha / 255, rounded: the documented rule."""
  a = alpha[..., None].astype(np.float64) / 255.0
  return np.rint(rgb.astype(np.float64) * a + WHITE * (1 - a)).astype(np.uint8)


def _gray3(g):
  return np.repeat(np.asarray(g, np.uint8)[..., None], 3, -1)


# --- Images: each mode against numpy on the raw values ------------------------


@pytest.mark.parametrize('ext', ['png', 'tiff'])
def test_16bit_gray_rescaled_by_bit_depth(tmp_path, ext):
  raw = RNG.integers(0, 65536, (6, 6)).astype(np.uint16)
  raw[0, 0], raw[0, 1] = 0, 65535
  p = tmp_path / f'g16.{ext}'
  Image.fromarray(raw).save(p)
  with Image.open(p) as im:
    assert im.mode.startswith('I;16')
  want = np.rint(raw / 65535.0 * 255.0)
  np.testing.assert_array_equal(_load(p), _gray3(want))
  assert _load(p)[0, 1, 0] == 255  # The old path clipped nearly all to 255.


def test_16bit_big_endian_tiff(tmp_path):
  raw = RNG.integers(0, 65536, (4, 4)).astype('>u2')
  p = tmp_path / 'g16b.tiff'
  Image.fromarray(raw).save(p)
  with Image.open(p) as im:
    assert im.mode == 'I;16B'
  np.testing.assert_array_equal(
      _load(p), _gray3(np.rint(raw.astype(np.float64) / 65535 * 255)))


def test_32bit_int_and_float_gray(tmp_path):
  ints = RNG.integers(-70000, 900000, (5, 5)).astype(np.int32)
  Image.fromarray(ints).save(tmp_path / 'i.tiff')
  lo, hi = ints.min(), ints.max()
  want = np.rint((ints - np.float64(lo)) / (hi - lo) * 255)
  np.testing.assert_array_equal(_load(tmp_path / 'i.tiff'), _gray3(want))
  unit = RNG.random((5, 5)).astype(np.float32)  # Within [0, 1]: v * 255.
  Image.fromarray(unit).save(tmp_path / 'f.tiff')
  np.testing.assert_array_equal(_load(tmp_path / 'f.tiff'),
                                _gray3(np.rint(unit.astype(np.float64) * 255)))
  wide = (RNG.random((5, 5)) * 40 - 7).astype(np.float32)  # Outside: min-max.
  Image.fromarray(wide).save(tmp_path / 'w.tiff')
  w = wide.astype(np.float64)
  np.testing.assert_array_equal(
      _load(tmp_path / 'w.tiff'),
      _gray3(np.rint((w - w.min()) / (w.max() - w.min()) * 255)))


def test_unfaithful_images_are_errors(tmp_path):
  nan = np.zeros((4, 4), np.float32)
  nan[1, 2] = np.nan
  Image.fromarray(nan).save(tmp_path / 'nan.tiff')
  with pytest.raises(image_lib.ImageError, match='NaN'):
    _load(tmp_path / 'nan.tiff')
  Image.fromarray(np.full((4, 4), 7, np.int32)).save(tmp_path / 'c.tiff')
  with pytest.raises(image_lib.ImageError, match='constant'):
    _load(tmp_path / 'c.tiff')
  frames = [Image.new('RGB', (4, 4), c) for c in ('red', 'blue')]
  frames[0].save(tmp_path / 'anim.gif', save_all=True, append_images=frames[1:])
  with pytest.raises(image_lib.ImageError, match='2 frames'):
    _load(tmp_path / 'anim.gif')
  with pytest.raises(image_lib.ImageError, match="mode 'LAB'"):
    image_lib.to_rgb8(Image.new('LAB', (2, 2)))
  assert issubclass(image_lib.ImageError, image_lib.UserError)


def test_transparency_composited_on_white(tmp_path):
  rgba = RNG.integers(0, 256, (5, 5, 4)).astype(np.uint8)
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
  np.testing.assert_array_equal(_load(tmp_path / 'rgba.png'),
                                _composite(rgba[..., :3], rgba[..., 3]))
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.webp', lossless=True)
  np.testing.assert_array_equal(_load(tmp_path / 'rgba.webp'),
                                _composite(rgba[..., :3], rgba[..., 3]))
  la = rgba[..., 2:]  # (gray, alpha)
  Image.fromarray(la, 'LA').save(tmp_path / 'la.png')
  np.testing.assert_array_equal(_load(tmp_path / 'la.png'),
                                _composite(_gray3(la[..., 0]), la[..., 1]))
  # RGB with a tRNS colour: exactly that colour is fully transparent.
  rgb = RNG.integers(0, 4, (5, 5, 3)).astype(np.uint8) * 60
  key = tuple(int(v) for v in rgb[0, 0])
  Image.fromarray(rgb).save(tmp_path / 'trns.png', transparency=key)
  alpha = np.where(np.all(rgb == key, -1), 0, 255)
  np.testing.assert_array_equal(_load(tmp_path / 'trns.png'),
                                _composite(rgb, alpha))
  assert (_load(tmp_path / 'trns.png')[0, 0] == 255).all()
  gray = rgb[..., 0]  # Grayscale with a tRNS value.
  Image.fromarray(gray).save(tmp_path / 'ltrns.png',
                             transparency=int(gray[0, 0]))
  np.testing.assert_array_equal(
      _load(tmp_path / 'ltrns.png'),
      _composite(_gray3(gray), np.where(gray == gray[0, 0], 0, 255)))


def test_palette_with_and_without_transparency(tmp_path):
  palette = RNG.integers(0, 256, (16, 3)).astype(np.uint8)
  idx = RNG.integers(0, 16, (6, 6)).astype(np.uint8)
  im = Image.fromarray(idx, 'P')
  im.putpalette(palette.reshape(-1).tolist())
  im.save(tmp_path / 'p.png')
  np.testing.assert_array_equal(_load(tmp_path / 'p.png'), palette[idx])
  im.save(tmp_path / 'p.bmp')
  np.testing.assert_array_equal(_load(tmp_path / 'p.bmp'), palette[idx])
  alphas = RNG.integers(0, 256, 16).astype(np.uint8)
  im.save(tmp_path / 'pt.png', transparency=alphas.tobytes())
  np.testing.assert_array_equal(_load(tmp_path / 'pt.png'),
                                _composite(palette[idx], alphas[idx]))
  pa = im.convert('PA')  # No common file format stores PA: in memory.
  alpha = RNG.integers(0, 256, (6, 6)).astype(np.uint8)
  pa.putalpha(Image.fromarray(alpha))
  np.testing.assert_array_equal(image_lib.to_rgb8(pa),
                                _composite(palette[idx], alpha))


def test_cmyk_gray_1bit_and_formats(tmp_path):
  cmyk = RNG.integers(0, 256, (5, 5, 4)).astype(np.uint8)
  Image.fromarray(cmyk, 'CMYK').save(tmp_path / 'c.tiff')
  c = cmyk.astype(np.float64)
  want = np.rint((255 - c[..., :3]) * (255 - c[..., 3:]) / 255)
  np.testing.assert_array_equal(_load(tmp_path / 'c.tiff'), want)
  bits = RNG.random((8, 8)) > 0.5
  for ext in ('png', 'bmp', 'tiff'):
    Image.fromarray(bits).save(tmp_path / f'b.{ext}')
    np.testing.assert_array_equal(_load(tmp_path / f'b.{ext}'),
                                  _gray3(bits * 255))
  gray = RNG.integers(0, 256, (7, 7)).astype(np.uint8)
  rgb = RNG.integers(0, 256, (7, 7, 3)).astype(np.uint8)
  for ext, kw in (('png', {}), ('bmp', {}), ('tiff', {}),
                  ('webp', {'lossless': True})):
    Image.fromarray(gray).save(tmp_path / f'g.{ext}', **kw)
    np.testing.assert_array_equal(_load(tmp_path / f'g.{ext}'), _gray3(gray))
    Image.fromarray(rgb).save(tmp_path / f'c.{ext}', **kw)
    np.testing.assert_array_equal(_load(tmp_path / f'c.{ext}'), rgb)
  # CMYK JPEG (lossy): against PIL's own raw CMYK decode + the formula.
  Image.fromarray(cmyk, 'CMYK').save(tmp_path / 'c.jpg', quality=95)
  with Image.open(tmp_path / 'c.jpg') as im:
    assert im.mode == 'CMYK'
    c = np.asarray(im, np.float64)
  np.testing.assert_array_equal(
      _load(tmp_path / 'c.jpg'),
      np.rint((255 - c[..., :3]) * (255 - c[..., 3:]) / 255))


# EXIF orientation -> the numpy operation that displays the stored pixels.
ORIENT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1],
          4: lambda a: a[::-1], 5: lambda a: a.transpose(1, 0, 2),
          6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).transpose(
              1, 0, 2), 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize('ext', ['png', 'jpg'])
def test_exif_orientation_applied(tmp_path, ext):
  stored = RNG.integers(0, 256, (4, 6, 3)).astype(np.uint8)  # h=4, w=6
  for tag, op in ORIENT.items():
    exif = Image.Exif()
    exif[0x0112] = tag
    p = tmp_path / f'o{tag}.{ext}'
    Image.fromarray(stored).save(p, exif=exif, **(
        {'quality': 100, 'subsampling': 0} if ext == 'jpg' else {}))
    with Image.open(p) as im:  # Stored pixels, no orientation applied.
      raw = np.asarray(im.convert('RGB'))
    want = op(raw)
    got, size = image_lib.decode_image(str(p), 6)
    assert size == want.shape[:2] == image_lib.image_size_of(str(p)), tag
    # Then the documented bilinear resize to the model's square size.
    big = np.asarray(Image.fromarray(want).resize((6, 6), Image.BILINEAR))
    np.testing.assert_array_equal(got, big)


def test_tiny_images(tmp_path):
  for size in ((1, 1), (2, 3)):
    rgb = RNG.integers(0, 256, (size[1], size[0], 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / 't.png')
    out = image_lib.load_image(str(tmp_path / 't.png'), 8)
    assert out.shape == (8, 8, 3)
    if size == (1, 1):  # One pixel: every output pixel is that colour.
      np.testing.assert_array_equal(out, np.broadcast_to(rgb, (8, 8, 3)))
    np.testing.assert_array_equal(out, np.asarray(
        Image.fromarray(rgb).resize((8, 8), Image.BILINEAR)))


# --- Audio: span decoding against the whole-file path -----------------------


def _runlocal_input():
  return parallelnet.get_config('runlocal').input  # 8 kHz, 0.992 s clips


def _whole_file_clip(path, c):
  """The old path: soundfile reads everything, mean, soxr_hq, pad/crop."""
  data, sr = sf.read(str(path), dtype='float32', always_2d=True)
  wav = data.mean(axis=1)
  if sr != c.sample_rate:
    wav = librosa.resample(wav, orig_sr=sr, target_sr=c.sample_rate,
                           res_type='soxr_hq')
  n = audio_lib.num_samples(c)
  return np.pad(wav[:n], (0, max(0, n - wav.size))), wav.size


def _signal(sr, seconds, channels):
  """Chirp-plus-noise, a different level per channel, within (-1, 1)."""
  t = np.arange(int(round(sr * seconds))) / sr
  x = (0.4 * np.sin(2 * np.pi * (200 + 300 * t) * t) +
       0.05 * RNG.standard_normal(t.size))
  return np.stack([x * (1 - 0.2 * k) for k in range(channels)], 1).astype(
      np.float32)


AUDIO_CASES = [  # (extension, soundfile subtype, rate, channels)
    ('wav', 'PCM_U8', 8000, 1), ('wav', 'PCM_16', 44100, 2),
    ('wav', 'PCM_24', 48000, 1), ('wav', 'PCM_32', 22050, 3),
    ('wav', 'FLOAT', 96000, 2), ('wav', 'DOUBLE', 11025, 1),
    ('flac', 'PCM_16', 48000, 6), ('flac', 'PCM_24', 16000, 1),
    ('ogg', 'VORBIS', 44100, 2), ('mp3', 'MPEG_LAYER_III', 44100, 2),
]


@pytest.mark.parametrize('ext,subtype,sr,channels', AUDIO_CASES)
def test_audio_formats_span_equals_whole_file(tmp_path, ext, subtype, sr,
                                              channels):
  c = _runlocal_input()
  n = audio_lib.num_samples(c)
  for seconds, fit in ((2.5, 'cropped'), (0.6, 'padded')):
    p = tmp_path / f'a.{ext}'
    sf.write(str(p), _signal(sr, seconds, channels), sr, subtype=subtype)
    want, full = _whole_file_clip(p, c)
    assert (full > n) == (fit == 'cropped')
    got, got_fit = audio_lib.decode_clip(str(p), c)
    assert got_fit == fit and got.shape == (n,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    assert np.abs(got).max() > 0.1  # Not silence.


def test_integer_wav_samples_exact_and_exact_fit(tmp_path):
  c = _runlocal_input()
  n = audio_lib.num_samples(c)
  for subtype, bits in (('PCM_16', 16), ('PCM_24', 24), ('PCM_32', 32)):
    ints = RNG.integers(-2 ** (bits - 1), 2 ** (bits - 1), n).astype(np.int32)
    p = tmp_path / f'{bits}.wav'
    # soundfile writes int32 into the file's top bits: shift to the depth.
    sf.write(str(p), ints << (32 - bits), c.sample_rate, subtype=subtype)
    got, fit = audio_lib.decode_clip(str(p), c)
    assert fit == 'exact'
    np.testing.assert_allclose(got, (ints / 2.0 ** (bits - 1)), atol=1e-7)
  u8 = RNG.integers(0, 256, n).astype(np.uint8)  # 8-bit WAV is unsigned.
  raw = (u8.astype(np.int16) - 128) << 8
  sf.write(str(tmp_path / 'u8.wav'), raw.astype(np.int16), c.sample_rate,
           subtype='PCM_U8')
  got, _ = audio_lib.decode_clip(str(tmp_path / 'u8.wav'), c)
  np.testing.assert_allclose(got, (u8 - 128.0) / 128.0, atol=1e-7)


def test_truncated_long_files_still_rejected(tmp_path):
  c = _runlocal_input()
  for ext, kw in (('flac', {}), ('mp3', {'subtype': 'MPEG_LAYER_III'}),
                  ('wav', {'subtype': 'PCM_16'})):
    p = tmp_path / f'full.{ext}'
    sf.write(str(p), _signal(44100, 6.0, 2), 44100, **kw)
    data = p.read_bytes()
    cut = tmp_path / f'cut.{ext}'
    cut.write_bytes(data[:len(data) // 2])  # The clip's span is still there.
    with pytest.raises(audio_lib.AudioError, match='truncated'):
      audio_lib.decode_clip(str(cut), c)
    audio_lib.decode_clip(str(p), c)  # The whole file is fine.


def test_long_file_decodes_in_clip_sized_memory(tmp_path):
  c = parallelnet.get_config().input  # Paper settings: 16 kHz, 4.06 s.
  n = audio_lib.num_samples(c)
  p = str(tmp_path / 'long.wav')
  sr, minutes = 48000, 3
  with sf.SoundFile(p, 'w', sr, 2, subtype='PCM_16') as f:
    for _ in range(minutes * 6):  # 10 s blocks.
      f.write(_signal(sr, 10.0, 2))
  clip_bytes = n * 4
  # librosa imports its submodules (scipy, numba, ...) on first use: done
  # before tracing, which measures the decode, not Python's imports.
  short = str(tmp_path / 'short.wav')
  sf.write(short, _signal(sr, 1.0, 2), sr)
  audio_lib.decode_clip(short, c)
  tracemalloc.start()
  try:
    wav, fit = audio_lib.decode_clip(p, c)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    old = audio_lib.decode_audio(p, c.sample_rate)  # The whole file at once.
    _, old_peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert fit == 'cropped'
  np.testing.assert_allclose(wav, old[:n], atol=2e-6)
  # The clip is 260 KB of float32; its span read at 48 kHz stereo is 6x
  # that (measured peak: ~10x); the whole file as float32 is 69 MB (~400x).
  assert peak < 16 * clip_bytes, (peak, clip_bytes)
  assert old_peak > 100 * clip_bytes  # The measurement can tell the two.


# --- The streaming build ------------------------------------------------------


def _folder(folder, n, image_px=64):
  """A manifest of n rows over three image and three audio files (rows may
  share files; each row is decoded on its own): clips shorter, as long as
  and longer than the runlocal 0.992 s clip."""
  folder.mkdir(exist_ok=True)
  c = _runlocal_input()
  for k in range(3):
    rgb = RNG.integers(0, 256, (image_px + k, image_px, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(folder / f'i{k}.png')
  sf.write(str(folder / 'a0.wav'), _signal(8000, 0.5, 1), 8000)  # padded
  sf.write(str(folder / 'a1.wav'),
           _signal(8000, audio_lib.num_samples(c) / 8000, 2), 8000)  # exact
  sf.write(str(folder / 'a2.flac'), _signal(44100, 2.0, 2), 44100)  # cropped
  with open(folder / 'manifest.csv', 'w', encoding='utf-8') as f:
    f.write('id,image,audio,label\n')
    audio = ('a0.wav', 'a1.wav', 'a2.flac')
    for i in range(n):
      f.write(f'r{i:05d},i{i % 3}.png,{audio[i % 3]},'
              f'{parallelnet.EMOTIONS[i % 4]}\n')


def _build(tmp_path, folder, image_size=32):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from input_pipeline import builders  # pylint: disable=g-import-not-at-top
  cfg = parallelnet.get_config('runlocal')
  cfg.dataset.name = 'iitr_sier'
  cfg.input.image_size = image_size
  settings = builders.settings_from_config(cfg)
  b = builders.IitrSier(
      config=builders.make_builder_config(settings, parallelnet.EMOTIONS),
      data_dir=str(tmp_path / 'tfds'))
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(folder)))
  return b, settings


def test_build_writes_what_the_decoders_give_and_counts_fits(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from input_pipeline import builders  # pylint: disable=g-import-not-at-top
  from input_pipeline import manifest  # pylint: disable=g-import-not-at-top
  tfds.display_progress_bar(False)
  _folder(tmp_path / 'd', 24)
  b, settings = _build(tmp_path, tmp_path / 'd')
  md = b.info.metadata
  assert (md['clips_padded'], md['clips_exact'], md['clips_cropped']) == (
      8, 8, 8)
  rows, _ = manifest.read_manifest(str(tmp_path / 'd'), parallelnet.EMOTIONS)
  by_id = {r['id']: r for r in rows}
  seen = 0
  for ex in tfds.as_numpy(b.as_dataset(split='+'.join(b.info.splits))):
    want, _ = builders._decode_row(by_id[ex['id'].decode()], settings)  # pylint: disable=protected-access
    np.testing.assert_array_equal(ex['image'], want['image'])
    np.testing.assert_array_equal(ex['spectrogram'], want['spectrogram'])
    np.testing.assert_array_equal(ex['image_cue_box'], want['image_cue_box'])
    assert ex['label'] == want['label']
    seen += 1
  assert seen == 24
  line = builders.build_summary(30, dict(padded=10, cropped=10, exact=10), 2,
                                1.0, 0.992)
  assert '10 padded' in line and '10 cropped' in line and '2 bad' in line


def test_decoding_is_ordered_and_bounded_in_flight(monkeypatch):
  """With a process pool, rows come back in manifest order, and workers run
  at most `window` chunks ahead of the consumer."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  from input_pipeline import builders  # pylint: disable=g-import-not-at-top
  decoded = multiprocessing.get_context('fork').Value('i', 0)

  def fake_decode(row, settings):
    del settings
    with decoded.get_lock():
      decoded.value += 1
    return dict(id=row['id'], pid=os.getpid()), None

  monkeypatch.setattr(builders, '_decode_row', fake_decode)  # Forked: shared.
  monkeypatch.setattr(builders.audio_lib, 'warm_up', lambda settings: None)
  rows = [dict(id=f'r{i}') for i in range(400)]
  window = 3
  ids, pids = [], set()
  for k, (row, ex, reason) in enumerate(builders.iter_decoded(
      rows, {}, workers=2, window=window)):
    assert reason is None and ex['id'] == row['id']
    ids.append(row['id'])
    pids.add(ex['pid'])
    # Consumed k + 1; the rest of the window (and the chunk being yielded).
    assert decoded.value <= k + 1 + (window + 1) * builders.CHUNK
  assert ids == [r['id'] for r in rows]
  assert os.getpid() not in pids and len(pids) >= 1


def build_peaks(tmp: str, n: int) -> dict:
  """{count: (tracemalloc peak, examples built)} of whole builds of n and
  4n examples, after a small warm-up build (first-use imports and
  compiles). 4n is built twice and the lower peak kept: when the new path
  strings of a build outgrow the interpreter's table of interned strings,
  it doubles (7.5 MB once TensorFlow is loaded), a one-off that a second
  build does not repeat."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top
  tfds.display_progress_bar(False)
  shuffle.MAX_MEM_BUFFER_SIZE = 64 << 10
  tmp = pathlib.Path(tmp)
  _folder(tmp / 'warm', 8)
  _build(tmp / 'bwarm', tmp / 'warm', image_size=64)
  peaks = {}
  for k, count in enumerate((n, 4 * n, 4 * n)):
    _folder(tmp / f'd{k}', count)
    gc.collect()
    tracemalloc.start()
    try:
      b, _ = _build(tmp / f'b{k}', tmp / f'd{k}', image_size=64)
      _, peak = tracemalloc.get_traced_memory()
    finally:
      tracemalloc.stop()
    built = sum(s.num_examples for s in b.info.splits.values())
    peaks[count] = min(peaks.get(count, (peak, built)), (peak, built))
  return peaks


@pytest.mark.slow  # A fresh process: four small dataset builds, three traced.
def test_build_memory_does_not_grow_with_examples(tmp_path):
  """tracemalloc peak of whole builds of N and 4N examples: the decoded
  arrays (14 KB an example here) stream; what grows is only the manifest
  rows (~1-2 KB each). TFDS's writer keeps up to 1 GB of serialized examples
  a split in memory before spilling to disk (shuffle.MAX_MEM_BUFFER_SIZE):
  its own fixed bound, set to 64 KB here so the test reaches it.
  Measured in a fresh process: tracemalloc counts every thread, and threads
  that earlier tests leave in this one (seen in the parallel suite) would
  be counted too."""
  n = 16
  here = os.path.dirname(os.path.abspath(__file__))
  script = ('import json, sys; sys.path.insert(0, sys.argv[1]); '
            'import test_media; print(json.dumps('
            'test_media.build_peaks(sys.argv[2], int(sys.argv[3]))))')
  out = subprocess.run(
      [sys.executable, '-c', script, here, str(tmp_path), str(n)],
      capture_output=True, text=True, check=True, timeout=300)
  last = json.loads(out.stdout.splitlines()[-1])
  peaks = {int(k): v for k, v in last.items()}
  assert {k: v[1] for k, v in peaks.items()} == {n: n, 4 * n: 4 * n}
  example_bytes = 64 * 64 * 3 + 32 * 32 * 2
  held_all = 3 * n * example_bytes  # What holding the extra 3N would add.
  growth = peaks[4 * n][0] - peaks[n][0]
  assert growth < 0.3 * held_all, (peaks, held_all)
