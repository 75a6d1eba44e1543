"""Image decoding: any PIL mode to 8-bit RGB (PAPER.md, "Inputs").

The pixel scalings live in parallelnet.core.scaling."""

import os

import numpy as np
from PIL import Image
from PIL import ImageOps

from parallelnet.core.errors import UserError


class ImageError(UserError, ValueError):
  """An image that cannot be used; the message is the reason shown to users."""


# Background that transparent pixels are composited onto (0-255 RGB).
BACKGROUND = (255, 255, 255)
# Unsigned integer grayscale modes: bits per sample (full range -> 0..255).
_UINT_GRAY_BITS = {'1': 1, 'L': 8, 'I;16': 16, 'I;16L': 16, 'I;16B': 16,
                   'I;16N': 16}
# Modes PIL converts to RGB by its documented colour formulas.
_PIL_TO_RGB = ('RGB', 'RGBX', 'CMYK', 'YCbCr', 'HSV', 'P')
# Modes with an alpha channel (RGBa, La: premultiplied; PIL un-premultiplies).
_ALPHA_MODES = ('RGBA', 'RGBa', 'LA', 'La', 'PA')


def load_image(path, image_size):
  """Decodes any PIL-readable file to RGB uint8 (image_size, image_size, 3)."""
  return decode_image(path, image_size)[0]


def decode_image(path, image_size):
  """(RGB uint8 (image_size, image_size, 3), (height, width) as displayed).

  The file is oriented by its EXIF tag, converted by `to_rgb8` and resized
  (bilinear). The (height, width) is that of the oriented image, the frame
  that cue boxes are given in. Raises ImageError with a reason.
  """
  if not os.path.exists(path):
    raise ImageError('missing file')
  if os.path.getsize(path) == 0:
    raise ImageError('zero-length image file')
  try:
    with Image.open(path) as im:
      frames = getattr(im, 'n_frames', 1)
      # MPO (camera JPEGs with a depth map or preview): frame 0 is the photo.
      if frames > 1 and im.format != 'MPO':
        raise ImageError(
            f'{im.format} image with {frames} frames (animation or '
            'multi-page): save the one frame to use as a single image')
      im.load()  # Forces a full decode: truncated files fail here.
      im = ImageOps.exif_transpose(im)
      rgb = to_rgb8(im)
  except ImageError:
    raise
  except OSError as e:
    reason = 'truncated image' if 'truncated' in str(e) else 'undecodable image'
    raise ImageError(f'{reason} ({e})') from e
  except Exception as e:  # pylint: disable=broad-except
    raise ImageError(f'undecodable image ({type(e).__name__}: {e})') from e
  size = rgb.shape[:2]
  if size != (image_size, image_size):
    rgb = np.asarray(Image.fromarray(rgb).resize((image_size, image_size),
                                                 Image.BILINEAR), np.uint8)
  return rgb, size


def to_rgb8(im):
  """A decoded PIL image -> RGB uint8 (height, width, 3), by these rules.

  * Unsigned integer grayscale ('1', 'L', 16-bit 'I;16*'): the full range of
    the bit depth maps to 0..255, v * 255 / (2**bits - 1), rounded; so a
    16-bit PNG keeps its look (65535 is white), as in any image viewer.
  * 32-bit integer 'I' (which has no display range of its own) and float 'F':
    a float image within [0, 1] is taken as 0 = black, 1 = white (v * 255,
    rounded); any other float or 'I' image is stretched from its own minimum
    (black) to maximum (white). A constant 'I' image, or a constant float
    image outside [0, 1], has no range to stretch and is an error, as is
    NaN or Inf in a float image.
  * Transparency (RGBA, LA, PA, palette or RGB/L with a tRNS colour) is
    composited onto BACKGROUND (white): c * a + 255 * (1 - a), a = alpha/255,
    rounded.
  * Palette images are looked up in their palette; CMYK, YCbCr and HSV use
    PIL's formulas (CMYK: R = (255 - C) * (255 - K) / 255, no ICC profile:
    embedded colour profiles are not applied, in any mode).
  Any other mode raises ImageError naming it.
  """
  mode = im.mode
  transparent = ('transparency' in im.info or mode in _ALPHA_MODES or
                 (mode == 'P' and im.palette is not None and
                  im.palette.mode == 'RGBA'))
  if mode in _UINT_GRAY_BITS and not transparent:
    v = np.asarray(im).astype(np.float64)  # Mode '1' gives bools: 1 = white.
    top = 2 ** _UINT_GRAY_BITS[mode] - 1
    return _gray_to_rgb(np.rint(v * (255.0 / top)))
  if mode in ('I', 'F') and not transparent:
    return _gray_to_rgb(_stretch(np.asarray(im), mode))
  if transparent and mode in _ALPHA_MODES + ('P', 'RGB', 'L', '1'):
    rgba = np.asarray(im.convert('RGBA'), np.float64)
    a = rgba[..., 3:] / 255.0
    out = rgba[..., :3] * a + np.asarray(BACKGROUND, np.float64) * (1.0 - a)
    return np.rint(out).astype(np.uint8)
  if mode in _PIL_TO_RGB and not transparent:
    return np.asarray(im.convert('RGB'), np.uint8)
  what = f'{mode!r} with transparency' if transparent else repr(mode)
  raise ImageError(f'unsupported image mode {what} (convert the file to RGB, '
                   'RGBA, grayscale or palette)')


def _gray_to_rgb(gray):
  g = np.asarray(gray).astype(np.uint8)
  return np.repeat(g[..., None], 3, axis=-1)


def _stretch(v, mode):
  """'I' / 'F' pixel values -> 0..255 floats by to_rgb8's rules."""
  v = v.astype(np.float64)
  if mode == 'F':
    if not np.all(np.isfinite(v)):
      raise ImageError('float image holds NaN or Inf pixel values')
    if v.min() >= 0.0 and v.max() <= 1.0:
      return np.rint(v * 255.0)
  lo, hi = v.min(), v.max()
  if hi == lo:
    kind = '32-bit integer' if mode == 'I' else 'float (outside [0, 1])'
    raise ImageError(f'constant {kind} image (every pixel {lo:g}): no range '
                     'to rescale to 0-255')
  return np.rint((v - lo) * (255.0 / (hi - lo)))


def image_size_of(path):
  """(height, width) of the image as displayed (EXIF orientation applied),
  the frame that cue boxes are given in."""
  with Image.open(path) as im:
    w, h = im.size
    if im.getexif().get(0x0112) in (5, 6, 7, 8):  # Rotated by 90 degrees.
      w, h = h, w
    return h, w
