"""Pretrained trunk weights (models/pretrained.py) and input scaling.

Every Keras-backed backbone: a Keras Applications model built with
weights=None (seeded random weights, nothing downloaded), saved in both HDF5
layouts, loaded through config.model.image_weights; our trunk on our scaling
of a non-square image must give Keras' output on Keras' preprocess_input.
"""

import builtins
import functools
import re

import h5py
import jax
import numpy as np
import pytest

from configs import parallelnet as config_lib
from input_pipeline import image as image_lib
from parallelnet.core import scaling as core_scaling
from parallelnet.models import scaling as model_scaling
from parallelnet.core.errors import UserError
from parallelnet import models
from parallelnet.models import backbones
from parallelnet.models import pretrained
from parallelnet.models import vgg
import train_helpers

keras = pytest.importorskip('keras')
from keras.src.legacy.saving import legacy_h5_format  # pylint: disable=g-import-not-at-top,g-bad-import-order

pytestmark = [
    pytest.mark.usefixtures('fast_compile'),
    # Keras' TF backend converts variables with a deprecated numpy call.
    pytest.mark.filterwarnings('ignore::DeprecationWarning'),
]

# Smallest non-square input each Keras model accepts (Inception-v3: 75).
SIZES = {name: (32, 40) for name in pretrained.KERAS_BUILDERS}
SIZES['inception_v3'] = (75, 83)
# keras.applications module holding each model's preprocess_input.
KERAS_MODULES = {
    'vgg16': 'vgg16', 'vgg19': 'vgg19', 'resnet50': 'resnet50',
    'resnet101': 'resnet', 'mobilenet_v2': 'mobilenet_v2',
    'densenet121': 'densenet', 'efficientnet_b0': 'efficientnet',
    'inception_v3': 'inception_v3',
}


def test_every_keras_backed_backbone_is_covered():
  assert set(pretrained.KERAS_BUILDERS) == set(SIZES) == set(KERAS_MODULES)
  assert set(pretrained.KERAS_BUILDERS) == set(backbones.known_backbones()) - {
      'resnet34'}  # Keras has no ResNet-34.
  for name in pretrained.KERAS_BUILDERS:
    assert backbones.imagenet_scaling(name) in core_scaling.SCALINGS


def _randomize(model, seed):
  """Random weights everywhere (BatchNorm variances positive), so that a
  misplaced or mis-transposed weight would change the output. EfficientNet's
  input Normalization gets ImageNet's statistics, as in Keras' ImageNet file."""
  rng = np.random.default_rng(seed)
  values = []
  for w in model.weights:
    if w.path.startswith('normalization'):
      values.append({'mean': core_scaling.IMAGENET_MEAN_RGB,
                     'variance': core_scaling.IMAGENET_STD_RGB**2}.get(
                         w.path.rsplit('/', 1)[-1], np.zeros(w.shape)))
    elif w.path.endswith('moving_variance'):
      values.append(rng.uniform(0.5, 1.5, w.shape))
    else:
      values.append(rng.normal(
          0.0, np.sqrt(2.0 / max(1, np.prod(w.shape[:-1]))), w.shape))
  model.set_weights([np.asarray(v, np.float32).reshape(w.shape)
                     for v, w in zip(values, model.weights)])


@pytest.fixture(scope='module')
def keras_files(tmp_path_factory):
  """name -> dict(legacy=.h5 path, keras3=.weights.h5 path, raw, ref, model).

  Built on first use per backbone, once per module.
  """
  root = tmp_path_factory.mktemp('keras_weights')

  @functools.cache
  def get(name):
    keras.utils.set_random_seed(0)
    h, w = SIZES[name]
    # Zero kernels at build: _randomize overwrites every weight.
    model = train_helpers.keras_architecture(
        pretrained.KERAS_BUILDERS[name], (h, w, 3))
    _randomize(model, seed=len(name))
    legacy = str(root / f'{name}_notop.h5')
    with h5py.File(legacy, 'w') as f:
      legacy_h5_format.save_weights_to_hdf5_group(f, model)
    keras3 = str(root / f'{name}.weights.h5')
    model.save_weights(keras3)
    raw = np.random.default_rng(1).uniform(0, 255, (1, h, w, 3)).astype(
        np.float32)
    module = getattr(keras.applications, KERAS_MODULES[name])
    ref = np.asarray(model(module.preprocess_input(raw.copy()),
                           training=False))
    return dict(legacy=legacy, keras3=keras3, raw=raw, ref=ref, model=model)

  return get


def _config(backbone, weights, image_size=32, modalities='image'):
  config = config_lib.get_config('runlocal')
  config.model.modalities = modalities
  config.model.image_backbone = backbone
  config.model.width = 1.0
  config.model.image_weights = weights
  config.input.image_size = image_size
  return config


def _shapes(config):
  """ShapeDtypeStructs of the model's variables (traced once per structure)."""
  m = config.model
  return _shapes_of(m.modalities, m.speech_backbone, m.image_backbone,
                    m.width, config.input.image_size)


@functools.cache
def _shapes_of(modalities, speech_backbone, image_backbone, width, size):
  config = _config(image_backbone, '', size, modalities)
  config.model.speech_backbone = speech_backbone
  config.model.width = width
  model = models.get_model(config)
  return jax.eval_shape(lambda k: models.init_variables(
      model, config, k, load_pretrained=False), jax.random.key(0))


def _load(config, shapes=None):
  """Variables after load_into, from ShapeDtypeStructs (nothing compiled)."""
  return pretrained.load_into(shapes or _shapes(config), config)


def _trunk(variables, branch):
  return {c: variables[c][branch]['backbone']
          for c in ('params', 'batch_stats')
          if branch in variables[c] and 'backbone' in variables[c][branch]}


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(SIZES))
def test_keras_files_give_keras_outputs(name, keras_files):
  files = keras_files(name)
  trunks, shapes = [], None
  for layout in ('legacy', 'keras3'):
    config = _config(name, files[layout], image_size=max(SIZES[name]))
    shapes = shapes or _shapes(config)
    trunks.append(_trunk(_load(config, shapes), 'N2_i'))
    assert model_scaling.resolve_scaling(config) == backbones.imagenet_scaling(
        name)
  jax.tree.map(np.testing.assert_array_equal, *trunks)
  x = core_scaling.scale_float(files['raw'], backbones.imagenet_scaling(name))
  net = models.get_backbone(name)
  ours = np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(
      trunks[0], x))
  ref = files['ref']
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-5,
                             atol=1e-5 * float(np.abs(ref).max()))


@pytest.mark.slow
def test_with_top_file_loads_the_trunk_and_skips_the_top(keras_files,
                                                         tmp_path):
  base = keras_files('vgg16')['model']
  x = keras.layers.Flatten(name='flatten')(base.output)
  x = keras.layers.Dense(8, name='fc1')(x)
  x = keras.layers.Dense(8, name='fc2')(x)
  x = keras.layers.Dense(3, name='predictions')(x)
  with_top = keras.Model(base.input, x)
  path = str(tmp_path / 'vgg16_with_top.h5')
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, with_top)
  notop = _trunk(_load(_config('vgg16', keras_files('vgg16')['legacy'])),
                 'N2_i')
  trunk = _trunk(_load(_config('vgg16', path)), 'N2_i')
  jax.tree.map(np.testing.assert_array_equal, trunk, notop)
  # A whole model in legacy HDF5 (weights under `model_weights`).
  whole = str(tmp_path / 'vgg16_model.h5')
  legacy_h5_format.save_model_to_hdf5(with_top, whole)
  with h5py.File(whole, 'r') as f:
    assert 'model_weights' in f
  trunk = _trunk(_load(_config('vgg16', whole)), 'N2_i')
  jax.tree.map(np.testing.assert_array_equal, trunk, notop)


def _rewrite_legacy(src, dst, layer_name, weight_name):
  """A copy of legacy .h5 `src` with layer and weight names rewritten, the way
  older Keras wrote the files keras.applications downloads."""
  with h5py.File(src, 'r') as fin, h5py.File(dst, 'w') as fout:
    names = pretrained._attr_list(fin, 'layer_names')  # pylint: disable=protected-access
    fout.attrs['layer_names'] = [layer_name(n).encode() for n in names]
    for n in names:
      g = fout.create_group(layer_name(n))
      weights = pretrained._attr_list(fin[n], 'weight_names')  # pylint: disable=protected-access
      new = [weight_name(layer_name(n), w) for w in weights]
      g.attrs['weight_names'] = [w.encode() for w in new]
      for w, v in zip(weights, new):
        g.create_dataset(v, data=fin[n][w][()])


@pytest.mark.slow
def test_older_keras_naming_loads(keras_files, tmp_path):
  """Keras 1 weight names (VGG's block1_conv1_W_1:0), Keras 2's '/' in
  DenseNet layer names, Inception-v3 auto-names counted from 1, and foreign
  names (matched by position)."""
  def keras1(layer, w):
    return f'{layer}_{"W" if w.endswith("kernel") else "b"}_1:0'

  def inception_name(n):
    m = re.fullmatch(r'(conv2d|batch_normalization)(?:_(\d+))?', n)
    return f'{m.group(1)}_{int(m.group(2) or 0) + 1}' if m else n

  cases = [
      ('vgg16', lambda n: n, keras1),
      ('densenet121', lambda n: re.sub(r'^(conv\d|pool\d)_', r'\1/', n),
       lambda layer, w: f'{layer}/{w.rsplit("/", 1)[-1]}:0'),
      ('inception_v3', inception_name,
       lambda layer, w: f'{layer}/{w.rsplit("/", 1)[-1]}:0'),
  ]
  # Names that share nothing with Keras 3's (like the Keras 2.0-era ResNet-50
  # file's 'res2a_branch2a'): matched by position, as Keras does.
  cases.append(('resnet50',
                lambda n: 'old_' + n,
                lambda layer, w: f'{layer}_{w.rsplit("/", 1)[-1]}:0'))
  for name, layer_name, weight_name in cases:
    files = keras_files(name)
    path = str(tmp_path / f'{name}_old.h5')
    _rewrite_legacy(files['legacy'], path, layer_name, weight_name)
    read = lambda p: [(n, [w for w, _ in ws]) for n, ws in  # pylint: disable=protected-access
                      pretrained._read_h5(p, name) if ws]
    old_names, new_names = read(path), read(files['legacy'])
    assert len(old_names) == len(new_names)
    assert all(o != n for o, n in zip(old_names, new_names))  # All renamed.
    config = _config(name, path, image_size=max(SIZES[name]))
    shapes = _shapes(config)
    old = _trunk(_load(config, shapes), 'N2_i')
    config.model.image_weights = files['keras3']
    jax.tree.map(np.testing.assert_array_equal, old,
                 _trunk(_load(config, shapes), 'N2_i'))
  # By position fails for another network: the error is the by-name one.
  with pytest.raises(UserError, match="layer 'old_conv1_conv' of the file has "
                     'no counterpart in the vgg16 trunk'):
    _load(_config('vgg16', path))


@pytest.mark.slow
def test_keras3_file_without_layer_names_loads(keras_files, tmp_path):
  """Keras 3 versions that do not record names: keys map via the model."""
  files = keras_files('mobilenet_v2')
  path = str(tmp_path / 'unnamed.weights.h5')
  with h5py.File(files['keras3'], 'r') as fin, h5py.File(path, 'w') as fout:
    fin.copy(fin['layers'], fout, 'layers')
    for group in fout['layers'].values():
      group['vars'].attrs.pop('name', None)
    assert not any('name' in g['vars'].attrs for g in fout['layers'].values())
  config = _config('mobilenet_v2', path,
                   image_size=max(SIZES['mobilenet_v2']))  # Shapes cached.
  shapes = _shapes(config)
  unnamed = _trunk(_load(config, shapes), 'N2_i')
  config.model.image_weights = files['keras3']
  jax.tree.map(np.testing.assert_array_equal, unnamed,
               _trunk(_load(config, shapes), 'N2_i'))


@pytest.mark.slow
def test_wrong_architecture_fails_naming_the_layer(keras_files):
  cases = [
      ('vgg16', 'vgg19', r"no weights for layer 'block3_conv4' of the vgg19"),
      ('resnet50', 'resnet101', r"no weights for layer 'conv4_block7_"),
      ('mobilenet_v2', 'efficientnet_b0',
       r"layer 'Conv1' of the file has no counterpart in the efficientnet_b0"),
  ]
  for source, target, message in cases:
    for layout in ('legacy', 'keras3'):
      # The input size of test_keras_files_give_keras_outputs: its traced
      # variable shapes serve again (_shapes_of's cache).
      config = _config(target, keras_files(source)[layout],
                       image_size=max(SIZES[target]))
      with pytest.raises(UserError, match=message):
        _load(config)
  config = _config('vgg16', keras_files('vgg16')['legacy'])
  config.model.width = 0.5
  with pytest.raises(UserError, match=r"'block1_conv1' kernel has shape "
                     r'\(3, 3, 3, 64\); the vgg16 trunk wants \(3, 3, 3, 32\)'):
    _load(config)


@pytest.mark.slow
def test_npz_and_speech_weights_fill_n2_s(keras_files, tmp_path):
  vgg16 = keras_files('vgg16')
  path = str(tmp_path / 'trunks.npz')
  np.savez(path, **pretrained.export_keras(vgg16['model'], 'vgg16'))
  config = _config('vgg19', keras_files('vgg19')['keras3'], modalities='both')
  config.model.speech_backbone = 'vgg16'
  config.model.speech_weights = path
  loaded = _load(config)
  from_h5 = _trunk(_load(_config('vgg16', vgg16['legacy'])), 'N2_i')
  jax.tree.map(np.testing.assert_array_equal, _trunk(loaded, 'N2_s'),
               from_h5)
  np.testing.assert_array_equal(
      loaded['params']['N2_i']['backbone']['block5_conv4']['bias'],
      keras_files('vgg19')['model'].get_layer('block5_conv4').bias.numpy())
  # Only the trunks are replaced.
  assert isinstance(loaded['params']['N1_i']['dense']['kernel'],
                    jax.ShapeDtypeStruct)
  # The older field: one .npz for both trunks; not combined with *_weights.
  config.model.pretrained = path
  with pytest.raises(UserError, match='exclusive'):
    _load(config)
  config.model.speech_weights = config.model.image_weights = ''
  config.model.image_backbone = 'vgg16'
  loaded = _load(config)
  jax.tree.map(np.testing.assert_array_equal, _trunk(loaded, 'N2_i'),
               from_h5)
  config.model.image_backbone = 'vgg19'
  with pytest.raises(UserError, match="no weights for backbone 'vgg19'"):
    _load(config)


def test_missing_or_foreign_files_are_user_errors(tmp_path):
  with pytest.raises(UserError, match='no such weights file'):
    _load(_config('vgg16', str(tmp_path / 'absent.h5')))
  # main.py's check before anything runs names the field.
  with pytest.raises(UserError, match=r'^model.image_weights=.*absent.h5: no '
                     'such weights file'):
    pretrained.check_files(_config('vgg16', str(tmp_path / 'absent.h5')))
  pth = tmp_path / 'densenet121.pth'
  pth.write_bytes(b'')
  with pytest.raises(UserError, match='load into vgg16 and vgg19 only'):
    pretrained.check_files(_config('densenet121', str(pth)))
  bad = tmp_path / 'model.keras'
  bad.write_bytes(b'PK\x03\x04')
  with pytest.raises(UserError, match='unknown weights format'):
    _load(_config('vgg16', str(bad)))
  other = tmp_path / 'other.h5'
  with h5py.File(other, 'w') as f:
    f.create_dataset('x', data=np.zeros(3))
  with pytest.raises(UserError, match='not Keras weights'):
    _load(_config('vgg16', str(other)))


@pytest.mark.slow
def test_speech_weights_scale_the_adapter_output(tmp_path):
  """N2_s reads scale_float(255 * adapter(spectrogram), the weights' mode)."""
  config = config_lib.get_config('runlocal')
  model = models.get_model(config)
  shapes = jax.eval_shape(lambda k: models.init_variables(
      model, config, k, load_pretrained=False), jax.random.key(0))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda s: rng.normal(0.1, 0.05, s.shape).astype(s.dtype), shapes)
  arrays = {f'vgg16/{layer}/{var}': x for layer, vs in
            variables['params']['N2_s']['backbone'].items()
            for var, x in vs.items()}
  path = str(tmp_path / 'tiny_vgg16.npz')
  np.savez(path, **arrays)
  config.model.speech_weights = path
  assert pretrained.speech_input_scaling(config) == 'caffe'
  model = models.get_model(config)
  assert model.speech_scaling == 'caffe'
  variables = pretrained.load_into(variables, config)
  image = rng.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
  spec = rng.uniform(0, 1, (2, 32, 32, 1)).astype(np.float32)
  # Compiled rather than op by op: the same values, a fraction of the time.
  _, state = jax.jit(lambda v, i, s: model.apply(
      v, i, s, train=False, mutable=['intermediates'],
      capture_intermediates=lambda m, _: m.name in ('adapter', 'backbone')))(
          variables, image, spec)
  inter = state['intermediates']
  adapter_out = inter['adapter']['__call__'][0]
  trunk = models.get_backbone('vgg16', width=config.model.width)
  expected = jax.jit(trunk.apply)(
      {'params': variables['params']['N2_s']['backbone']},
      core_scaling.scale_float(255.0 * adapter_out, 'caffe'))
  np.testing.assert_allclose(inter['N2_s']['backbone']['__call__'][0],
                             expected, rtol=1e-5, atol=1e-5)
  config.model.speech_weights = ''
  assert pretrained.speech_input_scaling(config) == ''


def test_scalings_match_keras_preprocess_input_and_invert():
  from keras.applications import imagenet_utils  # pylint: disable=g-import-not-at-top
  img = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(
      np.uint8)
  for mode in ('caffe', 'tf', 'torch'):
    ours = core_scaling.scale_image(img, mode)
    np.testing.assert_allclose(ours, imagenet_utils.preprocess_input(
        img.astype(np.float32), mode=mode), rtol=1e-5, atol=1e-4)
  for mode in core_scaling.SCALINGS:
    np.testing.assert_allclose(
        core_scaling.unscale_image(core_scaling.scale_image(img, mode), mode),
        img / 255.0, atol=1e-5)


def test_auto_scaling_follows_the_image_weights():
  config = config_lib.get_config()
  assert config.input.image_scaling == 'auto'
  assert model_scaling.resolve_scaling(config) == 'caffe'  # No weights.
  for backbone, path, mode in (
      ('vgg19', 'vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5', 'caffe'),
      ('mobilenet_v2', 'x.weights.h5', 'tf'),
      ('inception_v3', 'x.h5', 'tf'),
      ('densenet121', 'x.npz', 'torch'),
      ('efficientnet_b0', 'x.h5', 'torch'),
      ('vgg19', 'vgg19-dcbb9e9d.pth', 'torch')):
    config.model.image_backbone = backbone
    config.model.image_weights = path
    assert model_scaling.resolve_scaling(config) == mode, backbone
  config.input.image_scaling = 'caffe'
  with pytest.raises(UserError, match=r"image_scaling='caffe' contradicts the "
                     r'vgg19 weights.*use --config.input.image_scaling=torch'):
    model_scaling.resolve_scaling(config)
  config.model.modalities = 'speech'  # No image trunk: nothing to contradict.
  assert model_scaling.resolve_scaling(config) == 'caffe'
  config.input.image_scaling = 'bgr'
  with pytest.raises(UserError, match="image_scaling='bgr'"):
    model_scaling.resolve_scaling(config)


def test_paper_config_without_weights_warns_once():
  config = config_lib.get_config()
  message = pretrained.random_trunks_warning(config)
  assert 'N2_s (vgg16), N2_i (vgg19) start from random weights' in message
  assert 'will not match the paper' in message and '\n' not in message
  # The exact overrides that give the files.
  assert ('--config.model.speech_weights=/path/to/vgg16.h5 '
          '--config.model.image_weights=/path/to/vgg19.h5') in message
  config.model.speech_weights = 'a.h5'
  message = pretrained.random_trunks_warning(config)
  assert message.startswith('N2 trunks N2_i (vgg19) start')
  assert '--config.model.image_weights=/path/to/vgg19.h5' in message
  assert 'speech_weights' not in message
  config.model.image_weights = 'b.h5'
  assert pretrained.random_trunks_warning(config) is None
  assert pretrained.random_trunks_warning(
      config_lib.get_config('ser_only,runlocal')) is None  # Tiny trunks.


def _vgg16_state_dict(model):
  """torchvision vgg16's state dict layout from a Keras VGG16's weights."""
  torch = pytest.importorskip('torch')
  state, i = {}, 0
  for b, (_, convs) in enumerate(vgg.VGG16_BLOCKS, start=1):
    for c in range(1, convs + 1):
      layer = model.get_layer(f'block{b}_conv{c}')
      state[f'features.{i}.weight'] = torch.tensor(
          np.transpose(layer.kernel.numpy(), (3, 2, 0, 1)).copy())
      state[f'features.{i}.bias'] = torch.tensor(layer.bias.numpy())
      i += 2
    i += 1
  state['classifier.6.bias'] = torch.zeros(1000)  # The top: skipped.
  return state


def test_torchvision_vgg_state_dict(keras_files, tmp_path):
  torch = pytest.importorskip('torch')
  vgg16 = keras_files('vgg16')
  state = _vgg16_state_dict(vgg16['model'])
  path = str(tmp_path / 'vgg16-397923af.pth')
  torch.save(state, path)
  config = _config('vgg16', path)
  assert model_scaling.resolve_scaling(config) == 'torch'
  jax.tree.map(np.testing.assert_array_equal, _trunk(_load(config), 'N2_i'),
               _trunk(_load(_config('vgg16', vgg16['legacy'])), 'N2_i'))
  state['features.1.running_mean'] = torch.zeros(64)  # A vgg16_bn file.
  torch.save(state, path)
  with pytest.raises(UserError, match="'features.1.running_mean' is not part"):
    _load(config)


def test_torchvision_file_without_torch_says_how_to_install(tmp_path,
                                                            monkeypatch):
  path = tmp_path / 'vgg16-397923af.pth'
  path.write_bytes(b'not read')
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == 'torch' or name.startswith('torch.'):
      raise ImportError(f'No module named {name!r}')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_torch)
  with pytest.raises(UserError, match='pip install torch'):
    _load(_config('vgg16', str(path)))
  with pytest.raises(UserError, match='pip install torch'):
    pretrained.check_files(_config('vgg16', str(path)))


def test_imagenet_variant_requires_the_weight_files(tmp_path):
  """The paper's ImageNet-initialised trunks: an empty weights field is an
  error naming it and the override, before training or at init."""
  config = config_lib.get_config('imagenet')
  assert config.model.require_weights
  with pytest.raises(UserError, match=r'model\.speech_weights, '
                     r'model\.image_weights are empty: give '
                     r'--config\.model\.speech_weights=/path/to/vgg16\.h5 '
                     r'--config\.model\.image_weights=/path/to/vgg19\.h5'):
    pretrained.check_files(config)
  config = config_lib.get_config('imagenet,ier_only,runlocal')
  with pytest.raises(UserError, match=r'model\.image_weights is empty'):
    models.init_variables(models.get_model(config), config,
                          jax.random.key(0))
  config.model.image_weights = str(tmp_path / 'absent.h5')
  with pytest.raises(UserError, match='no such weights file'):
    pretrained.check_files(config)  # Now the file itself is checked.
  # The default keeps random trunks (with the warning).
  pretrained.check_files(config_lib.get_config())
