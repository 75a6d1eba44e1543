"""N2 trunk weights from the files researchers already have (README,
'Pretrained weights'). Nothing is downloaded.

`config.model.speech_weights` and `config.model.image_weights` each name one
file for the trunk of N2_s / N2_i, in any of these formats:
  * Keras Applications' HDF5 (the legacy layout that keras.applications
    downloads, e.g. vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5, with or
    without the top): `layer_names` on the root (or `model_weights`) group,
    `weight_names` on each layer's group, weights in Keras' order.
  * A Keras 3 `.weights.h5` (`model.save_weights`): groups
    `layers/<class>[_k]/vars/<i>`, the layer's name in the `vars` group's
    `name` attribute (files without it: the keys are mapped through the
    Keras model built with weights=None).
  * Our .npz: keys `<backbone>/<keras layer>/<keras weight>`, e.g.
    `vgg16/block1_conv1/kernel`; one file may hold several backbones (written
    by the exporter at the bottom; `config.model.pretrained` names one
    such file for both trunks).
  * A torchvision state dict `.pth` for VGG16/VGG19 (`features.<i>.weight`),
    read with torch.load(weights_only=True) when PyTorch is installed (it is
    not a dependency).
Every format is read into [(Keras layer name, [(weight name, array), ...])]
and then fills the trunk strictly: every trunk variable must come from the
file, names and shapes are checked, the first layer that does not fit is
named in a UserError, and nothing is loaded partially. The file's top
(fc1, fc2, predictions; torchvision's classifier) is skipped.

The inputs the weights expect: parallelnet.models.scaling.resolve_scaling for the
image (N2_i), `speech_input_scaling` for the adapter's output (N2_s).
"""

import os
import re
import sys

import numpy as np

from parallelnet.models import scaling as scaling_table
from parallelnet.core import scaling as core_scaling
from parallelnet.core.errors import UserError
from parallelnet.models import backbones
from parallelnet.models import vgg

# Keras weight name -> (our collection, our variable name).
_KERAS_TO_FLAX = {
    'kernel': ('params', 'kernel'),
    'depthwise_kernel': ('params', 'kernel'),
    'gamma': ('params', 'scale'),
    'bias': ('params', 'bias'),
    'beta': ('params', 'bias'),
    'moving_mean': ('batch_stats', 'mean'),
    'moving_variance': ('batch_stats', 'var'),
}
# Keras' weight order within a layer (Conv2D: kernel, bias; BatchNorm: gamma,
# beta, moving_mean, moving_variance), as our variables.
_KERAS_ORDER = (('params', 'kernel'), ('params', 'scale'), ('params', 'bias'),
                ('batch_stats', 'mean'), ('batch_stats', 'var'))
# Layers of a with-top file that are not part of a trunk.
TOP_LAYERS = ('fc1', 'fc2', 'predictions')
# Keras EfficientNet's input Normalization layer (mean, variance, count).
_INPUT_NORMALIZATION = re.compile(r'^normalization(_\d+)?$')

# Our backbone name -> keras.applications builder (the registry's `keras=`).
KERAS_BUILDERS = backbones.keras_backbones()
# torchvision VGG feature-extractor layout, by our backbone name.
TORCHVISION_VGG = {'vgg16': vgg.VGG16_BLOCKS, 'vgg19': vgg.VGG19_BLOCKS}


def _natural_key(name: str):
  """'conv2d_9' before 'conv2d_10'."""
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


def _fresh_session_names(names) -> dict[str, str]:
  """Keras auto-names (conv2d_57, ...) renumbered from 0 per kind.

  Auto-names carry a per-process counter; our Inception-v3 uses the names a
  fresh session gives, in creation order (= the order of the suffixes).
  """
  auto = re.compile(r'^(conv2d|batch_normalization)(?:_(\d+))?$')
  groups = {}
  for name in names:
    m = auto.match(name)
    if m:
      groups.setdefault(m.group(1), []).append((int(m.group(2) or 0), name))
  out = {}
  for base, items in groups.items():
    for k, (_, name) in enumerate(sorted(items)):
      out[name] = base if k == 0 else f'{base}_{k}'
  return out


def _canonical(layers, backbone):
  """Layer names as our trunks spell them.

  Keras 2 files write DenseNet's 'conv1/conv' where Keras 3 (and we) write
  'conv1_conv'; Inception-v3's auto-names are renumbered from 0.
  """
  layers = [(name.replace('/', '_'), ws) for name, ws in layers]
  if backbone == 'inception_v3':
    rename = _fresh_session_names([name for name, _ in layers])
    layers = [(rename.get(name, name), ws) for name, ws in layers]
  return layers


# --- Readers: file -> [(layer, [(weight name or None, array), ...])] ---------


def _attr_list(group, name):
  """A list attribute as Keras writes it (split into name0, name1, ... when
  over HDF5's attribute size limit), decoded to str."""
  if name in group.attrs:
    values = list(group.attrs[name])
  else:
    values, k = [], 0
    while f'{name}{k}' in group.attrs:
      values.extend(group.attrs[f'{name}{k}'])
      k += 1
  return [v.decode('utf8') if isinstance(v, bytes) else str(v) for v in values]


def _read_legacy_h5(f):
  g = f['model_weights'] if 'model_weights' in f else f
  layers = []
  for name in _attr_list(g, 'layer_names'):
    if name not in g:
      continue
    weights = [(w, np.asarray(g[name][w])) for w in
               _attr_list(g[name], 'weight_names')]
    layers.append((name, weights))
  return layers


def _snake_case(name):
  """Keras 3's naming.to_snake_case: the key a .weights.h5 gives a layer."""
  name = re.sub(r'\W+', '', name)
  name = re.sub('(.)([A-Z][a-z]+)', r'\1_\2', name)
  return re.sub('([a-z])([A-Z])', r'\1_\2', name).lower()


def _keras3_layer_keys(backbone):
  """{.weights.h5 layer key: Keras layer name} for `backbone`'s Keras model.

  Keras 3 keys a Functional model's layers by class (`conv2d`, `conv2d_1`,
  ... in model.layers order); files from Keras versions that do not record
  the name need this map, taken from the model built with weights=None
  (nothing downloaded). The top's layers come last, so they do not shift
  the trunk's keys.
  """
  if backbone not in KERAS_BUILDERS:
    raise UserError(f'A .weights.h5 without layer names loads only into the '
                    f'Keras-backed trunks ({", ".join(KERAS_BUILDERS)}).')
  import keras  # pylint: disable=g-import-not-at-top
  model = getattr(keras.applications, KERAS_BUILDERS[backbone])(
      weights=None, include_top=False)
  used, keys = {}, {}
  for layer in model.layers:
    base = _snake_case(type(layer).__name__)
    used[base] = used.get(base, -1) + 1
    keys[base if used[base] == 0 else f'{base}_{used[base]}'] = layer.name
  return keys


def _read_keras3_h5(f, path, backbone):
  import h5py  # pylint: disable=g-import-not-at-top
  layers, unnamed = [], []

  def visit(group, key):
    vs = group.get('vars')
    if isinstance(vs, h5py.Group) and len(vs):
      weights = [(None, np.asarray(vs[str(i)])) for i in range(len(vs))]
      name = vs.attrs.get('name')
      if name is None:
        unnamed.append((key, weights))
      else:
        name = name.decode('utf8') if isinstance(name, bytes) else str(name)
        layers.append((name, weights))
    sub = group.get('layers')
    if isinstance(sub, h5py.Group):
      for k in sub:
        visit(sub[k], k)

  visit(f, '')
  if unnamed:  # Written by a Keras 3 that does not record layer names.
    keys = _keras3_layer_keys(backbone)
    for key, weights in unnamed:
      if key in keys:
        layers.append((keys[key], weights))
      elif re.fullmatch(r'dense(_\d+)?', key):
        continue  # The top's Dense layers (fc1, fc2, predictions).
      else:
        raise UserError(f'{path}: layer key {key!r} matches no layer of '
                        f'Keras {KERAS_BUILDERS[backbone]}; is it a file for '
                        'another network?')
  return sorted(layers, key=lambda lw: _natural_key(lw[0]))


def _read_h5(path, backbone):
  import h5py  # pylint: disable=g-import-not-at-top
  try:
    f = h5py.File(path, 'r')
  except OSError as e:
    raise UserError(f'{path}: not an HDF5 weights file ({e}).') from e
  with f:
    g = f['model_weights'] if 'model_weights' in f else f
    if 'layer_names' in g.attrs or 'layer_names0' in g.attrs:
      return _read_legacy_h5(f)
    if 'layers' in f:
      return _read_keras3_h5(f, path, backbone)
  raise UserError(f'{path}: an HDF5 file but not Keras weights (no '
                  '`layer_names` attribute, no `layers` group).')


def _read_npz(path, backbone):
  with np.load(path, allow_pickle=False) as z:
    prefix = f'{backbone}/'
    keys = [k for k in z.files if k.startswith(prefix)]
    if not keys:
      found = sorted({k.split('/', 1)[0] for k in z.files})
      raise UserError(f'{path}: no weights for backbone {backbone!r} (keys '
                      f'look like "{backbone}/<layer>/<weight>"; the file '
                      f'holds: {", ".join(found) or "nothing"}).')
    layers = {}
    for key in keys:
      layer, wname = key[len(prefix):].rsplit('/', 1)
      if wname not in _KERAS_TO_FLAX:
        raise UserError(f'{path}: entry {key!r} has unknown weight name '
                        f'{wname!r} (known: {", ".join(_KERAS_TO_FLAX)}).')
      layers.setdefault(layer, []).append((wname, z[key]))
  rank = {cv: i for i, cv in enumerate(_KERAS_ORDER)}
  return [(layer, sorted(ws, key=lambda w: rank[_KERAS_TO_FLAX[w[0]]]))
          for layer, ws in layers.items()]


def _torchvision_vgg_names(blocks) -> dict[int, str]:
  """torchvision `features` index -> Keras layer name for a VGG.

  torchvision's VGG features are [Conv2d, ReLU]*convs + [MaxPool] per block.
  """
  names, i = {}, 0
  for b, (_, convs) in enumerate(blocks, start=1):
    for c in range(1, convs + 1):
      names[i] = f'block{b}_conv{c}'
      i += 2
    i += 1
  return names


def _import_torch(path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(
        f'{path}: reading a torchvision .pth needs PyTorch, which is not a '
        'dependency of this project: pip install torch (the CPU build is '
        'enough), or use the Keras Applications .h5 of the same network.'
    ) from e
  return torch


def _read_torchvision(path, backbone):
  torch = _import_torch(path)
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'{path}: not a PyTorch state dict that loads with '
                    f'weights_only=True ({type(e).__name__}: {e}).') from e
  if not isinstance(state, dict):
    raise UserError(f'{path}: holds a {type(state).__name__}, not a state '
                    'dict (save model.state_dict()).')
  names = _torchvision_vgg_names(TORCHVISION_VGG[backbone])
  found = {}
  for key, tensor in state.items():
    if key.startswith('classifier.'):
      continue  # The top.
    m = re.fullmatch(r'features\.(\d+)\.(weight|bias)', key)
    if not m or int(m.group(1)) not in names:
      raise UserError(f'{path}: entry {key!r} is not part of torchvision\'s '
                      f'{backbone} (features.<i>.weight|bias of its convs); '
                      'a file for another network (e.g. a *_bn VGG)?')
    found[(int(m.group(1)), m.group(2))] = (
        tensor.detach().to(torch.float32).cpu().numpy())
  layers = []
  for i, layer in sorted(names.items()):
    ws = []
    if (i, 'weight') in found:  # (out, in, kh, kw) -> Keras' (kh, kw, in, out)
      ws.append((f'features.{i}.weight',
                 np.transpose(found[(i, 'weight')], (2, 3, 1, 0))))
    if (i, 'bias') in found:
      ws.append((f'features.{i}.bias', found[(i, 'bias')]))
    if ws:
      layers.append((layer, ws))
  return layers


def _file_kind(path: str, backbone: str) -> str:
  """'torchvision' | 'npz' | 'h5' for an existing file, else UserError."""
  if not os.path.isfile(path):
    raise UserError(f'{path}: no such weights file.')
  lower = path.lower()
  if scaling_table.weights_format(path) == 'torchvision':
    if backbone not in TORCHVISION_VGG:
      raise UserError(f'{path}: torchvision .pth files load into '
                      f'{" and ".join(TORCHVISION_VGG)} only; for {backbone} '
                      'use the Keras Applications .h5.')
    return 'torchvision'
  if lower.endswith('.npz'):
    return 'npz'
  if lower.endswith(('.h5', '.hdf5')):
    return 'h5'
  raise UserError(f'{path}: unknown weights format; use a Keras .h5 / '
                  '.weights.h5, an .npz from our exporter or a torchvision '
                  '.pth.')


def read_layers(path: str, backbone: str):
  """The weights in `path` as [(our layer name, [(weight name, array)])]."""
  kind = _file_kind(path, backbone)
  if kind == 'torchvision':
    layers = _read_torchvision(path, backbone)
  elif kind == 'npz':
    layers = _read_npz(path, backbone)
  else:
    layers = _read_h5(path, backbone)
  return _canonical(layers, backbone)


# --- Strict filling -----------------------------------------------------------


def _check_input_normalization(layer, weights, source):
  """Keras EfficientNet's input Normalization must hold ImageNet's statistics.

  Our trunk leaves that layer out and reads 'torch'-scaled inputs, which is
  what it computes with ImageNet statistics: Keras' ImageNet file stores the
  RGB std as the variance and Keras adds Rescaling(1/sqrt(std)); a model whose
  variance is the std squared computes the same without it.
  """
  if len(weights) != 3:
    raise UserError(f'{source}: layer {layer!r} (Keras input Normalization) '
                    f'holds {len(weights)} weights, not mean/variance/count.')
  mean = np.asarray(weights[0][1], np.float64).reshape(-1)
  var = np.asarray(weights[1][1], np.float64).reshape(-1)
  m, s = core_scaling.IMAGENET_MEAN_RGB, core_scaling.IMAGENET_STD_RGB
  if not (mean.shape == (3,) and np.allclose(mean, m, atol=1e-3) and (
      np.allclose(var, s, atol=1e-3) or np.allclose(var, s**2, atol=1e-3))):
    raise UserError(
        f'{source}: layer {layer!r} (Keras input Normalization) holds mean '
        f'{np.round(mean, 4).tolist()}, variance {np.round(var, 4).tolist()}; '
        'our EfficientNet trunk reads ImageNet-normalised inputs (mean '
        f'{m.tolist()}, std {s.tolist()}), so only files with those '
        'statistics load.')


def fill_trunk(variables: dict, layers, backbone: str, source: str) -> dict:
  """`variables` ({'params', 'batch_stats'} of one trunk) filled from `layers`.

  `layers`: [(layer, [(weight name or None, array), ...])] in Keras' weight
  order (read_layers). Within a layer weights map by position, names are
  checked where they are Keras' own (kernel, gamma, ...). A Keras depthwise
  kernel (k, k, C, 1) becomes Flax's (k, k, 1, C). Returns new dicts; raises
  UserError naming the first layer that does not fit, before anything is used.
  """
  ours = {}  # layer -> its variables in Keras' order.
  for collection, var in _KERAS_ORDER:
    for layer, vs in variables.get(collection, {}).items():
      if var in vs:
        ours.setdefault(layer, []).append((collection, var))
  for collection in ('params', 'batch_stats'):
    for layer, vs in variables.get(collection, {}).items():
      if set(vs) - {v for _, v in ours.get(layer, [])}:
        raise ValueError(f'{backbone} trunk layer {layer!r} has variables '
                         f'{sorted(vs)} that no Keras weight maps to.')
  new = {'params': {}, 'batch_stats': {}}
  filled = set()
  for layer, weights in layers:
    if not weights or layer in TOP_LAYERS:
      continue
    if backbone == 'efficientnet_b0' and _INPUT_NORMALIZATION.match(layer):
      _check_input_normalization(layer, weights, source)
      continue
    if layer not in ours:
      raise UserError(f'{source}: layer {layer!r} of the file has no '
                      f'counterpart in the {backbone} trunk; is it a file for '
                      'another network?')
    if layer in filled:
      raise UserError(f'{source}: layer {layer!r} appears twice in the file.')
    expected = ours[layer]
    if len(weights) != len(expected):
      raise UserError(
          f'{source}: layer {layer!r} holds {len(weights)} weights; the '
          f'{backbone} trunk\'s has {len(expected)} '
          f'({", ".join(v for _, v in expected)}).')
    for (wname, value), (collection, var) in zip(weights, expected):
      tail = (wname or '').rsplit('/', 1)[-1].split(':')[0]
      if tail in _KERAS_TO_FLAX and _KERAS_TO_FLAX[tail] != (collection, var):
        raise UserError(f'{source}: layer {layer!r} has {wname!r} where the '
                        f'{backbone} trunk wants its {var}.')
      target = variables[collection][layer][var]
      value = np.asarray(value)
      if value.shape != tuple(target.shape) and value.ndim == 4 and (
          value.shape[:2] + value.shape[:1:-1] == tuple(target.shape)):
        value = np.swapaxes(value, 2, 3)  # Depthwise kernel.
      if value.shape != tuple(target.shape):
        raise UserError(
            f'{source}: layer {layer!r} {var} has shape {value.shape}; the '
            f'{backbone} trunk wants {tuple(target.shape)} (the published '
            'network needs model.width=1.0).')
      new[collection].setdefault(layer, {})[var] = value.astype(target.dtype)
    filled.add(layer)
  missing = sorted(set(ours) - filled, key=_natural_key)
  if missing:
    raise UserError(
        f'{source}: no weights for layer {missing[0]!r} of the {backbone} '
        f'trunk ({len(missing)} of its {len(ours)} layers have none); is it '
        'a file for another network?')
  return new


def _in_keras_order(layers, backbone, source):
  """`layers` renamed by position: the i-th weighted layer of the file gets
  the name of the i-th weighted layer of the Keras model (built with
  weights=None, nothing downloaded). This is how Keras itself loads a legacy
  HDF5 file; used for files whose naming shares nothing with ours (e.g. the
  Keras 2.0-era ResNet-50 file's 'res2a_branch2a')."""
  import keras  # pylint: disable=g-import-not-at-top
  model = getattr(keras.applications, KERAS_BUILDERS[backbone])(
      weights=None, include_top=False)
  names = [l.name for l in model.layers
           if l.weights and not _INPUT_NORMALIZATION.match(l.name)]
  weighted = [(n, ws) for n, ws in layers
              if ws and n not in TOP_LAYERS and not _INPUT_NORMALIZATION.match(n)]
  if len(weighted) != len(names):
    raise UserError(f'{source}: {len(weighted)} layers with weights; Keras '
                    f'{KERAS_BUILDERS[backbone]} has {len(names)}.')
  inputs = [(n, ws) for n, ws in layers if _INPUT_NORMALIZATION.match(n)]
  return _canonical(inputs + [(k, ws) for k, (_, ws) in zip(names, weighted)],
                    backbone)


def load_file(trunk: dict, path: str, backbone: str, source: str) -> dict:
  """One trunk's variables from `path` (read_layers, then fill_trunk).

  Layers are matched by name. A legacy .h5 whose layer names share none with
  the trunk is matched by position, as Keras does; if that fails too, the
  by-name error is raised.
  """
  layers = read_layers(path, backbone)
  ours = set(trunk.get('params', {})) | set(trunk.get('batch_stats', {}))
  if (not ours & {n for n, ws in layers if ws} and backbone in KERAS_BUILDERS
      and _file_kind(path, backbone) == 'h5'):
    try:
      return fill_trunk(trunk, _in_keras_order(layers, backbone, source),
                        backbone, source)
    except UserError:
      pass  # Report the by-name mismatch below, which names a layer.
  return fill_trunk(trunk, layers, backbone, source)


# --- Config -------------------------------------------------------------------


def trunk_weights(config) -> list[tuple[str, str, str, str]]:
  """[(branch, backbone, config field, path)] for the trunks the model has.

  path '' = random init. `model.pretrained` (older form, one .npz for both
  trunks) may not be combined with `model.*_weights`.
  """
  m = config.model
  speech = m.get('speech_weights', '')
  image = m.get('image_weights', '')
  both = m.get('pretrained', '')
  if both and (speech or image):
    raise UserError('model.pretrained (one .npz for both trunks) and '
                    'model.speech_weights/model.image_weights are exclusive; '
                    'use the *_weights fields.')
  out = []
  if m.modalities in ('both', 'speech'):
    field = 'model.pretrained' if both else 'model.speech_weights'
    out.append(('N2_s', m.speech_backbone, field, both or speech))
  if m.modalities in ('both', 'image'):
    field = 'model.pretrained' if both else 'model.image_weights'
    out.append(('N2_i', m.image_backbone, field, both or image))
  return out


def check_files(config):
  """Cheap checks before anything runs: each weights file exists, has a
  known format (PyTorch importable for .pth) and the image scaling agrees
  with the image weights. UserError otherwise; the files are read later."""
  check_required(config)
  for _, backbone, field, path in trunk_weights(config):
    if path:
      try:
        if _file_kind(path, backbone) == 'torchvision':
          _import_torch(path)
      except UserError as e:
        raise UserError(f'{field}={e}') from e
  scaling_table.resolve_scaling(config)


def speech_input_scaling(config) -> str:
  """How the adapter's 3-channel output is mapped into N2_s's trunk.

  With speech weights: the adapter output a is read as an RGB image in
  [0, 1] and gets the scaling the weights expect, scale_float(255 a, mode);
  '' (fed as is) without weights or when the trunk declares no scaling.
  """
  for branch, backbone, _, path in trunk_weights(config):
    if branch == 'N2_s' and path:
      return scaling_table.weights_scaling(backbone, path) or ''
  return ''


def random_trunks_warning(config) -> str | None:
  """One line when full-size N2 trunks start from random weights, else None.

  Narrow trunks (model.width < 1: the demo, runlocal) fit no published
  weights, so they get no warning.
  """
  if float(config.model.width) < 1.0:
    return None
  missing = [(branch, backbone, field) for branch, backbone, field, path in
             trunk_weights(config) if not path]
  if not missing:
    return None
  random = [f'{branch} ({backbone})' for branch, backbone, _ in missing]
  return (f'N2 trunks {", ".join(random)} start from random weights: results '
          'will not match the paper\'s, which fine-tunes ImageNet weights; '
          f'pass the files with {weights_overrides(missing)} (README, '
          '"Pretrained weights"; the config variant imagenet requires them).')


def weights_overrides(missing) -> str:
  """The command-line overrides that give the trunks in `missing`
  [(branch, backbone, field)] their files, e.g.
  `--config.model.image_weights=/path/to/vgg19.h5`."""
  return ' '.join(f'--config.{field}=/path/to/{backbone}.h5'
                  for _, backbone, field in missing)


def check_required(config):
  """UserError naming the empty fields when config.model.require_weights
  (the imagenet variant) and a trunk the model has has no weights file."""
  if not config.model.get('require_weights', False):
    return
  missing = [(branch, backbone, field) for branch, backbone, field, path in
             trunk_weights(config) if not path]
  if missing:
    raise UserError(
        f'config.model.require_weights (the imagenet variant) needs a weights '
        f'file for every N2 trunk; {", ".join(f for *_, f in missing)} '
        f'{"is" if len(missing) == 1 else "are"} empty: give '
        f'{weights_overrides(missing)}.')


def load_into(variables: dict, config) -> dict:
  """ParallelNet variables with the N2 trunks replaced from the weight files.

  Checks the image scaling against the image weights first, then reads and
  fills every trunk before returning anything (UserError otherwise).
  """
  jobs = [j for j in trunk_weights(config) if j[3]]
  if any(branch == 'N2_i' for branch, *_ in jobs):
    scaling_table.resolve_scaling(config)
  loaded = {}
  for branch, backbone, field, path in jobs:
    trunk = {c: variables[c].get(branch, {}).get('backbone', {})
             for c in ('params', 'batch_stats')}
    loaded[branch] = load_file(trunk, path, backbone, f'{field}={path}')
  variables = {'params': dict(variables['params']),
               'batch_stats': dict(variables['batch_stats'])}
  for branch, trunk in loaded.items():
    for c in ('params', 'batch_stats'):
      if trunk[c]:
        variables[c][branch] = dict(variables[c][branch], backbone=trunk[c])
  return variables


# --- Exporter (needs internet: Keras downloads its ImageNet files) -----------


def export_keras(keras_model, backbone: str) -> dict[str, np.ndarray]:
  """The weights of a Keras Applications trunk as {backbone/layer/weight}."""
  rename = {}
  if backbone == 'inception_v3':
    rename = _fresh_session_names([layer.name for layer in keras_model.layers])
  out = {}
  for layer in keras_model.layers:
    for w in layer.weights:
      wname = w.path.rsplit('/', 1)[-1]
      if wname not in _KERAS_TO_FLAX:
        continue  # Keras' input Normalization mean/variance/count: not ours.
      lname = rename.get(layer.name, layer.name)
      out[f'{backbone}/{lname}/{wname}'] = np.asarray(w.numpy())
  return out


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
