"""One figure per explained example, like the paper's Fig. 5.

Left: the image with its DnCShap heat map overlaid (red = pushes towards the
predicted class, blue = away; symmetric colour scale). Right: the waveform,
each stretch coloured by the importance of its spectrogram frame, with the
kept segments (SPEC §5) shaded. The title gives the predicted label, its
softmax score and the true label when known. Matplotlib's Agg backend: no
display needed.
"""

from typing import Optional, Sequence

import matplotlib

matplotlib.use('Agg')
from matplotlib import collections as mcollections  # pylint: disable=g-import-not-at-top
from matplotlib import figure as mfigure  # pylint: disable=g-import-not-at-top
import numpy as np

IMAGE_TITLE = 'Image: DnCShap heat map'
SPEECH_TITLE = 'Speech: waveform coloured by frame importance'
MAX_WAVE_POINTS = 4000  # Waveform points drawn (decimated above this).


def make_figure(*, image_raw, image_map, waveform, sample_rate: int,
                hop_length: int, frame_importance, segments=(),
                predicted: str, probability: float,
                true_label: Optional[str] = None,
                modality_scores: Optional[Sequence[float]] = None,
                title: Optional[str] = None) -> mfigure.Figure:
  """Builds the Fig. 5-style figure (not shown, not saved).

  Args:
    image_raw: (h, w, 3) uint8 (or floats in [0, 1]) image for display; the
      heat map is stretched over it whatever its resolution.
    image_map: (H, W) per-pixel image attribution.
    waveform: (num_samples,) clip; frame t covers the hop-centred samples
      around t * hop_length (see explain.speech).
    frame_importance: (T,) speech importance per frame.
    segments: (K, 2) kept (start, end) seconds.
    predicted, probability: predicted label and its softmax score.
    true_label: shown when given.
    modality_scores: optional (image, speech) scores shown in the panel
      titles.
    title: optional prefix (e.g. the example id).
  """
  image_raw = np.asarray(image_raw)
  image_map = np.asarray(image_map, np.float64)
  waveform = np.asarray(waveform, np.float64)
  importance = np.asarray(frame_importance, np.float64)

  fig = mfigure.Figure(figsize=(11, 4), dpi=100)
  ax_image, ax_wave = fig.subplots(1, 2, gridspec_kw=dict(
      width_ratios=[1, 1.8]))

  # Image with its heat map.
  h, w = image_raw.shape[:2]
  ax_image.imshow(image_raw, extent=(0, w, h, 0))
  limit = float(np.abs(image_map).max()) or 1.0
  heat = ax_image.imshow(image_map, cmap='bwr', vmin=-limit, vmax=limit,
                         alpha=0.5, extent=(0, w, h, 0),
                         interpolation='nearest')
  fig.colorbar(heat, ax=ax_image, fraction=0.046, pad=0.04)
  image_title = IMAGE_TITLE
  if modality_scores is not None:
    image_title += f'\nimage score {float(modality_scores[0]):+.3f}'
  ax_image.set_title(image_title, fontsize=9)
  ax_image.set_axis_off()

  # Waveform coloured by the importance of each sample's frame.
  n = waveform.shape[0]
  step = max(1, -(-n // MAX_WAVE_POINTS))
  idx = np.arange(0, n, step)
  times = idx / sample_rate
  frame = np.clip((idx + hop_length // 2) // hop_length, 0,
                  importance.shape[0] - 1)  # Hop-centred frame of a sample.
  points = np.stack([times, waveform[idx]], axis=1)
  lines = mcollections.LineCollection(
      np.stack([points[:-1], points[1:]], axis=1), cmap='coolwarm',
      linewidths=0.8)
  ilimit = float(np.abs(importance).max()) or 1.0
  lines.set_array(importance[frame[:-1]])
  lines.set_clim(-ilimit, ilimit)
  ax_wave.add_collection(lines)
  for k, (start, end) in enumerate(np.asarray(segments).reshape(-1, 2)):
    ax_wave.axvspan(start, end, color='gold', alpha=0.25,
                    label='kept speech' if k == 0 else None)
  amplitude = float(np.abs(waveform).max()) or 1.0
  ax_wave.set_xlim(0, max(n, 1) / sample_rate)
  ax_wave.set_ylim(-1.1 * amplitude, 1.1 * amplitude)
  ax_wave.set_xlabel('time (s)')
  ax_wave.set_ylabel('amplitude')
  fig.colorbar(lines, ax=ax_wave, fraction=0.046, pad=0.04,
               label='frame importance')
  speech_title = SPEECH_TITLE
  if modality_scores is not None:
    speech_title += f'\nspeech score {float(modality_scores[1]):+.3f}'
  ax_wave.set_title(speech_title, fontsize=9)
  if len(segments):
    ax_wave.legend(loc='upper right', fontsize=8)

  heading = f'predicted: {predicted} (softmax {float(probability):.3f})'
  if true_label is not None:
    heading += f'   true: {true_label}'
  if title:
    heading = f'{title}   {heading}'
  fig.suptitle(heading)
  fig.tight_layout()
  return fig


def save_figure(path: str, **kwargs) -> str:
  """Builds the figure with `make_figure(**kwargs)` and writes it as a PNG."""
  fig = make_figure(**kwargs)
  fig.savefig(path, format='png')
  return path
