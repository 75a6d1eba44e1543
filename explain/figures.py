"""One figure per explained example, like the paper's Fig. 5.

Panels (only the modalities the model reads; a SER-only model gets the
speech panel alone):
  * Image: the input in its own colours, the regions that support the
    prediction most outlined (a black line on a white halo, visible on any
    colour); nothing is outlined when the image's share of p - v(∅) is
    negligible (the title says so). Shown at the photo's own aspect ratio
    when `display_size` is given (the model saw it resized: the title says
    so). A known cue (`cue_box`, the demo corpus's planted disc) is a
    dashed box.
  * Image scores: the same image in grey under a translucent map of each
    leaf region's score, in a purple-green scale that no image colour is
    confused with (green: pushes towards the predicted class, purple: away).
  * Speech: the waveform in grey over bands coloured by the score of each
    time band (its speech leaf regions summed over frequency); the kept
    segments (PAPER.md, "DnCShap") are the black bar under it; a known cue
    span (`cue_span`) is a dashed bracket over it.

Units: with the leaf regions given, the colours are region scores, which sum
to the modality's score (Owen/Shapley efficiency), and the image and speech
colour bars share one scale; the title gives the predicted probability p, the
baseline input's probability v(∅) and how p - v(∅) splits between the
modalities, so a small score under a high v(∅) reads as what it is. Without
regions, the colours fall back to per-pixel / per-frame values, labelled so.
The figure is a bare `matplotlib.figure.Figure` (no pyplot, no display);
the one backend setup of the project is `parallelnet.core.plotting`.
"""

from typing import Optional, Sequence

import matplotlib
from matplotlib import cm as mcm
from matplotlib import colors as mcolors
from matplotlib import figure as mfigure
from matplotlib import patches as mpatches
from matplotlib import patheffects
import numpy as np

from parallelnet.core import paths

IMAGE_TITLE = 'Image'
IMAGE_SCORES_TITLE = 'Image: region scores'
SPEECH_TITLE = 'Speech: waveform over time-band scores'
CMAP = 'PRGn'  # Purple (against) - white - green (for the predicted class).
OVERLAY_ALPHA = 0.6
OUTLINE_SHARE = 0.5  # Outline regions scoring >= this share of the top one.
MAX_WAVE_POINTS = 4000  # Waveform points drawn (decimated above this).
# A modality whose score is under this share of max(|p - v(∅)|, sum of the
# modality scores' magnitudes) gets no outline: its map is noise.
NEGLIGIBLE_SHARE = 0.05
CUE_STYLE = dict(edgecolor='#00d5ff', linestyle='--', linewidth=1.8,
                 fill=False)  # Cyan, dashed: apart from the PRGn scale.
LABEL_SIZE = 9  # Colour-bar labels and ticks, legends.
TITLE_SIZE = 10


def negligible(score, scores, probability=None, baseline_probability=None):
  """Whether `score` is a negligible share of what the modalities split."""
  total = sum(abs(float(s)) for s in scores)
  if probability is not None and baseline_probability is not None:
    total = max(total, abs(float(probability) - float(baseline_probability)))
  return abs(float(score)) <= NEGLIGIBLE_SHARE * total or total < 1e-9


def region_map(values, boxes, shape):
  """(H, W) map holding each leaf region's score on its box (y0 x0 y1 x1)."""
  out = np.zeros(shape, np.float64)
  for v, (y0, x0, y1, x1) in zip(np.asarray(values, np.float64),
                                 np.asarray(boxes)):
    out[y0:y1, x0:x1] = v
  return out


def time_bands(values, boxes):
  """[(t0, t1, score)] of the speech leaf regions summed per time span
  (boxes are t0 f0 t1 f1 in spectrogram frames / mel bins)."""
  bands = {}
  for v, (t0, _, t1, _) in zip(np.asarray(values, np.float64),
                               np.asarray(boxes)):
    bands[(int(t0), int(t1))] = bands.get((int(t0), int(t1)), 0.0) + v
  return [(t0, t1, s) for (t0, t1), s in sorted(bands.items())]


def _grey(image):
  x = np.asarray(image, np.float64)
  if x.max() > 1.0:
    x = x / 255.0
  if x.ndim == 3:
    x = x[..., :3] @ np.array([0.299, 0.587, 0.114])
  return x


def _outline(ax, mask, extent):
  """Draws the edge of `mask` (H, W bool) as a black line on a white halo."""
  if not mask.any() or mask.all():
    return
  # Each map pixel becomes 8x8 cells, so the 0.5 contour runs within 1/16
  # of a pixel of the region edges (square corners, not cut ones).
  # A ring of empty cells outside closes the outline along the image border.
  fine = np.pad(np.kron(mask.astype(np.float64), np.ones((8, 8))), 1)
  h, w = fine.shape
  x0, x1, y1, y0 = extent
  gx = x0 + (np.arange(w) - 0.5) * (x1 - x0) / (w - 2)
  gy = y0 + (np.arange(h) - 0.5) * (y1 - y0) / (h - 2)
  ax.contour(gx, gy, fine, levels=[0.5], colors='black', linewidths=1.4,
             path_effects=[patheffects.withStroke(linewidth=3.5,
                                                  foreground='white')])


def make_figure(*, image_raw, image_map, waveform, sample_rate: int,
                hop_length: int, frame_importance, segments=(),
                predicted: str, probability: float,
                true_label: Optional[str] = None,
                modality_scores: Optional[Sequence[float]] = None,
                title: Optional[str] = None,
                baseline_probability: Optional[float] = None,
                image_regions=None, speech_regions=None,
                modalities: Sequence[str] = ('image', 'speech'),
                display_size=None, cue_box=None, cue_span=None
                ) -> mfigure.Figure:
  """Builds the Fig. 5-style figure (not shown, not saved).

  Args:
    image_raw: (h, w, 3) uint8 (or floats in [0, 1]) image for display; the
      scores are stretched over it whatever its resolution.
    image_map: (H, W) per-pixel image attribution (used without regions).
    waveform: (num_samples,) clip; frame t covers the hop-centred samples
      around t * hop_length (see explain.speech).
    frame_importance: (T,) speech importance per frame (used without
      regions).
    segments: (K, 2) kept (start, end) seconds.
    predicted, probability: predicted label and its softmax score p.
    true_label: shown when given.
    modality_scores: (image, speech) scores.
    title: optional prefix (e.g. the example id).
    baseline_probability: v(∅), the predicted class's probability on the
      baseline input (every region removed).
    image_regions, speech_regions: optional (values, boxes) of the leaf
      regions; with them the colours are region scores.
    modalities: the modalities the model reads; the others get no panel.
    display_size: (height, width) of the photo before the model's resize;
      the image panels take its aspect ratio (default: image_raw's).
    cue_box: known cue (y0, x0, y1, x1) in image_map pixels, or None.
    cue_span: known cue (t0, t1) in seconds, or None.
  """
  modalities = tuple(modalities)
  if not modalities or set(modalities) - {'image', 'speech'}:
    raise ValueError(f'modalities must be image and/or speech; got '
                     f'{modalities}.')
  scores = {}
  if modality_scores is not None:
    scores = dict(zip(('image', 'speech'), map(float, modality_scores)))

  # Colour values in score units when the regions are known.
  image_map = np.asarray(image_map, np.float64)
  if image_regions is not None:
    image_values = region_map(*image_regions, image_map.shape)
    image_unit = 'region score (sum = image score)'
  else:
    image_values = image_map
    image_unit = 'per-pixel score (sum = image score)'
  importance = np.asarray(frame_importance, np.float64)
  if speech_regions is not None:
    bands = time_bands(*speech_regions)
    speech_unit = 'time-band score (sum = speech score)'
  else:
    bands = [(t, t + 1, float(v)) for t, v in enumerate(importance)]
    speech_unit = 'frame importance (mean over mel bins)'
  shared = image_regions is not None and speech_regions is not None
  limits = {'image': float(np.abs(image_values).max()),
            'speech': max([abs(s) for _, _, s in bands], default=0.0)}
  if shared:
    both = max(limits[m] for m in modalities)
    limits = {m: both for m in limits}
  norms = {m: mcolors.Normalize(-(limits[m] or 1.0), limits[m] or 1.0)
           for m in limits}
  cmap = matplotlib.colormaps[CMAP]

  ratios = ([1, 1] if 'image' in modalities else []) + (
      [2] if 'speech' in modalities else [])
  fig = mfigure.Figure(figsize=(1.4 + 3.1 * sum(ratios), 4.3), dpi=100)
  axes = list(np.atleast_1d(fig.subplots(1, len(ratios), gridspec_kw=dict(
      width_ratios=ratios))))

  if 'image' in modalities:
    ax_image, ax_scores = axes.pop(0), axes.pop(0)
    image_raw = np.asarray(image_raw)
    h, w = image_raw.shape[:2]
    resized = ''
    if display_size is not None:
      dh, dw = (int(v) for v in display_size)
      if dh * w != dw * h:
        resized = f'\nshown {dw}x{dh}; the model saw it resized to {w}x{h}'
      h, w = dh, dw
    extent = (0, w, h, 0)
    top = image_values.max()
    quiet = 'image' in scores and negligible(
        scores['image'], [scores[m] for m in modalities if m in scores],
        probability, baseline_probability)
    strong = (image_values >= OUTLINE_SHARE * top) if top > 0 and not (
        quiet) else np.zeros(image_values.shape, bool)
    ax_image.imshow(image_raw, extent=extent)
    _outline(ax_image, strong, extent)
    if quiet:
      note = 'nothing outlined: the image score is a negligible share'
    elif strong.any() and not strong.all():
      note = 'outlined: strongest support'
    else:
      note = 'no region stands out'
    ax_image.set_title(f'{IMAGE_TITLE} ({note}){resized}',
                       fontsize=TITLE_SIZE)
    ax_image.set_axis_off()
    cue_patches = []
    if cue_box is not None and np.all(np.asarray(cue_box) >= 0):
      y0, x0, y1, x1 = np.asarray(cue_box, np.float64)
      mh, mw = image_values.shape
      sy, sx = h / mh, w / mw
      for ax in (ax_image, ax_scores):
        cue_patches.append(ax.add_patch(mpatches.Rectangle(
            (x0 * sx, y0 * sy), (x1 - x0) * sx, (y1 - y0) * sy,
            label='known cue', **CUE_STYLE)))
      ax_image.legend(handles=cue_patches[:1], loc='lower right',
                      fontsize=LABEL_SIZE, framealpha=0.8)
    ax_scores.imshow(_grey(image_raw), cmap='gray', vmin=0, vmax=1,
                     extent=extent)
    heat = ax_scores.imshow(image_values, cmap=cmap, norm=norms['image'],
                            alpha=OVERLAY_ALPHA, extent=extent,
                            interpolation='nearest')
    _outline(ax_scores, strong, extent)
    scores_title = IMAGE_SCORES_TITLE
    if 'image' in scores:
      scores_title += f'\nimage score {scores["image"]:+.3f}'
    ax_scores.set_title(scores_title, fontsize=TITLE_SIZE)
    ax_scores.set_axis_off()
    for ax in (ax_image, ax_scores):  # The outline's grid overhangs a bit.
      ax.set_xlim(0, w)
      ax.set_ylim(h, 0)
    bar = fig.colorbar(mcm.ScalarMappable(norms['image'], cmap), ax=ax_scores,
                       fraction=0.046, pad=0.04)
    bar.set_label(image_unit, fontsize=LABEL_SIZE)
    bar.ax.tick_params(labelsize=LABEL_SIZE)
    del heat

  if 'speech' in modalities:
    ax_wave = axes.pop(0)
    waveform = np.asarray(waveform, np.float64)
    n = waveform.shape[0]
    duration = max(n, 1) / sample_rate
    for t0, t1, s in bands:  # Frame t is centred on sample t * hop_length.
      a = max(0.0, (t0 * hop_length - hop_length / 2) / sample_rate)
      b = min(duration, (t1 * hop_length - hop_length / 2) / sample_rate)
      ax_wave.axvspan(a, b, color=cmap(norms['speech'](s)), alpha=0.8,
                      linewidth=0)
    step = max(1, -(-n // MAX_WAVE_POINTS))
    idx = np.arange(0, n, step)
    ax_wave.plot(idx / sample_rate, waveform[idx], color='#333333',
                 linewidth=0.6)
    amplitude = float(np.abs(waveform).max()) or 1.0
    kept = np.asarray(segments, np.float64).reshape(-1, 2)
    if len(kept):
      ax_wave.broken_barh([(a, b - a) for a, b in kept],
                          (-1.28 * amplitude, 0.08 * amplitude),
                          facecolors='black', label='kept speech')
    if cue_span is not None and np.all(np.asarray(cue_span) >= 0):
      t0, t1 = (float(v) for v in cue_span)
      ax_wave.add_patch(mpatches.Rectangle(
          (t0, -1.05 * amplitude), t1 - t0, 2.1 * amplitude,
          label='known cue', **CUE_STYLE))
    if ax_wave.get_legend_handles_labels()[0]:
      ax_wave.legend(loc='upper right', fontsize=LABEL_SIZE)
    ax_wave.set_xlim(0, duration)
    ax_wave.set_ylim(-1.32 * amplitude, 1.1 * amplitude)
    ax_wave.set_xlabel('time (s)', fontsize=LABEL_SIZE)
    ax_wave.set_ylabel('amplitude', fontsize=LABEL_SIZE)
    ax_wave.tick_params(labelsize=LABEL_SIZE)
    bar = fig.colorbar(mcm.ScalarMappable(norms['speech'], cmap), ax=ax_wave,
                       fraction=0.046, pad=0.04)
    bar.set_label(speech_unit, fontsize=LABEL_SIZE)
    bar.ax.tick_params(labelsize=LABEL_SIZE)
    speech_title = SPEECH_TITLE
    if 'speech' in scores:
      speech_title += f'\nspeech score {scores["speech"]:+.3f}'
    ax_wave.set_title(speech_title, fontsize=TITLE_SIZE)

  heading = f'predicted: {predicted}, p = {float(probability):.3f}'
  if true_label is not None:
    heading += f'   true: {true_label}'
  if title:
    heading = f'{title}   {heading}'
  if baseline_probability is not None:
    b = float(baseline_probability)
    split = ' + '.join(f'{m} {scores[m]:+.3f}' for m in modalities
                       if m in scores)
    heading += (f'\nbaseline input v(∅) = {b:.3f};  p - v(∅) = '
                f'{float(probability) - b:+.3f}')
    if split:
      heading += f' = {split}'
  fig.suptitle(heading, fontsize=TITLE_SIZE + 1)
  fig.tight_layout()
  return fig


def save_figure(path: str, **kwargs) -> str:
  """Builds the figure with `make_figure(**kwargs)` and writes it as a PNG
  (atomically: a reader never sees half a file)."""
  fig = make_figure(**kwargs)
  with paths.atomic_open(path, 'wb') as f:
    fig.savefig(f, format='png')
  return path
