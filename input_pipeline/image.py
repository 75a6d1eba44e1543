"""Image decoding (any PIL mode to 8-bit RGB) and input scaling (SPEC §1)."""

import os

import numpy as np
from PIL import Image
from PIL import ImageOps

from input_pipeline.errors import UserError

# Image scaling modes (config.input.image_scaling, besides 'auto'):
#   caffe  Keras preprocess_input 'caffe': RGB->BGR, ImageNet BGR means
#          subtracted, 0-255 range (VGG, ResNet weights; the paper's VGG).
#   tf     Keras 'tf': x / 127.5 - 1, in [-1, 1] (MobileNetV2, InceptionV3).
#   torch  Keras 'torch' = torchvision: x / 255, minus ImageNet RGB means,
#          divided by their stds (DenseNet; EfficientNet; torchvision files).
#   unit   x / 255 in [0, 1]: for trunks trained from scratch (the demo).
SCALINGS = ('caffe', 'tf', 'torch', 'unit')
DEFAULT_SCALING = 'caffe'  # What 'auto' means when no image weights are given.
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)
IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], np.float32)

# The scaling each registered backbone's Keras Applications ImageNet weights
# were trained with: the mode of keras.applications.<model>.preprocess_input.
# EfficientNet's preprocess_input is a pass-through because the Keras model
# starts with Rescaling(1/255) and Normalization layers holding the ImageNet
# mean and std; our trunk leaves those weightless-in-training layers out, so
# its input must already be what they compute: 'torch'. ResNet-34 has no
# Keras weights. The backbone registry (parallelnet/models/backbones.py)
# reads this table; it lives here because the pipeline resolves 'auto' and
# may not import parallelnet (DESIGN.md).
IMAGENET_SCALING = {
    'vgg16': 'caffe', 'vgg19': 'caffe', 'resnet50': 'caffe',
    'resnet101': 'caffe', 'mobilenet_v2': 'tf', 'inception_v3': 'tf',
    'densenet121': 'torch', 'efficientnet_b0': 'torch',
}


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


def scale_image(image_uint8, scaling):
  """uint8 RGB -> the model's float input, per a concrete scaling mode.

  numpy in, numpy out; `scale_float` is the same arithmetic for tf/jax arrays.
  The pipeline gets the mode from `resolve_scaling(config)`.
  """
  return scale_float(np.asarray(image_uint8).astype(np.float32), scaling)


def scale_float(x, scaling):
  """scale_image on an already-float RGB 0-255 array of any array library.

  The modes are Keras Applications' `preprocess_input` modes (checked against
  keras.applications.imagenet_utils in the tests) plus 'unit'.
  """
  if scaling == 'caffe':
    return x[..., ::-1] - CAFFE_BGR_MEAN
  if scaling == 'tf':
    return x / 127.5 - 1.0
  if scaling == 'torch':
    return (x / 255.0 - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
  if scaling == 'unit':
    return x / 255.0
  raise ValueError(f'Unknown image scaling {scaling!r}; use one of '
                   f'{", ".join(SCALINGS)} (or \'auto\' in the config, which '
                   'resolve_scaling turns into one of these).')


def unscale_image(image, scaling):
  """Inverse of scale_image: model input -> RGB float in [0, 1] for plots."""
  x = np.asarray(image, np.float32)
  if scaling == 'caffe':
    x = (x + CAFFE_BGR_MEAN)[..., ::-1] / 255.0
  elif scaling == 'tf':
    x = (x + 1.0) / 2.0
  elif scaling == 'torch':
    x = x * IMAGENET_STD_RGB + IMAGENET_MEAN_RGB
  elif scaling == 'unit':
    pass
  else:
    raise ValueError(f'Unknown image scaling {scaling!r}; use one of '
                     f'{", ".join(SCALINGS)}.')
  return np.clip(x, 0.0, 1.0)


def weights_format(path: str) -> str:
  """'torchvision' for a .pth/.pt state dict, else 'keras' (.h5, .npz)."""
  return 'torchvision' if path.lower().endswith(('.pth', '.pt')) else 'keras'


def weights_scaling(backbone: str, path: str) -> str | None:
  """The input scaling the weights in `path` for `backbone` were trained with.

  torchvision files: 'torch'. Keras files (and our .npz, exported from Keras):
  the backbone's IMAGENET_SCALING entry. None when the backbone declares none.
  """
  if weights_format(path) == 'torchvision':
    return 'torch'
  return IMAGENET_SCALING.get(backbone)


def image_weights_path(config) -> str:
  """The file N2_i's trunk is loaded from ('' = random init).

  `model.image_weights`, else the older `model.pretrained` (.npz for both).
  """
  m = config.model
  if m.get('modalities', 'both') == 'speech':
    return ''
  return m.get('image_weights', '') or m.get('pretrained', '')


def resolve_scaling(config) -> str:
  """The concrete image scaling for `config`, checked against the weights.

  `input.image_scaling='auto'`: the scaling N2_i's weights expect when
  `model.image_weights` (or `model.pretrained`) is given, else 'caffe' (the
  paper's VGG preprocessing). An explicit mode that contradicts the loaded
  weights is a UserError naming the mode to use.
  """
  scaling = config.input.image_scaling
  if scaling != 'auto' and scaling not in SCALINGS:
    raise UserError(f'input.image_scaling={scaling!r} is not a scaling; use '
                    f'auto, {", ".join(SCALINGS)}.')
  path = image_weights_path(config)
  backbone = config.model.image_backbone
  expected = weights_scaling(backbone, path) if path else None
  if scaling == 'auto':
    if path and expected is None:
      raise UserError(
          f'input.image_scaling=auto, but the {backbone} trunk declares no '
          f'input scaling for the weights in {path}; set input.image_scaling '
          f'to the one they were trained with ({", ".join(SCALINGS)}).')
    return expected or DEFAULT_SCALING
  if expected is not None and scaling != expected:
    raise UserError(
        f'input.image_scaling={scaling!r} contradicts the {backbone} weights '
        f'in {path}, which expect {expected!r}: use '
        f'--config.input.image_scaling={expected} (or auto).')
  return scaling
