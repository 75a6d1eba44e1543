"""Tests of the explain driver (explain/run.py) with a stand-in model and data.

The checkpoint and the dataset are replaced by fakes (monkeypatched
`restore_for_inference`, `load_examples`, `preprocess_pair`), so the test
exercises the driver's own logic: batching, files, npz keys, the cue hit
rates, without training anything.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import parallelnet as parallelnet_config
import input_pipeline
from explain import run
from parallelnet import checkpointing
from parallelnet.core import paths

pytestmark = pytest.mark.usefixtures('fast_compile')

IMG, FRAMES, MELS = 32, 32, 32  # runlocal sizes.


class _CueModel:
  """Class 0's logit grows with the image's top-left 6x6 corner and the
  spectrogram's first 8 frames: a linear 'model' whose evidence we know."""

  def apply(self, variables, images, spectrograms, train=False):
    assert not train
    image_evidence = images[:, :6, :6].mean((1, 2, 3))
    speech_evidence = spectrograms[:, :8].mean((1, 2, 3))
    first = variables['params']['w'] * (image_evidence + speech_evidence)
    logits = jnp.stack([first] + [jnp.zeros_like(first)] * 3, axis=1)
    return logits, {}


def _config():
  config = parallelnet_config.get_config('runlocal')
  config.explain.num_examples = 3
  config.explain.batch_size = 2  # Two batches, the last one short.
  config.explain.depth = 2
  config.explain.baseline = 'zeros'  # The cue model's evidence vs black.
  config.input.image_scaling = 'unit'  # Black is model-input 0.
  config.explain.context = 'absent'
  return config


def _examples(config):
  rng = np.random.default_rng(0)
  n = 3
  num_samples = (FRAMES - 1) * config.input.hop_length
  image_raw = rng.integers(0, 255, (n, IMG, IMG, 3), dtype=np.uint8)
  return dict(
      id=np.array(['a/1', 'b 2', 'c3']),
      image=rng.uniform(0.5, 1.0, (n, IMG, IMG, 3)).astype(np.float32),
      image_raw=image_raw,
      spectrogram=rng.uniform(0.5, 1.0, (n, FRAMES, MELS, 1)).astype(
          np.float32),
      label=np.array([0, 0, 2], np.int32),
      waveform=rng.uniform(-0.5, 0.5, (n, num_samples)).astype(np.float32),
      # Example 2's planted box is bottom-right: the model looks elsewhere.
      image_cue_box=np.array([[1, 1, 5, 5], [0, 0, 8, 8], [20, 20, 30, 30]]),
      speech_cue_span=np.array([[0.02, 0.2], [0.0, 0.1], [0.6, 0.9]]),
  )


@pytest.fixture
def fakes(monkeypatch):
  config = _config()
  examples = _examples(config)
  variables = {'params': {'w': jnp.float32(5.0)}}
  monkeypatch.setattr(checkpointing, 'restore_for_inference',
                      lambda cfg, workdir, which='best':
                      (_CueModel(), variables, 42))
  # setitem on the module's dict: getattr would import the real pipeline
  # (and TensorFlow) through input_pipeline's lazy __getattr__.
  monkeypatch.setitem(vars(input_pipeline), 'load_examples',
                      lambda cfg, split, n: {k: v[:n] for k, v in
                                             examples.items()})
  pair = {k: examples[k][0] for k in ('image', 'image_raw', 'spectrogram',
                                      'waveform')}
  monkeypatch.setitem(vars(input_pipeline), 'preprocess_pair',
                      lambda cfg, image_path, audio_path: pair)
  return config, examples


@pytest.mark.slow
def test_explain_dataset_writes_files_and_cue_rates(fakes, tmp_path):
  config, examples = fakes
  summary = run.explain_dataset(config, str(tmp_path))
  out = tmp_path / 'explain'
  for ex_id in ('a/1', 'b 2', 'c3'):
    name = paths.safe_name(ex_id)  # 'c3' itself, the other two hashed.
    assert os.path.getsize(out / f'{name}.png') > 10_000
    assert os.path.getsize(out / f'{name}_kept.wav') > 1_000
    with np.load(out / f'{name}.npz') as z:
      for key in ('image_map', 'speech_map', 'frame_importance',
                  'modality_scores', 'target', 'probability', 'segments'):
        assert key in z.files, key
      assert z['image_map'].shape == (IMG, IMG)
      assert z['speech_map'].shape == (FRAMES, MELS)
      assert z['frame_importance'].shape == (FRAMES,)
      assert int(z['target']) == 0
      np.testing.assert_allclose(z['image_map'].sum(),
                                 z['modality_scores'][0], atol=1e-5)
      # The evidence is in the first time quarter: the kept speech starts
      # at 0 and the top leaf is in the top-left image quadrant.
      assert z['segments'][0, 0] == 0.0
      assert int(np.argmax(z['image_region_values'])) == 0
  with open(out / 'summary.json') as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(summary))
  assert summary['checkpoint_step'] == 42 and summary['num_examples'] == 3
  assert summary['evaluations_per_example'] == 16  # dnc, depth 2.
  # Examples 0 and 1 hit their cues, example 2's cues are elsewhere.
  assert summary['image_cue_hit_rate'] == pytest.approx(2 / 3)
  assert summary['speech_cue_hit_rate'] == pytest.approx(2 / 3)
  assert summary['image_cue_chance_rate'] == pytest.approx(
      (1 / 4 + 1 / 4 + 1 / 4) / 3)
  assert [r['correct'] for r in summary['examples']] == [True, True, False]


def test_cue_overlap_helpers():
  boxes = np.array([[0, 0, 4, 4], [0, 4, 4, 8], [4, 0, 8, 4], [4, 4, 8, 8]])
  assert run.top_image_hit(np.array([0, 3, 1, 0.]), boxes, (0, 5, 2, 6)) == (
      True, 0.25)
  assert run.top_image_hit(np.array([3, 0, 1, 0.]), boxes, (0, 4, 2, 6))[0] \
      is False  # Touching edges do not overlap (half-open boxes).
  spans = run.leaf_time_spans(np.array([[0, 0, 2, 4], [2, 0, 4, 4]]),
                              hop_length=10, sample_rate=100, num_samples=30)
  np.testing.assert_allclose(spans, [[0.0, 0.15], [0.15, 0.3]])
  assert run.top_speech_hit(np.array([0., 1.]), spans, (0.2, 0.25)) == (
      True, 0.5)


@pytest.mark.slow
def test_explain_files_prints_prediction(fakes, tmp_path, capsys):
  config, _ = fakes
  summary = run.explain_files(config, str(tmp_path), '/x/cat.png',
                              '/y/meow.wav')
  printed = capsys.readouterr().out
  assert 'prediction: anger' in printed and 'modality scores' in printed
  assert summary['predicted'] == 'anger'
  assert os.path.exists(tmp_path / 'explain' / 'cat__meow.png')
  assert os.path.exists(tmp_path / 'explain' / 'cat__meow.json')


@pytest.mark.slow  # Two whole explain runs.
def test_explain_dataset_uses_the_configured_baseline(fakes, tmp_path,
                                                    monkeypatch):
  """baseline=background reads the (fake) training split, explains with each
  of its inputs and records the cost; the mean one lowers v(empty)."""
  config, examples = fakes
  monkeypatch.setattr(run, '_training_inputs', lambda cfg: iter(
      [(examples['image'][:2], examples['spectrogram'][:2]),
       (examples['image'][2:], examples['spectrogram'][2:])]))
  monkeypatch.setitem(vars(input_pipeline), 'num_examples',
                      lambda cfg, split: 3)
  config.explain.num_examples = 2
  config.explain.baseline = 'background'
  config.explain.background_size = 2
  summary = run.explain_dataset(config, str(tmp_path))
  assert summary['baseline'] == 'background'
  assert summary['num_baselines'] == 2
  assert summary['evaluations_per_example'] == 2 * 16  # 2 x dnc, depth 2.
  zeros = run.explain_dataset(_config(), str(tmp_path / 'zeros'))
  for with_bg, with_zeros in zip(summary['examples'], zeros['examples']):
    # Backgrounds hold evidence for class 0; a zero input holds none.
    assert with_bg['baseline_probability'] > with_zeros['baseline_probability']


def test_mean_baseline_is_streamed_and_cached_in_the_workdir(fakes, tmp_path,
                                                             monkeypatch):
  config, examples = fakes
  batches = [(examples['image'][:2], examples['spectrogram'][:2]),
             (examples['image'][2:], examples['spectrogram'][2:])]
  monkeypatch.setattr(run, '_training_inputs', lambda cfg: iter(batches))
  config.explain.baseline = 'mean'
  shapes = examples['image'].shape[1:], examples['spectrogram'].shape[1:]
  b = run.make_baseline(config, *shapes, workdir=str(tmp_path))
  np.testing.assert_allclose(b.images[0], examples['image'].mean(0),
                             atol=1e-6)
  np.testing.assert_allclose(b.spectrograms[0],
                             examples['spectrogram'].mean(0), atol=1e-6)
  cache = tmp_path / 'explain' / 'baseline_mean.npz'
  assert cache.exists()
  monkeypatch.setattr(run, '_training_inputs', lambda cfg: iter(
      [(examples['image'][:1] * 0, examples['spectrogram'][:1] * 0)]))
  again = run.make_baseline(config, *shapes, workdir=str(tmp_path))
  np.testing.assert_array_equal(again.images, b.images)  # From the cache.


def test_explain_files_process_0_is_the_one_writer(fakes, tmp_path, capsys,
                                                   monkeypatch):
  """Another process computes the same summary but writes and prints
  nothing; process 0 writes the four files."""
  config, _ = fakes
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  other = run.explain_files(config, str(tmp_path), '/x/cat.png',
                            '/y/meow.wav')
  assert not (tmp_path / 'explain').exists()
  assert capsys.readouterr().out == ''
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  first = run.explain_files(config, str(tmp_path), '/x/cat.png',
                            '/y/meow.wav')
  assert 'prediction: anger' in capsys.readouterr().out
  assert other == first
  assert sorted(os.listdir(tmp_path / 'explain')) == [
      'cat__meow.json', 'cat__meow.npz', 'cat__meow.png', 'cat__meow.wav',
      'cat__meow_kept.wav']
  assert json.loads((tmp_path / 'explain' / 'cat__meow.json').read_text()
                    ) == json.loads(json.dumps(first))


def test_mean_baseline_cache_is_written_atomically(fakes, tmp_path,
                                                   monkeypatch):
  """A write that fails half way leaves neither a cache nor a temporary
  file; a reader never sees a partial .npz."""
  config, examples = fakes
  monkeypatch.setattr(run, '_training_inputs', lambda cfg: iter(
      [(examples['image'], examples['spectrogram'])]))
  config.explain.baseline = 'mean'
  shapes = examples['image'].shape[1:], examples['spectrogram'].shape[1:]
  real_savez = np.savez

  def broken_savez(f, **arrays):
    f.write(b'PK\x03\x04 half a zip')
    raise OSError('disk full')

  monkeypatch.setattr(np, 'savez', broken_savez)
  with pytest.raises(OSError, match='disk full'):
    run.make_baseline(config, *shapes, workdir=str(tmp_path))
  left = lambda: os.listdir(tmp_path / 'explain') if (  # pylint: disable=g-long-lambda
      tmp_path / 'explain').exists() else []
  assert left() == []
  monkeypatch.setattr(np, 'savez', real_savez)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)  # Not the writer.
  run.make_baseline(config, *shapes, workdir=str(tmp_path))
  assert left() == []
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  b = run.make_baseline(config, *shapes, workdir=str(tmp_path))
  assert os.listdir(tmp_path / 'explain') == ['baseline_mean.npz']
  with np.load(tmp_path / 'explain' / 'baseline_mean.npz') as z:
    np.testing.assert_array_equal(z['image'], b.images[0])
