"""Degraded inputs for `--mode=robustness`: noisy speech, occluded or blurred images.

Each degradation acts on the raw signal, before the features: the clip as
the spectrogram sees it (decoded, padded/cropped; `audio.load_waveform`) and
the uint8 RGB image at the model's size; `degraded_features` then runs the
dataset's preprocessing (audio.log_mel, the pixel scaling) on the result.
All randomness comes from a numpy Generator seeded by (seed, condition
name), so a condition gives the same inputs on every run.

Condition names (config.robustness.conditions):
  full, no_image, no_speech      complete pairs / one modality missing (the
                                 model's missing input: parallelnet/modality.py)
  speech_snr_<dB>                additive white Gaussian noise at that SNR
  babble_snr_<dB>                additive babble (the sum of `talkers` other
                                 clips of the same split) at that SNR
  image_occlusion_<percent>      a grey rectangle covering that share of the
                                 image at a random place
  image_blur[_<sigma>]           Gaussian blur, sigma in pixels (default
                                 config.robustness.blur_sigma)
"""

import dataclasses
import re
import zlib

import numpy as np

from input_pipeline import audio as audio_lib
from parallelnet.core import errors
from parallelnet.core import scaling as scaling_lib

FIELD = 'config.robustness.conditions'
KINDS = ('full', 'no_image', 'no_speech', 'speech_snr', 'babble_snr',
         'image_occlusion', 'image_blur')
OCCLUSION_FILL = 127  # Grey, in uint8 RGB.
_PATTERN = re.compile(
    r'(speech_snr|babble_snr|image_occlusion|image_blur)(?:_(.*))?')


@dataclasses.dataclass(frozen=True)
class Condition:
  """One parsed condition: its name, kind (KINDS) and numeric setting."""
  name: str
  kind: str
  value: float | None = None

  @property
  def modality(self):
    """The modality the condition changes: 'image', 'speech' or None."""
    if self.kind in ('no_image', 'image_occlusion', 'image_blur'):
      return 'image'
    if self.kind in ('no_speech', 'speech_snr', 'babble_snr'):
      return 'speech'
    return None


def parse_condition(name, blur_sigma=2.0) -> Condition:
  """A Condition from its name; UserValueError naming the field otherwise."""
  name = str(name).strip()
  if name in ('full', 'no_image', 'no_speech'):
    return Condition(name, name)
  m = _PATTERN.fullmatch(name)
  if not m:
    raise errors.UserValueError(
        f'{FIELD}: unknown condition {name!r}; known: full, no_image, '
        'no_speech, speech_snr_<dB>, babble_snr_<dB>, '
        'image_occlusion_<percent>, image_blur[_<sigma>].')
  kind, text = m.group(1), m.group(2)
  if text is None:
    if kind != 'image_blur':
      raise errors.UserValueError(
          f'{FIELD}: condition {name!r} needs a number, e.g. {kind}_10.')
    text = str(blur_sigma)
  try:
    value = float(text)
  except ValueError:
    value = None
  if value is None or not np.isfinite(value):
    what = {'speech_snr': 'SNR (dB)', 'babble_snr': 'SNR (dB)',
            'image_occlusion': 'occluded percent',
            'image_blur': 'blur sigma'}[kind]
    raise errors.UserValueError(
        f'{FIELD}: condition {name!r}: the {what} {text!r} is not a number.')
  if kind == 'image_occlusion' and not 0 <= value <= 100:
    raise errors.UserValueError(
        f'{FIELD}: condition {name!r}: the occluded percent must be in '
        '[0, 100].')
  if kind == 'image_blur' and not value > 0:
    raise errors.UserValueError(
        f'{FIELD}: condition {name!r}: the blur sigma must be > 0.')
  return Condition(name, kind, value)


def parse_conditions(text, blur_sigma=2.0) -> list[Condition]:
  """Conditions of a comma-separated list (or a sequence of names)."""
  names = text.split(',') if isinstance(text, str) else list(text)
  names = [n.strip() for n in names if str(n).strip()]
  if not names:
    raise errors.UserValueError(f'{FIELD} is empty; name at least one '
                                'condition, e.g. full,no_image,no_speech.')
  out = [parse_condition(n, blur_sigma) for n in names]
  seen = set()
  for c in out:
    if c.name in seen:
      raise errors.UserValueError(f'{FIELD}: condition {c.name!r} is listed '
                                  'twice.')
    seen.add(c.name)
  return out


def rng_for(seed, name) -> np.random.Generator:
  """The Generator of one condition: a function of (seed, name) only."""
  return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def power(x) -> float:
  """Mean power of a signal (float64)."""
  x = np.asarray(x, np.float64)
  return float(np.mean(x * x)) if x.size else 0.0


def add_noise(wav, noise, snr_db):
  """wav + noise scaled so that power(wav) / power(added) = 10^(snr_db/10).
  A silent clip or silent noise is returned unchanged."""
  wav = np.asarray(wav, np.float32)
  ps, pn = power(wav), power(noise)
  if ps == 0 or pn == 0:
    return wav.copy()
  gain = np.sqrt(ps / (pn * 10.0 ** (snr_db / 10.0)))
  return (wav + gain * np.asarray(noise, np.float64)).astype(np.float32)


def babble(pool, index, rng, talkers=4):
  """The sum of `talkers` clips of `pool` (N, samples) other than `index`,
  each at unit power: several voices talking at once."""
  others = np.delete(np.arange(len(pool)), index)
  if not len(others):
    raise ValueError('babble needs at least two clips in the split.')
  pick = rng.choice(others, min(talkers, len(others)), replace=False)
  out = np.zeros(pool.shape[1], np.float64)
  for j in pick:
    p = power(pool[j])
    if p > 0:
      out += pool[j] / np.sqrt(p)
  return out


def occlude(image, fraction, rng, fill=OCCLUSION_FILL):
  """A copy of a uint8 (H, W, C) image with a rectangle of about
  fraction * H * W pixels (to within one row or column) set to `fill`, at a
  uniformly random place."""
  image = np.array(image, copy=True)
  h, w = image.shape[:2]
  area = fraction * h * w
  if area <= 0:
    return image
  rh = int(np.clip(round(np.sqrt(fraction) * h), 1, h))
  rw = int(np.clip(round(area / rh), 1, w))
  y = int(rng.integers(0, h - rh + 1))
  x = int(rng.integers(0, w - rw + 1))
  image[y:y + rh, x:x + rw] = fill
  return image


def blur_image(image, sigma):
  """Gaussian blur of a uint8 (H, W, C) image, each channel alone."""
  import scipy.ndimage  # pylint: disable=g-import-not-at-top
  x = scipy.ndimage.gaussian_filter(np.asarray(image, np.float32),
                                    sigma=(sigma, sigma, 0), mode='nearest')
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def degrade_raw(condition, image_raw, waveform, *, seed=0, talkers=4):
  """(image_raw, waveform) of a batch (N, H, W, 3) uint8 / (N, samples)
  after `condition` (a Condition); the unchanged modality is returned as
  given. full / no_image / no_speech return both unchanged."""
  rng = rng_for(seed, condition.name)
  kind, value = condition.kind, condition.value
  if kind in ('speech_snr', 'babble_snr'):
    pool = np.asarray(waveform, np.float32)
    out = np.empty_like(pool)
    for i, wav in enumerate(pool):
      noise = (rng.standard_normal(wav.shape) if kind == 'speech_snr'
               else babble(pool, i, rng, talkers))
      out[i] = add_noise(wav, noise, value)
    return image_raw, out
  if kind == 'image_occlusion':
    return (np.stack([occlude(im, value / 100.0, rng) for im in image_raw]),
            waveform)
  if kind == 'image_blur':
    return np.stack([blur_image(im, value) for im in image_raw]), waveform
  return image_raw, waveform


def degraded_features(config, condition, examples, *, seed=0, talkers=4):
  """(image, spectrogram) model inputs of `examples` (load_examples' dict)
  under a degradation `condition`. Only the degraded modality is
  recomputed; the other keeps the stored features."""
  image_raw, waveform = degrade_raw(condition, examples['image_raw'],
                                    examples['waveform'], seed=seed,
                                    talkers=talkers)
  images, specs = examples['image'], examples['spectrogram']
  scaling = config.input.image_scaling
  if condition.modality == 'image' and condition.kind != 'no_image':
    images = scaling_lib.scale_image(image_raw, scaling)
  if condition.modality == 'speech' and condition.kind != 'no_speech':
    specs = np.stack([audio_lib.log_mel(w, config.input) for w in waveform])
    specs = specs.astype(np.float16).astype(np.float32)
  return images, specs
