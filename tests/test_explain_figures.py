"""Tests of explain/figures.py: the Fig. 5-style PNG."""

import matplotlib.image
import numpy as np

from explain import figures

IMAGE_VALUES = np.array([0.4, -0.05, -0.02, -0.03])  # Sum: image score 0.3.
IMAGE_BOXES = np.array([[0, 0, 8, 8], [0, 8, 8, 16], [8, 0, 16, 8],
                        [8, 8, 16, 16]])
SPEECH_VALUES = np.array([0.05, 0.01, -0.1, -0.06])  # Sum: speech -0.1.
SPEECH_BOXES = np.array([[0, 0, 16, 16], [0, 16, 16, 32], [16, 0, 32, 16],
                         [16, 16, 32, 32]])  # Two time bands x two halves.


def _kwargs():
  rng = np.random.default_rng(0)
  image_map = figures.region_map(IMAGE_VALUES, IMAGE_BOXES, (16, 16)) / 64
  return dict(
      image_raw=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
      image_map=image_map,
      waveform=np.sin(np.arange(31 * 64) / 5.0) * 0.5,
      sample_rate=8000, hop_length=64,
      frame_importance=np.linspace(-1, 1, 32),
      segments=np.array([[0.05, 0.12], [0.2, 0.248]]),
      predicted='happy', probability=0.875, true_label='sad',
      modality_scores=(0.3, -0.1), title='ex7', baseline_probability=0.675,
      image_regions=(IMAGE_VALUES, IMAGE_BOXES),
      speech_regions=(SPEECH_VALUES, SPEECH_BOXES))


def _axes(fig, title):
  return [ax for ax in fig.axes if ax.get_title().startswith(title)]


def test_colours_are_region_scores_and_the_title_relates_them():
  fig = figures.make_figure(**_kwargs())
  (scores_ax,) = _axes(fig, figures.IMAGE_SCORES_TITLE)
  (wave_ax,) = _axes(fig, figures.SPEECH_TITLE)
  assert '+0.300' in scores_ax.get_title()
  assert '-0.100' in wave_ax.get_title()
  heading = fig._suptitle.get_text()  # pylint: disable=protected-access
  for part in ('happy', 'p = 0.875', 'true: sad', 'v(∅) = 0.675',
               'p - v(∅) = +0.200', 'image +0.300 + speech -0.100'):
    assert part in heading, (part, heading)
  # The overlay holds each region's score (the values sum to the image
  # score over the regions), not per-pixel shares.
  overlay = scores_ax.get_images()[-1].get_array()
  np.testing.assert_allclose(np.unique(overlay), np.sort(IMAGE_VALUES))
  # One coloured background per time band (its regions summed), the
  # kept segments as a bar of two pieces.
  assert len(wave_ax.patches) == 2
  bands = figures.time_bands(SPEECH_VALUES, SPEECH_BOXES)
  np.testing.assert_allclose([b[2] for b in bands], [0.06, -0.16])
  (kept,) = wave_ax.collections
  assert len(kept.get_paths()) == 2
  # Image and speech colour bars: the same units and the same scale.
  bars = [ax for ax in fig.axes if ax.get_ylabel().startswith(
      ('region score', 'time-band score'))]
  assert len(bars) == 2
  assert bars[0].get_ylim() == bars[1].get_ylim() == (-0.4, 0.4)
  # The strongest region (top left, 0.4) is outlined on the input image.
  (image_ax,) = _axes(fig, figures.IMAGE_TITLE + ' (')
  assert len(image_ax.collections) == 1  # The outline contour.


def test_unimodal_model_gets_only_its_modality():
  kwargs = _kwargs()
  fig = figures.make_figure(**dict(kwargs, modalities=('speech',)))
  assert not _axes(fig, figures.IMAGE_TITLE)
  assert len(_axes(fig, figures.SPEECH_TITLE)) == 1
  heading = fig._suptitle.get_text()  # pylint: disable=protected-access
  assert 'speech -0.100' in heading and 'image' not in heading
  fig = figures.make_figure(**dict(kwargs, modalities=('image',)))
  assert not _axes(fig, figures.SPEECH_TITLE)
  assert len(_axes(fig, figures.IMAGE_SCORES_TITLE)) == 1


def test_without_regions_the_units_are_labelled_per_pixel():
  kwargs = _kwargs()
  del kwargs['image_regions'], kwargs['speech_regions']
  fig = figures.make_figure(**kwargs)
  labels = [ax.get_ylabel() for ax in fig.axes]
  assert any(l.startswith('per-pixel score') for l in labels), labels
  assert any(l.startswith('frame importance') for l in labels), labels


def test_png_written_and_not_blank(tmp_path):
  path = str(tmp_path / 'ex.png')
  kwargs = _kwargs()
  kwargs.update(true_label=None)
  figures.save_figure(path, **kwargs)
  pixels = matplotlib.image.imread(path)
  assert pixels.shape[0] == 430 and pixels.shape[1] == 1380
  assert pixels[..., :3].std() > 0.05  # Not a blank canvas.


def _text_sizes(fig):
  return [t.get_fontsize() for ax in fig.axes
          for t in [ax.title, ax.xaxis.label, ax.yaxis.label]
          + ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]


def test_labels_are_readable_and_fit_their_colour_bars():
  fig = figures.make_figure(**_kwargs())
  assert min(_text_sizes(fig)) >= figures.LABEL_SIZE
  fig.canvas.draw()
  for ax in fig.axes:
    label = ax.yaxis.label
    if label.get_text().startswith(('region score', 'time-band score')):
      # The rotated label is no taller than its colour bar.
      assert (label.get_window_extent().height
              <= ax.get_window_extent().height + 1), label.get_text()


def test_negligible_image_share_outlines_nothing_and_says_so():
  kwargs = _kwargs()
  # The image score is 0.001 of p - v(∅) = 0.2: its map is noise.
  values = np.array([0.0012, -0.0004, 0.0001, -0.0008])
  kwargs.update(image_regions=(values, IMAGE_BOXES),
                modality_scores=(values.sum(), 0.2 - values.sum()))
  fig = figures.make_figure(**kwargs)
  (image_ax,) = _axes(fig, figures.IMAGE_TITLE + ' (')
  assert not image_ax.collections  # No outline contour.
  assert 'nothing outlined' in image_ax.get_title()
  (scores_ax,) = _axes(fig, figures.IMAGE_SCORES_TITLE)
  assert not scores_ax.collections
  # A clear image score still gets its outline.
  fig = figures.make_figure(**_kwargs())
  (image_ax,) = _axes(fig, figures.IMAGE_TITLE + ' (')
  assert len(image_ax.collections) == 1
  assert 'strongest support' in image_ax.get_title()


def test_known_cue_box_and_span_are_drawn():
  kwargs = dict(_kwargs(), cue_box=(2, 4, 6, 12), cue_span=(0.1, 0.2))
  fig = figures.make_figure(**kwargs)
  (image_ax,) = _axes(fig, figures.IMAGE_TITLE + ' (')
  (box,) = [p for p in image_ax.patches if p.get_label() == 'known cue']
  # Map pixels (16x16) -> the displayed 32x32 image: twice the size.
  assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (
      8, 4, 16, 8)
  (wave_ax,) = _axes(fig, figures.SPEECH_TITLE)
  (span,) = [p for p in wave_ax.patches if p.get_label() == 'known cue']
  assert np.isclose(span.get_x(), 0.1) and np.isclose(span.get_width(), 0.1)
  # Without a cue (-1: the dataset has none) nothing is drawn.
  fig = figures.make_figure(**dict(_kwargs(), cue_box=(-1, -1, -1, -1)))
  (image_ax,) = _axes(fig, figures.IMAGE_TITLE + ' (')
  assert not [p for p in image_ax.patches if p.get_label() == 'known cue']


def test_image_shown_at_its_own_aspect_ratio():
  fig = figures.make_figure(**dict(_kwargs(), display_size=(192, 256)))
  (image_ax,) = _axes(fig, figures.IMAGE_TITLE + ' (')
  assert image_ax.get_xlim() == (0, 256) and image_ax.get_ylim() == (192, 0)
  assert 'resized to 32x32' in image_ax.get_title()
  fig.canvas.draw()  # Applies the equal aspect to the axes' box.
  box = image_ax.get_position()
  width, height = fig.get_size_inches()
  ratio = box.width * width / (box.height * height)
  assert abs(ratio - 256 / 192) < 0.02, ratio
