"""Image decoding and the model's input scaling (SPEC §1)."""

import os

import numpy as np
from PIL import Image

from input_pipeline.errors import UserError

# Keras vgg16.preprocess_input 'caffe' mode: BGR channel means (0-255 scale).
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)


class ImageError(UserError, ValueError):
  """An image that cannot be used; the message is the reason shown to users."""


def load_image(path, image_size):
  """Decodes any PIL-readable file to RGB uint8 (image_size, image_size, 3).

  RGBA is composited onto white, grayscale and palette images are expanded.
  Raises ImageError with a reason.
  """
  if not os.path.exists(path):
    raise ImageError('missing file')
  if os.path.getsize(path) == 0:
    raise ImageError('zero-length image file')
  try:
    with Image.open(path) as im:
      im.load()  # Forces a full decode: truncated files fail here.
      if im.mode in ('RGBA', 'LA') or (im.mode == 'P' and
                                       'transparency' in im.info):
        im = im.convert('RGBA')
        bg = Image.new('RGBA', im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
      im = im.convert('RGB')
      if im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), Image.BILINEAR)
      return np.asarray(im, np.uint8)
  except OSError as e:
    reason = 'truncated image' if 'truncated' in str(e) else 'undecodable image'
    raise ImageError(f'{reason} ({e})') from e
  except Exception as e:  # pylint: disable=broad-except
    raise ImageError(f'undecodable image ({type(e).__name__}: {e})') from e


def image_size_of(path):
  """(height, width) of the stored file, for scaling cue boxes."""
  with Image.open(path) as im:
    return im.size[1], im.size[0]


def scale_image(image_uint8, scaling):
  """uint8 RGB -> the model's float input, per config.input.image_scaling.

  numpy in, numpy out; `scale_float` is the same arithmetic for tf/jax arrays.
  """
  return scale_float(np.asarray(image_uint8).astype(np.float32), scaling)


def scale_float(x, scaling):
  """scale_image on an already-float RGB 0-255 array of any array library."""
  if scaling == 'caffe':
    return x[..., ::-1] - CAFFE_BGR_MEAN
  if scaling == 'unit':
    return x / 255.0
  raise ValueError(f"Unknown image_scaling {scaling!r}; use 'caffe' or 'unit'.")


def unscale_image(image, scaling):
  """Inverse of scale_image: model input -> RGB float in [0, 1] for plots."""
  x = np.asarray(image, np.float32)
  if scaling == 'caffe':
    x = (x + CAFFE_BGR_MEAN)[..., ::-1] / 255.0
  elif scaling == 'unit':
    pass
  else:
    raise ValueError(f"Unknown image_scaling {scaling!r}; use 'caffe' or 'unit'.")
  return np.clip(x, 0.0, 1.0)
