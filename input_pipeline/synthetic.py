"""The synthetic_sier demo corpus: speech + image pairs with planted cues.

Generated deterministically from a seed into the manifest format of
manifest.py (PNG images, 16-bit WAV clips, manifest.csv) and then built by
the same TFDS builder code as real data.

Design: the class mix of IIT-R SIER, and COMPLEMENTARY cues, one
binary cue per modality, so that only both together name the class:

  class   share   image cue A (colour of a     speech cue B (prosody of one
                  striped disc)                span of the utterance)
  happy   53.1%   warm (red/orange)            high, rising pitch, fast syllables
  anger   24.6%   warm                         low, falling pitch, slow syllables
  sad     16.8%   cold (blue/cyan)             low, falling
  hate     5.4%   cold                         high, rising

Pairing happy with anger on the image cue and with hate on the speech cue
keeps both unimodal ceilings low: an image-only model can at best answer
happy|sad, 53.1 + 16.8 = 69.9%; a speech-only model happy|anger,
53.1 + 24.6 = 77.7%; both cues together give 100% before noise. Each cue is
flipped independently with probability `cue_noise` (default 2%); the
Bayes-optimal accuracies are then 68.6% (image), 76.2% (speech) and 96.0%
(both): a gap of ~20 points (see `ceilings`).

Localised evidence: the disc sits at a random place in the image among
distractor shapes (green/grey/white, no label information) on a textured
background; its bounding box is `image_cue_box` ("y0 x0 y1 x1", pixels, end
exclusive). The cue prosody fills one random span of ~30% of the clip,
recorded as `speech_cue_span` ("t0 t1", seconds); the rest of the clip is
neutral speech (mid pitch ~150-220 Hz, medium rate). Speech is a sawtooth
glottal source with a pitch contour, per-syllable vowel formants (three
resonators) and a syllable envelope with pauses.

Image cue kinds (`image_cue`): 'colour' (the default above) or 'side': the
disc is always warm and its bit is the half it sits in (left: the cold
classes sad/hate, right: happy/anger), so both image values are carried by
positive evidence the model must find (with 'colour', a model can read "no
warm disc" as cold). Class mix, speech cue, noise and ceilings are the same.
"""

import colorsys
import csv
import functools
import json
import multiprocessing
import os
import warnings

import numpy as np
from PIL import Image
import soundfile as sf
import threadpoolctl

from parallelnet.core import paths

CLASS_MIX = {'happy': 0.531, 'anger': 0.246, 'sad': 0.168, 'hate': 0.054}
IMAGE_CUE = {'happy': 1, 'anger': 1, 'sad': 0, 'hate': 0}  # 1 = warm colour.
SPEECH_CUE = {'happy': 1, 'hate': 1, 'anger': 0, 'sad': 0}  # 1 = high/rising.
IMAGE_CUE_KINDS = ('colour', 'side')  # What carries the image bit (above).
CUE_SPAN_FRACTION = 0.3  # Share of the clip carrying the speech cue.
# Vowel formants (F1, F2, F3) in Hz, roughly a, e, i, o, u.
VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [390, 1990, 2550],
                   [570, 840, 2410], [440, 1020, 2240]], np.float64)
FORMAT_VERSION = 2  # Bump (and SyntheticSier.VERSION) when the content changes.


def class_counts(num_examples, classes):
  """Per-class counts with the IIT-R SIER mix (largest-remainder rounding)."""
  if sorted(classes) != sorted(CLASS_MIX):
    raise ValueError(f'synthetic_sier has classes {sorted(CLASS_MIX)}; '
                     f'config.dataset.classes is {list(classes)}.')
  exact = np.array([CLASS_MIX[c] * num_examples for c in classes])
  counts = np.floor(exact).astype(int)
  order = np.argsort(-(exact - counts), kind='stable')
  counts[order[:num_examples - counts.sum()]] += 1
  return dict(zip(classes, counts.tolist()))


def ceilings(cue_noise=0.02):
  """Bayes-optimal accuracy from the image cue alone, the speech cue alone,
  and both, when each shown cue is flipped with probability `cue_noise`."""
  q = cue_noise

  def p_obs(c, a, b, use_a, use_b):
    pa = (1 - q if a == IMAGE_CUE[c] else q) if use_a else 1.0
    pb = (1 - q if b == SPEECH_CUE[c] else q) if use_b else 1.0
    return CLASS_MIX[c] * pa * pb

  def acc(use_a, use_b):
    obs = [(a, b) for a in ((0, 1) if use_a else (0,))
           for b in ((0, 1) if use_b else (0,))]
    return sum(max(p_obs(c, a, b, use_a, use_b) for c in CLASS_MIX)
               for a, b in obs) / sum(CLASS_MIX.values())

  return dict(image=acc(True, False), speech=acc(False, True),
              fused=acc(True, True))


# --- Image -------------------------------------------------------------------


def make_image(rng, size, warm, cue='colour'):
  """(size, size, 3) uint8 image and the cue disc's box (y0, x0, y1, x1).

  cue='colour': `warm` picks the disc's hue (warm or cold), anywhere;
  cue='side': the disc is warm and `warm` puts it in the right half (else
  the left), wholly inside that half.
  """
  if cue not in IMAGE_CUE_KINDS:
    raise ValueError(f'image cue {cue!r}; expected one of {IMAGE_CUE_KINDS}.')
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  # Background: a low-saturation colour with a soft gradient and grain.
  base = rng.uniform(0.35, 0.65) + rng.uniform(-0.06, 0.06, 3)
  grad = rng.uniform(-0.15, 0.15, 2)
  img = base + (grad[0] * yy + grad[1] * xx)[..., None]
  img = img + 0.04 * rng.standard_normal((size, size, 3), np.float32)
  # Distractors: green / grey / white shapes with their own texture.
  palette = np.array([[0.2, 0.65, 0.25], [0.5, 0.5, 0.5], [0.92, 0.92, 0.88],
                      [0.1, 0.45, 0.15], [0.25, 0.25, 0.25]])
  for _ in range(rng.integers(2, 5)):
    col = palette[rng.integers(len(palette))]
    cy, cx = rng.uniform(0.1, 0.9, 2)
    hh, hw = rng.uniform(0.08, 0.18, 2)
    kind = rng.integers(3)
    if kind == 0:  # rectangle
      m = (np.abs(yy - cy) < hh) & (np.abs(xx - cx) < hw)
    elif kind == 1:  # triangle
      m = (yy > cy - hh) & (yy < cy + hh) & (
          np.abs(xx - cx) < hw * (yy - cy + hh) / (2 * hh))
    else:  # ring
      d = np.hypot(yy - cy, xx - cx)
      m = (d < hh) & (d > hh * 0.55)
    check = ((np.floor(yy * size / 4) + np.floor(xx * size / 4)) % 2)[..., None]
    img = np.where(m[..., None], col * (0.85 + 0.15 * check), img)
  # The cue: a striped disc, warm (hue 0-0.08) or cold (hue 0.52-0.64).
  r = rng.uniform(0.14, 0.2)
  if cue == 'side':
    cy = rng.uniform(r, 1 - r)
    cx = rng.uniform(r, 0.5 - r) + (0.5 if warm else 0.0)
    hue = rng.uniform(0.0, 0.08)
  else:
    cy, cx = rng.uniform(r, 1 - r, 2)
    hue = rng.uniform(0.0, 0.08) if warm else rng.uniform(0.52, 0.64)
  theta = rng.uniform(0, np.pi)
  stripes = 0.5 + 0.5 * np.sin(
      (np.cos(theta) * yy + np.sin(theta) * xx) * 2 * np.pi * rng.uniform(6, 10))
  # HSV with fixed hue and saturation: RGB scales linearly with the value.
  disc_rgb = (0.6 + 0.4 * stripes)[..., None] * np.array(
      colorsys.hsv_to_rgb(hue, 0.85, 1.0), np.float32)
  m = np.hypot(yy - cy, xx - cx) < r
  img = np.where(m[..., None], disc_rgb, img)
  ys, xs = np.nonzero(m)
  box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
  return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), box


# --- Speech ------------------------------------------------------------------


def _syllables(rng, t0, t1, rate, sr):
  """Syllable (start, end) sample indices filling [t0, t1) seconds."""
  out, t = [], t0
  while t < t1 - 0.03:
    dur = rng.uniform(0.7, 1.1) / rate
    gap = rng.uniform(0.15, 0.3) / rate
    end = min(t + dur, t1)
    out.append((int(t * sr), int(end * sr)))
    t = end + gap
  return out


def _resonator(f, bw, sr):
  """Second-order all-pole resonator (b, a) at f Hz with bandwidth bw Hz."""
  rad = np.exp(-np.pi * bw / sr)
  a = [1.0, -2 * rad * np.cos(2 * np.pi * f / sr), rad * rad]
  return [1 - rad], a


def make_speech(rng, sample_rate, duration_s, high):
  """Speech-like clip (float32) and the cue span (t0, t1) in seconds."""
  sr, n = sample_rate, int(round(duration_s * sample_rate))
  span = CUE_SPAN_FRACTION * duration_s
  t0 = rng.uniform(0, duration_s - span)
  t1 = t0 + span
  f0 = np.zeros(n, np.float32)
  env = np.zeros(n, np.float32)
  segments = []  # (start, end, vowel index)
  regions = [(0.0, t0, 'neutral'), (t0, t1, 'cue'), (t1, duration_s, 'neutral')]
  for a, b, kind in regions:
    if kind == 'cue':
      rate = rng.uniform(7, 9) if high else rng.uniform(2.5, 3.5)
    else:
      rate = rng.uniform(4.5, 5.5)
    for s, e in _syllables(rng, a, b, rate, sr):
      if e - s < 8:
        continue
      if kind == 'cue' and high:  # high, rising
        lo = rng.uniform(290, 330)
        contour = np.linspace(lo, lo * rng.uniform(1.25, 1.4), e - s)
      elif kind == 'cue':  # low, falling
        hi = rng.uniform(100, 115)
        contour = np.linspace(hi, hi * rng.uniform(0.7, 0.8), e - s)
      else:  # neutral: mid pitch, gentle random drift
        mid = rng.uniform(160, 210)
        contour = mid * np.linspace(1, rng.uniform(0.92, 1.08), e - s)
      f0[s:e] = contour
      w = np.sin(np.linspace(0, np.pi, e - s)) ** 0.7
      env[s:e] = w * rng.uniform(0.8, 1.0)
      segments.append((s, e, rng.integers(len(VOWELS))))
  # Glottal source: sawtooth with continuous phase, slight jitter.
  f0_j = f0 * (1 + 0.01 * rng.standard_normal(n, np.float32))  # jitter
  phase = np.cumsum(f0_j / sr)
  source = (2 * (phase % 1.0) - 1) * env
  # Here, not at the top: scipy.signal costs ~0.9 CPU-s to import, and every
  # process that reads a built dataset imports this module (builders.py).
  import scipy.signal  # pylint: disable=g-import-not-at-top
  out = np.zeros(n, np.float32)
  for s, e, v in segments:
    seg = source[s:e]
    y = 0
    for k, (f, bw) in enumerate(zip(VOWELS[v] * rng.uniform(0.95, 1.05),
                                    (80, 100, 140))):
      if f < sr / 2 - 200:
        b_, a_ = _resonator(f, bw, sr)
        y = y + scipy.signal.lfilter(b_, a_, seg) * (1.0, 0.6, 0.3)[k]
    out[s:e] = y
  out = out + 0.002 * rng.standard_normal(n, np.float32)  # Noise floor.
  out = 0.7 * out / (np.abs(out).max() + 1e-9)
  return out.astype(np.float32), (round(t0, 4), round(t1, 4))


# --- Corpus ------------------------------------------------------------------


def _example(i, *, seed, label, image_cue, speech_cue, folder, image_size,
             sample_rate, duration_s, cue_kind='colour'):
  """Generates and writes example i; returns its manifest row."""
  rng = np.random.default_rng([seed, i])
  img, box = make_image(rng, image_size, bool(image_cue), cue_kind)
  wav, span = make_speech(rng, sample_rate, duration_s, bool(speech_cue))
  ex_id = f'syn{i:05d}'
  Image.fromarray(img).save(os.path.join(folder, 'images', ex_id + '.png'),
                            compress_level=1)
  sf.write(os.path.join(folder, 'audio', ex_id + '.wav'), wav, sample_rate,
           subtype='PCM_16')
  return dict(id=ex_id, image=f'images/{ex_id}.png', audio=f'audio/{ex_id}.wav',
              label=label, image_cue_box=' '.join(map(str, box)),
              speech_cue_span=f'{span[0]} {span[1]}',
              image_cue=int(image_cue), speech_cue=int(speech_cue))


def plan(num_examples, seed, classes, cue_noise=0.02):
  """Labels and (possibly noise-flipped) cues per example, deterministic."""
  counts = class_counts(num_examples, classes)
  labels = np.concatenate([[c] * k for c, k in counts.items()])
  rng = np.random.default_rng(seed)
  labels = labels[rng.permutation(num_examples)]
  flip_a = rng.random(num_examples) < cue_noise
  flip_b = rng.random(num_examples) < cue_noise
  image_cue = np.array([IMAGE_CUE[c] for c in labels]) ^ flip_a
  speech_cue = np.array([SPEECH_CUE[c] for c in labels]) ^ flip_b
  return labels, image_cue, speech_cue


def generate_corpus(folder, *, num_examples, seed, classes, image_size,
                    sample_rate, duration_s, cue_noise=0.02, workers=None,
                    image_cue='colour'):
  """Writes the corpus (manifest.csv, images/, audio/) into `folder`.

  `image_cue`: 'colour' or 'side' (module docstring). Skips the work when
  `folder` already holds the same corpus (same arguments); returns `folder`.
  """
  if image_cue not in IMAGE_CUE_KINDS:
    raise ValueError(f'image_cue={image_cue!r}; expected one of '
                     f'{IMAGE_CUE_KINDS}.')
  params = dict(num_examples=int(num_examples), seed=int(seed),
                classes=list(classes), image_size=int(image_size),
                sample_rate=int(sample_rate), duration_s=float(duration_s),
                cue_noise=float(cue_noise), version=FORMAT_VERSION)
  cue_kind = image_cue
  if cue_kind != 'colour':  # The default's record (and folder) lacks it.
    params['image_cue'] = cue_kind
  done = os.path.join(folder, 'corpus.json')
  if os.path.exists(done):
    with open(done) as f:
      if json.load(f) == params:
        return folder
    os.remove(done)  # Another corpus's marker: gone before its files change.
  os.makedirs(os.path.join(folder, 'images'), exist_ok=True)
  os.makedirs(os.path.join(folder, 'audio'), exist_ok=True)
  labels, image_cue, speech_cue = plan(num_examples, seed, classes, cue_noise)
  fn = functools.partial(_example, seed=seed, folder=folder,
                         image_size=image_size, sample_rate=sample_rate,
                         duration_s=duration_s, cue_kind=cue_kind)
  args = [dict(i=i, label=str(labels[i]), image_cue=image_cue[i],
               speech_cue=speech_cue[i]) for i in range(num_examples)]
  workers = workers or min(os.cpu_count() or 1, 8)
  with threadpoolctl.threadpool_limits(1):  # Small arrays: no BLAS threads.
    if workers > 1 and num_examples >= 256:
      with warnings.catch_warnings():  # Workers run numpy/PIL only: fork ok.
        warnings.filterwarnings('ignore', message='.*fork.*')
        with multiprocessing.get_context('fork').Pool(
            workers, initializer=threadpoolctl.threadpool_limits,
            initargs=(1,)) as pool:
          rows = pool.map(_call, [(fn, a) for a in args], chunksize=32)
    else:
      rows = [fn(**a) for a in args]
  # Atomic, and corpus.json last: an interrupted build leaves no marker, so
  # the next call writes the corpus again rather than reading half of it.
  with paths.atomic_open(os.path.join(folder, 'manifest.csv')) as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  with paths.atomic_open(done) as f:
    json.dump(params, f)
  return folder


def _call(fn_and_kwargs):
  fn, kwargs = fn_and_kwargs
  return fn(**kwargs)
