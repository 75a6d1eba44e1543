"""Tests of explain/figures.py: the Fig. 5-style PNG."""

import matplotlib.image
import numpy as np

from explain import figures


def _kwargs():
  rng = np.random.default_rng(0)
  image_map = np.zeros((16, 16))
  image_map[:8, :8] = 1.0  # One hot region, top left.
  return dict(
      image_raw=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
      image_map=image_map,
      waveform=np.sin(np.arange(31 * 64) / 5.0) * 0.5,
      sample_rate=8000, hop_length=64,
      frame_importance=np.linspace(-1, 1, 32),
      segments=np.array([[0.05, 0.12], [0.2, 0.248]]),
      predicted='happy', probability=0.875, true_label='sad',
      modality_scores=(0.3, -0.1), title='ex7')


def test_figure_has_the_paper_panels_and_labels():
  fig = figures.make_figure(**_kwargs())
  titles = [ax.get_title() for ax in fig.axes]
  assert any(t.startswith(figures.IMAGE_TITLE) and '+0.300' in t
             for t in titles)
  assert any(t.startswith(figures.SPEECH_TITLE) and '-0.100' in t
             for t in titles)
  heading = fig._suptitle.get_text()  # pylint: disable=protected-access
  assert 'happy' in heading and '0.875' in heading and 'sad' in heading
  wave_ax = next(ax for ax in fig.axes if ax.get_title().startswith(
      figures.SPEECH_TITLE))
  # The two kept segments are shaded, the waveform drawn as coloured lines.
  assert len(wave_ax.patches) == 2
  assert len(wave_ax.collections) == 1
  colours = wave_ax.collections[0].get_array()
  assert colours.min() < 0 < colours.max()  # Coloured by importance.


def test_png_written_and_not_blank(tmp_path):
  path = str(tmp_path / 'ex.png')
  kwargs = _kwargs()
  kwargs.update(true_label=None)
  figures.save_figure(path, **kwargs)
  pixels = matplotlib.image.imread(path)
  assert pixels.shape[0] == 400 and pixels.shape[1] == 1100
  assert pixels[..., :3].std() > 0.05  # Not a blank canvas.
