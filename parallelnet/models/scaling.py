"""Which input scaling a backbone's weights expect, and resolving
`config.input.image_scaling='auto'` (PAPER.md, "Inputs").

This is knowledge about model weights, so it lives with the models. Entry
points call `resolve_config(config)` once and hand the data pipeline a config
whose scaling is an explicit mode of parallelnet.core.scaling.
"""

import ml_collections

from parallelnet.core.errors import UserError
from parallelnet.core.scaling import SCALINGS

DEFAULT_SCALING = 'caffe'  # What 'auto' means when no image weights are given.

# The scaling each registered backbone's Keras Applications ImageNet weights
# were trained with: the mode of keras.applications.<model>.preprocess_input.
# EfficientNet's preprocess_input is a pass-through because the Keras model
# starts with Rescaling(1/255) and Normalization layers holding the ImageNet
# mean and std; our trunk leaves those weightless-in-training layers out, so
# its input must already be what they compute: 'torch'. ResNet-34 has no
# Keras weights. The backbone registry (parallelnet/models/backbones.py)
# requires an entry here for every Keras-backed trunk.
IMAGENET_SCALING = {
    'vgg16': 'caffe', 'vgg19': 'caffe', 'resnet50': 'caffe',
    'resnet101': 'caffe', 'mobilenet_v2': 'tf', 'inception_v3': 'tf',
    'densenet121': 'torch', 'efficientnet_b0': 'torch',
}


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

  `model.image_weights`, else `model.pretrained` (.npz for both).
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


def resolve_config(config):
  """`config` with `input.image_scaling` made explicit (a copy when it was
  'auto'; the same object otherwise, after the check against the weights)."""
  scaling = resolve_scaling(config)
  if config.input.image_scaling == scaling:
    return config
  out = ml_collections.ConfigDict(config.to_dict())
  out.input.image_scaling = scaling
  return out
