"""Pretrained trunk weights: Keras Applications models -> .npz -> our trunks.

`config.model.pretrained` names an .npz whose keys are
`<backbone>/<keras layer>/<keras weight>`, e.g. `vgg16/block1_conv1/kernel`,
`efficientnet_b0/stem_bn/moving_mean`. One file may hold several backbones;
`init_variables` loads the trunk of N2_s from its `speech_backbone` entries and
that of N2_i from its `image_backbone` entries. Make the file once, on a
machine that can download Keras' ImageNet weights (nothing downloads at run
time here):

  python -m parallelnet.models.pretrained --out=imagenet.npz vgg16 vgg19

Loading is strict: every trunk variable must be in the file with its shape,
and every file entry of that backbone must be used; otherwise ValueError.
"""

import re
import sys

import numpy as np

# Keras weight name -> (our collection, our variable name).
_KERAS_TO_FLAX = {
    'kernel': ('params', 'kernel'),
    'bias': ('params', 'bias'),
    'gamma': ('params', 'scale'),
    'beta': ('params', 'bias'),
    'moving_mean': ('batch_stats', 'mean'),
    'moving_variance': ('batch_stats', 'var'),
}

# Our backbone name -> keras.applications builder.
KERAS_BUILDERS = {
    'vgg16': 'VGG16', 'vgg19': 'VGG19', 'efficientnet_b0': 'EfficientNetB0',
    'resnet50': 'ResNet50', 'resnet101': 'ResNet101',
    'mobilenet_v2': 'MobileNetV2', 'densenet121': 'DenseNet121',
    'inception_v3': 'InceptionV3',
}


def _fresh_session_names(keras_model) -> dict[str, str]:
  """Keras auto-names (conv2d_57, ...) renumbered from 0 per kind.

  Auto-names carry a per-process counter; our Inception-v3 uses the names a
  fresh session gives, in creation order.
  """
  auto = re.compile(r'^(conv2d|batch_normalization)(?:_(\d+))?$')
  groups = {}
  for layer in keras_model.layers:
    m = auto.match(layer.name)
    if m:
      groups.setdefault(m.group(1), []).append((int(m.group(2) or 0),
                                                layer.name))
  names = {}
  for base, items in groups.items():
    for k, (_, name) in enumerate(sorted(items)):
      names[name] = base if k == 0 else f'{base}_{k}'
  return names


def export_keras(keras_model, backbone: str) -> dict[str, np.ndarray]:
  """The weights of a Keras Applications trunk as {backbone/layer/weight}."""
  rename = {}
  if backbone == 'inception_v3':
    rename = _fresh_session_names(keras_model)
  out = {}
  for layer in keras_model.layers:
    for w in layer.weights:
      wname = w.path.rsplit('/', 1)[-1]
      if wname not in _KERAS_TO_FLAX:
        continue  # Keras' input Normalization mean/variance/count: not ours.
      lname = rename.get(layer.name, layer.name)
      out[f'{backbone}/{lname}/{wname}'] = np.asarray(w.numpy())
  return out


def load_trunk(variables: dict, weights, backbone: str) -> dict:
  """`variables` ({'params', 'batch_stats'} of one trunk) filled from `weights`.

  `weights` maps `<backbone>/<layer>/<keras weight>` to arrays (an npz file
  works). A Keras depthwise kernel (k, k, C, 1) becomes (k, k, 1, C).
  """
  prefix = f'{backbone}/'
  entries = {k[len(prefix):]: k for k in weights.keys() if k.startswith(prefix)}
  if not entries:
    raise ValueError(f'No weights for backbone {backbone!r} in the pretrained '
                     'file (keys look like "vgg16/block1_conv1/kernel").')
  new = {'params': dict(variables.get('params', {})),
         'batch_stats': dict(variables.get('batch_stats', {}))}
  used = set()
  for lw, key in entries.items():
    layer, wname = lw.rsplit('/', 1)
    if wname not in _KERAS_TO_FLAX:
      raise ValueError(f'Pretrained entry {key!r}: unknown weight {wname!r}.')
    collection, var = _KERAS_TO_FLAX[wname]
    target = new[collection].get(layer, {}).get(var)
    if target is None:
      raise ValueError(f'Pretrained entry {key!r} has no counterpart '
                       f'{collection}/{layer}/{var} in the {backbone} trunk.')
    value = np.asarray(weights[key])
    if value.shape != target.shape and value.ndim == 4 and (
        value.shape[:2] + value.shape[:1:-1] == tuple(target.shape)):
      value = np.swapaxes(value, 2, 3)  # Depthwise kernel.
    if value.shape != target.shape:
      raise ValueError(f'Pretrained entry {key!r} has shape {value.shape}; '
                       f'the {backbone} trunk wants {tuple(target.shape)}.')
    new[collection][layer] = dict(new[collection][layer])
    new[collection][layer][var] = value.astype(target.dtype)
    used.add((collection, layer, var))
  for collection in ('params', 'batch_stats'):
    for layer, vs in new[collection].items():
      for var in vs:
        if (collection, layer, var) not in used:
          raise ValueError(f'The pretrained file has no weight for '
                           f'{collection}/{layer}/{var} of {backbone}.')
  return new


def load_into(variables: dict, config) -> dict:
  """ParallelNet variables, N2 trunks replaced from config.model.pretrained."""
  weights = np.load(config.model.pretrained)
  variables = {'params': dict(variables['params']),
               'batch_stats': dict(variables['batch_stats'])}
  branches = []
  if config.model.modalities in ('both', 'speech'):
    branches.append(('N2_s', config.model.speech_backbone))
  if config.model.modalities in ('both', 'image'):
    branches.append(('N2_i', config.model.image_backbone))
  for branch, backbone in branches:
    trunk = {c: variables[c].get(branch, {}).get('backbone', {})
             for c in ('params', 'batch_stats')}
    loaded = load_trunk(trunk, weights, backbone)
    for c in ('params', 'batch_stats'):
      if loaded[c]:
        variables[c][branch] = dict(variables[c][branch], backbone=loaded[c])
  return variables


def main(argv):
  """`--out=FILE name...`: export Keras ImageNet trunks to one .npz."""
  out = [a.split('=', 1)[1] for a in argv if a.startswith('--out=')]
  names = [a for a in argv if not a.startswith('--')]
  if len(out) != 1 or not names:
    raise SystemExit('usage: python -m parallelnet.models.pretrained '
                     '--out=FILE.npz BACKBONE [BACKBONE ...]')
  import keras  # pylint: disable=g-import-not-at-top
  arrays = {}
  for name in names:
    if name not in KERAS_BUILDERS:
      raise SystemExit(f'No Keras ImageNet weights for {name!r}; known: '
                       f'{", ".join(sorted(KERAS_BUILDERS))}.')
    model = getattr(keras.applications, KERAS_BUILDERS[name])(
        weights='imagenet', include_top=False)
    arrays.update(export_keras(model, name))
  np.savez(out[0], **arrays)
  print(f'wrote {len(arrays)} arrays to {out[0]}')


if __name__ == '__main__':
  main(sys.argv[1:])
