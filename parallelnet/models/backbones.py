"""Backbone registry: the pretrained-able trunk M inside each N2 branch.

A backbone is called as `backbone(x, train)` and maps images `(batch, H, W, 3)`
to a feature map `(batch, h, w, c)` (no classifier, no global pooling: N2 adds
BatchNorm, Flatten, Dense itself). `train` switches its BatchNorm to batch
statistics and enables its dropout (rng stream 'dropout'), if it has any.
Register new trunks in `_REGISTRY` under the name the config uses; a trunk
that mirrors a Keras Applications model names its builder (`keras=`), which
makes its Keras and torchvision weight files loadable (models/pretrained.py)
and requires an entry in parallelnet.models.scaling.IMAGENET_SCALING: the input
scaling its ImageNet weights expect (`imagenet_scaling(name)`).
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from parallelnet.models import scaling as scaling_table
from parallelnet.models import densenet
from parallelnet.models import efficientnet
from parallelnet.models import inception_v3
from parallelnet.models import mobilenet_v2
from parallelnet.models import resnet
from parallelnet.models import vgg

# name -> factory(width, dtype, name) -> nn.Module (name: the Flax module's).
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# name -> keras.applications builder it mirrors layer for layer.
_KERAS: dict[str, str] = {}


def register(name: str, keras: str | None = None):
  """Decorator adding a backbone factory to the registry under `name`.

  `keras`: the keras.applications builder the trunk mirrors (with Keras'
  layer names), if any; it then needs an IMAGENET_SCALING entry.
  """

  def wrap(factory):
    if name in _REGISTRY:
      raise ValueError(f'Backbone {name!r} is registered twice.')
    if keras and name not in scaling_table.IMAGENET_SCALING:
      raise ValueError(f'Backbone {name!r} mirrors keras {keras} but declares '
                       'no input scaling in scaling.IMAGENET_SCALING.')
    _REGISTRY[name] = factory
    if keras:
      _KERAS[name] = keras
    return factory

  return wrap


def known_backbones() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def keras_backbones() -> dict[str, str]:
  """{backbone: keras.applications builder} for the Keras-backed trunks."""
  return dict(_KERAS)


def imagenet_scaling(name: str) -> str | None:
  """The input scaling the backbone's Keras ImageNet weights expect, or None."""
  return scaling_table.IMAGENET_SCALING.get(name) if name in _KERAS else None


def get_backbone(name: str, width: float = 1.0, dtype: Any = jnp.float32,
                 module_name: str | None = None) -> nn.Module:
  """The trunk registered as `name`, with channel `width` and compute `dtype`.

  `module_name` names the Flax submodule when built inside a parent module.
  Raises ValueError for an unknown name, listing the known ones.
  """
  if name not in _REGISTRY:
    raise ValueError(f'Unknown backbone {name!r}; known backbones: '
                     f'{", ".join(known_backbones())}.')
  return _REGISTRY[name](width=width, dtype=dtype, name=module_name)


@register('vgg16', keras='VGG16')
def _vgg16(width, dtype, **kw):
  return vgg.VGG(blocks=vgg.VGG16_BLOCKS, width=width, dtype=dtype, **kw)


@register('vgg19', keras='VGG19')
def _vgg19(width, dtype, **kw):
  return vgg.VGG(blocks=vgg.VGG19_BLOCKS, width=width, dtype=dtype, **kw)


@register('efficientnet_b0', keras='EfficientNetB0')
def _efficientnet_b0(width, dtype, **kw):
  return efficientnet.EfficientNet(stages=efficientnet.B0_STAGES, width=width,
                                   dtype=dtype, **kw)


@register('resnet34')
def _resnet34(width, dtype, **kw):
  return resnet.ResNet(blocks=resnet.RESNET34_BLOCKS, bottleneck=False,
                       width=width, dtype=dtype, **kw)


@register('resnet50', keras='ResNet50')
def _resnet50(width, dtype, **kw):
  return resnet.ResNet(blocks=resnet.RESNET50_BLOCKS, width=width,
                       dtype=dtype, **kw)


@register('resnet101', keras='ResNet101')
def _resnet101(width, dtype, **kw):
  return resnet.ResNet(blocks=resnet.RESNET101_BLOCKS, width=width,
                       dtype=dtype, **kw)


@register('mobilenet_v2', keras='MobileNetV2')
def _mobilenet_v2(width, dtype, **kw):
  return mobilenet_v2.MobileNetV2(width=width, dtype=dtype, **kw)


@register('densenet121', keras='DenseNet121')
def _densenet121(width, dtype, **kw):
  return densenet.DenseNet(blocks=densenet.DENSENET121_BLOCKS, width=width,
                           dtype=dtype, **kw)


@register('inception_v3', keras='InceptionV3')
def _inception_v3(width, dtype, **kw):
  return inception_v3.InceptionV3(width=width, dtype=dtype, **kw)
