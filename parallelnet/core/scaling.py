"""Pixel scalings: uint8 RGB -> the float input a trunk's weights expect.

Pure arithmetic on numpy, tf or jax arrays. Which scaling a backbone's
weights want is the models' knowledge (parallelnet/models/scaling.py); the
pipeline applies the explicit mode it is handed (PAPER.md, "Inputs").
"""

import numpy as np

# Image scaling modes (config.input.image_scaling, besides 'auto'):
#   caffe  Keras preprocess_input 'caffe': RGB->BGR, ImageNet BGR means
#          subtracted, 0-255 range (VGG, ResNet weights; the paper's VGG).
#   tf     Keras 'tf': x / 127.5 - 1, in [-1, 1] (MobileNetV2, InceptionV3).
#   torch  Keras 'torch' = torchvision: x / 255, minus ImageNet RGB means,
#          divided by their stds (DenseNet; EfficientNet; torchvision files).
#   unit   x / 255 in [0, 1]: for trunks trained from scratch (the demo).
SCALINGS = ('caffe', 'tf', 'torch', 'unit')
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)
IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], np.float32)


def scale_image(image_uint8, scaling):
  """uint8 RGB -> the model's float input, per a concrete scaling mode.

  numpy in, numpy out; `scale_float` is the same arithmetic for tf/jax arrays.
  The pipeline gets the mode from the config, resolved at the entry point.
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
                   'the entry point resolves to one of these).')


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
