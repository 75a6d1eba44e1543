"""Tests of the ParallelNet model family (PAPER.md, "The two branches" to "Crossing positions", paper Eq. 1-2)."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import parallelnet as config_lib
from parallelnet import models
from parallelnet import summary
from parallelnet.models import common
from parallelnet.models import parallelnet as parallelnet_lib
import train_helpers

pytestmark = pytest.mark.usefixtures('fast_compile')


def tiny_config(arg=''):
  """runlocal: 32x32 image and spectrogram, width 1/16, small heads."""
  return config_lib.get_config(','.join(filter(None, ['runlocal', arg])))


def random_inputs(config, seed, batch=2):
  """A normal image batch and a uniform spectrogram batch, float32, drawn in
  numpy (jax.random compiles its samplers for every new shape)."""
  rng = np.random.default_rng(seed)
  s = config.input.image_size
  image = rng.standard_normal((batch, s, s, 3), np.float32)
  spectrogram = rng.random(
      (batch, config.input.num_frames, config.input.n_mels, 1), np.float32)
  return image, spectrogram


def build(config, seed=0, real_init=False):
  model = models.get_model(config)
  if real_init:
    variables = models.init_variables(model, config, jax.random.key(seed))
  else:
    variables = train_helpers.quick_variables(
        lambda k: models.init_variables(model, config, k), seed)
  apply = jax.jit(lambda v, i, s: model.apply(v, i, s, train=False))
  return model, variables, apply


@pytest.fixture(scope='module')
def proposed():
  """The proposed model ('after' crossing) at tiny size, and one eval pass."""
  config = tiny_config()
  model, variables, apply = build(config, real_init=True)
  image, spectrogram = random_inputs(config, 1)
  logits, inter = apply(variables, image, spectrogram)
  return dict(config=config, model=model, variables=variables, apply=apply,
              image=image, spectrogram=spectrogram, logits=logits, inter=inter)


# --- Parameter counts (PAPER.md, "The two branches") ----------------------------------------------


def conv(k, cin, cout):
  return k * k * cin * cout + cout


def dense(fin, fout):
  return fin * fout + fout


def test_paper_parameter_count():
  config = config_lib.get_config()
  shapes = summary.variable_shapes(config)
  # Derivation at 128x128 inputs, C = 4:
  # N1 convs: 3x3 convs 64, 64, 128, 128, 256, 256 on 3 (image) or 1 (speech)
  # input channels; three 2x2 pools take 128 -> 16, so BatchNorm(256) has
  # 2*256 trainable params and Dense(512) reads 16*16*256 = 65536 features.
  n1_convs_rest = (conv(3, 64, 64) + conv(3, 64, 128) + conv(3, 128, 128)
                   + conv(3, 128, 256) + conv(3, 256, 256))
  n1_i = conv(3, 3, 64) + n1_convs_rest + 2 * 256 + dense(16 * 16 * 256, 512)
  n1_s = conv(3, 1, 64) + n1_convs_rest + 2 * 256 + dense(16 * 16 * 256, 512)
  # N2: Keras VGG16 / VGG19 without top (14,714,688 / 20,024,384 params), five
  # pools take 128 -> 4, BatchNorm(512), Dense(512) on 4*4*512 = 8192 features.
  n2_tail = 2 * 512 + dense(4 * 4 * 512, 512)
  n2_s = 14_714_688 + n2_tail
  n2_i = 20_024_384 + n2_tail
  adapter = conv(1, 1, 3)
  head = dense(512, 1024) + dense(1024, 1024) + dense(1024, 4)
  theta = 3
  expected = n1_i + n1_s + n2_s + n2_i + adapter + 3 * head + theta
  assert expected == 117_268_373
  by_branch = models.count_by_branch(shapes['params'])
  assert by_branch == {
      'N1_i': n1_i, 'N1_s': n1_s, 'N2_i': n2_i, 'N2_s': n2_s,
      'adapter': adapter, 'head_sp': head, 'head_img': head,
      'head_mul': head, 'theta': theta}
  assert models.count_params(shapes['params']) == expected
  # Moving mean and variance of the four BatchNorms: 2*(256+256+512+512).
  assert models.count_params(shapes['batch_stats']) == 2 * (256 * 2 + 512 * 2)
  # Parameters of the trunks alone are Keras' published counts.
  assert models.count_params(
      shapes['params']['N2_s']['backbone']) == 14_714_688
  assert models.count_params(
      shapes['params']['N2_i']['backbone']) == 20_024_384


def test_summary_prints_table_and_totals():
  text = summary.summarize(config_lib.get_config())
  lines = text.splitlines()
  assert lines[-3:] == ['trainable_params=117268373', 'frozen_params=0',
                        'batch_stats=3072']
  rows = {l.split()[0]: l.split()[1] for l in lines[2:-3]}
  assert rows['N1_i'] == '34,700,864'
  assert rows['N2_s'] == '18,910,528'
  assert rows['adapter'] == '6'
  assert rows['theta'] == '3'
  assert set(rows) >= {'N1_s', 'N2_i', 'head_sp', 'head_img', 'head_mul'}
  # Frozen trunks (train.trunk_lr_multiplier=0) are counted as frozen.
  config = config_lib.get_config()
  config.train.trunk_lr_multiplier = 0.0
  lines = summary.summarize(config).splitlines()
  frozen = {l.split()[0]: int(l.split()[2].replace(',', ''))
            for l in lines[2:-3]}
  trunks = frozen['N2_s'] + frozen['N2_i']
  assert trunks == 14_714_688 + 20_024_384  # Keras VGG16, VGG19 notop.
  assert sum(frozen.values()) - frozen['total'] == trunks
  assert lines[-3:] == [f'trainable_params={117268373 - trunks}',
                        f'frozen_params={trunks}', 'batch_stats=3072']


# --- Equations 1 and 2 --------------------------------------------------------


@pytest.mark.slow
def test_eq1_against_separately_applied_branches(proposed):
  """F_i, F_s, F_mul from N1_i, N1_s, N2_i, N2_s applied one by one, each as
  its own module on its own slice of the variables (not the model's sums)."""
  p, config = proposed, proposed['config']
  m = config.model

  n1 = parallelnet_lib.ConvBranch(m.feature_dim, m.width,
                                  bn_momentum=m.bn_momentum)
  n2_s = parallelnet_lib.BackboneBranch(m.speech_backbone, m.feature_dim,
                                        m.width, bn_momentum=m.bn_momentum)
  n2_i = parallelnet_lib.BackboneBranch(m.image_backbone, m.feature_dim,
                                        m.width, bn_momentum=m.bn_momentum)
  adapter = parallelnet_lib.conv1x1(3, jnp.float32, 'adapter')

  # Each branch applied on its own; the four in one compiled program (one
  # compilation instead of one per branch; op by op costs more).
  @jax.jit
  def branches(v, image, speech):
    def branch(module, name, x):
      return module.apply({'params': v['params'][name],
                           'batch_stats': v['batch_stats'][name]}, x,
                          train=False)
    speech3 = adapter.apply({'params': v['params']['adapter']}, speech)
    return dict(N1_i=branch(n1, 'N1_i', image),
                N1_s=branch(n1, 'N1_s', speech),
                N2_s=branch(n2_s, 'N2_s', speech3),
                N2_i=branch(n2_i, 'N2_i', image))

  b = branches(p['variables'], p['image'], p['spectrogram'])
  f_i = b['N1_i'] + b['N2_s']
  f_s = b['N1_s'] + b['N2_i']
  t = p['inter']
  np.testing.assert_allclose(t['F_i'], f_i, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(t['F_s'], f_s, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(t['F_mul'], f_i * f_s, rtol=1e-4, atol=1e-5)
  # The text's reading (N2_i in F_s), not Eq. 1's misprint (N1_i in F_s):
  # the two differ here.
  misprint = b['N1_s'] + b['N1_i']
  assert float(jnp.abs(misprint - t['F_s']).max()) > 1e-3


@pytest.mark.slow
def test_baseline1_crosses_n1_first_part_before_n2(tiny_trunk):
  """Baseline 1 ('both'): N2_s's input holds P_is(N1a_i(image)), so
  changing only N1_i's first block changes N2_s; in Baseline 2 ('before')
  N2_s reads the raw image and does not see N1_i's weights at all. (The
  wiring before N2 is the subject: a tiny trunk serves.)"""
  outs = {}
  for crossing in ('both', 'before'):
    config = tiny_config(f'n2={tiny_trunk}')
    config.model.crossing = crossing
    _, variables, apply = build(config)
    image, spectrogram = random_inputs(config, 5)
    _, t1 = apply(variables, image, spectrogram)
    params = jax.tree.map(lambda x: x, variables['params'])
    conv = params['N1_i']['convs']['block1_conv2']
    params['N1_i']['convs']['block1_conv2'] = dict(
        conv, bias=conv['bias'] + 0.5)
    _, t2 = apply(dict(variables, params=params), image, spectrogram)
    outs[crossing] = (t1, t2, variables)
  t1, t2, variables = outs['both']
  assert not np.array_equal(t1['N2_s'], t2['N2_s'])
  np.testing.assert_array_equal(t1['N2_i'], t2['N2_i'])  # Speech side only.
  # P_is reads N1a's 64*width channels (Baseline 2: the image's 3).
  assert variables['params']['P_is']['kernel'].shape[2] == 4  # 64 / 16.
  assert outs['before'][2]['params']['P_is']['kernel'].shape[2] == 3
  t1, t2, _ = outs['before']
  np.testing.assert_array_equal(t1['N2_s'], t2['N2_s'])


def test_eq2_late_fusion(proposed):
  t = proposed['inter']
  theta = proposed['variables']['params']['theta']
  w = np.exp(theta) / np.exp(theta).sum()
  np.testing.assert_allclose(t['fusion_weights'], w, rtol=1e-6)
  expected = w[0] * t['O_sp'] + w[1] * t['O_img'] + w[2] * t['O_mul']
  np.testing.assert_allclose(proposed['logits'], expected, rtol=1e-5,
                             atol=1e-6)
  # Randomly initialised: the three weights are not all equal.
  assert np.ptp(np.asarray(theta)) > 1e-3
  # The heads differ, so the weighting matters.
  assert float(jnp.abs(t['O_sp'] - t['O_mul']).max()) > 1e-4


def test_heads_read_the_right_features(proposed):
  p = proposed['variables']['params']
  h = parallelnet_lib.Head(proposed['config'].model.head_dim, 4)
  t = proposed['inter']
  for name, feature, output in (('head_sp', 'F_s', 'O_sp'),
                                ('head_img', 'F_i', 'O_img'),
                                ('head_mul', 'F_mul', 'O_mul')):
    out = h.apply({'params': p[name]}, t[feature])
    np.testing.assert_allclose(out, t[output], rtol=1e-5, atol=1e-6)


def test_each_head_feeds_only_its_own_output(proposed):
  """Perturbing one head's parameters changes its O_k alone, and the
  logits move by w_k times that change (Eq. 2): a head wired to the wrong
  feature or a wrong weight would fail here."""
  p = proposed
  w = np.asarray(p['inter']['fusion_weights'])
  outputs = ('O_sp', 'O_img', 'O_mul')
  for k, (head, changed) in enumerate(zip(('head_sp', 'head_img',
                                           'head_mul'), outputs)):
    params = dict(p['variables']['params'])
    params[head] = jax.tree.map(lambda x: x * 1.5 + 0.01, params[head])
    logits, t = p['apply'](dict(p['variables'], params=params), p['image'],
                           p['spectrogram'])
    for o in outputs:
      if o == changed:
        assert float(jnp.abs(t[o] - p['inter'][o]).max()) > 1e-3, (head, o)
      else:
        np.testing.assert_array_equal(t[o], p['inter'][o])
    for f in ('F_i', 'F_s', 'F_mul'):
      np.testing.assert_array_equal(t[f], p['inter'][f])
    np.testing.assert_allclose(
        logits - p['logits'], w[k] * (t[changed] - p['inter'][changed]),
        rtol=1e-4, atol=1e-6)
  assert p['logits'].shape == (2, len(p['config'].dataset.classes))
  assert p['logits'].dtype == jnp.float32


def test_after_crossing_keeps_backbone_inputs_unmixed(proposed):
  p = proposed
  image2 = p['image'] + 1.0
  _, t2 = p['apply'](p['variables'], image2, p['spectrogram'])
  np.testing.assert_array_equal(t2['N2_s'], p['inter']['N2_s'])
  np.testing.assert_array_equal(t2['N1_s'], p['inter']['N1_s'])
  assert not np.array_equal(t2['N2_i'], p['inter']['N2_i'])


# --- Ablation family (PAPER.md, "Crossing positions") ------------------------------------------------


@pytest.mark.parametrize('variant,kept,dropped', [
    ('ser_only', 'spectrogram', 'image'),
    ('ier_only', 'image', 'spectrogram'),
])
@pytest.mark.slow
def test_unimodal_variants_ignore_the_other_modality(variant, kept, dropped):
  config = tiny_config(variant)
  _, variables, apply = build(config)
  image, spectrogram = random_inputs(config, 2)
  inputs = dict(image=image, spectrogram=spectrogram)
  logits1, t1 = apply(variables, inputs['image'], inputs['spectrogram'])
  other = dict(inputs)
  other[dropped] = np.random.default_rng(3).standard_normal(
      inputs[dropped].shape, np.float32) * 50.0
  logits2, t2 = apply(variables, other['image'], other['spectrogram'])
  np.testing.assert_array_equal(logits1, logits2)
  # ...while the kept modality does matter.
  changed = dict(inputs)
  changed[kept] = inputs[kept] + 0.5
  logits3, _ = apply(variables, changed['image'], changed['spectrogram'])
  assert not np.array_equal(logits1, logits3)
  # Only that modality's branches and head exist; no fusion.
  m = 's' if variant == 'ser_only' else 'i'
  expected = {f'N1_{m}', f'N2_{m}', f'F_{m}',
              'O_sp' if m == 's' else 'O_img'}
  assert set(t1) == expected
  np.testing.assert_array_equal(logits1, t1['O_sp' if m == 's' else 'O_img'])
  params = set(variables['params'])
  other = 'i' if m == 's' else 's'
  assert 'theta' not in params and f'N1_{other}' not in params


@pytest.mark.parametrize('crossing',
                         train_helpers.fast_first(['before', 'both']))
@pytest.mark.slow
def test_crossing_before_n2_mixes_modalities(crossing, tiny_trunk):
  # The wiring around N2 is the subject, not the trunk: a tiny one serves.
  config = tiny_config(f'n2={tiny_trunk}')
  config.model.crossing = crossing
  config.input.num_frames = 64  # T != H: the projections are resized.
  _, variables, apply = build(config)
  image, spectrogram = random_inputs(config, 4)
  _, t1 = apply(variables, image, spectrogram)
  _, t2 = apply(variables, image + 1.0, spectrogram)
  _, t3 = apply(variables, image, spectrogram + 0.5)
  # The image reaches N2_s and the speech reaches N2_i...
  assert not np.array_equal(t1['N2_s'], t2['N2_s'])
  assert not np.array_equal(t1['N2_i'], t3['N2_i'])
  # ...but not N1 of the other modality.
  np.testing.assert_array_equal(t1['N1_s'], t2['N1_s'])
  np.testing.assert_array_equal(t1['N1_i'], t3['N1_i'])
  if crossing == 'before':
    np.testing.assert_array_equal(t1['F_i'], t1['N1_i'] + t1['N2_i'])
    np.testing.assert_array_equal(t1['F_s'], t1['N1_s'] + t1['N2_s'])
  else:
    np.testing.assert_array_equal(t1['F_i'], t1['N1_i'] + t1['N2_s'])
    np.testing.assert_array_equal(t1['F_s'], t1['N1_s'] + t1['N2_i'])
  np.testing.assert_array_equal(t1['F_mul'], t1['F_i'] * t1['F_s'])
  assert {'P_is', 'P_si'} <= set(variables['params'])


def test_bad_config_and_inputs_raise():
  with pytest.raises(ValueError, match="Unknown backbone 'vgg17'.*vgg16"):
    models.get_backbone('vgg17', 1.0, jnp.float32)
  config = tiny_config()
  config.model.image_backbone = 'nope'
  model = models.get_model(config)
  with pytest.raises(ValueError, match="'nope'.*vgg19"):
    jax.eval_shape(lambda k: models.init_variables(model, config, k),
                   jax.random.key(0))
  config = tiny_config()
  config.model.crossing = 'sideways'
  with pytest.raises(ValueError, match='model.crossing'):
    models.init_variables(models.get_model(config), config, jax.random.key(0))
  config = tiny_config('ser_only,baseline2')
  with pytest.raises(ValueError, match='needs both modalities'):
    models.init_variables(models.get_model(config), config, jax.random.key(0))
  config = tiny_config()
  config.model.dtype = 'float16'
  with pytest.raises(ValueError, match='model.dtype'):
    models.get_model(config)
  config = tiny_config()
  model = models.get_model(config)
  with pytest.raises(ValueError, match=r'image must be \(batch, H, W, 3\)'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(
        (1, 32, 32, 1)), jnp.zeros((1, 32, 32, 1)), train=False))
  with pytest.raises(ValueError, match='too small'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(
        (1, 16, 16, 3)), jnp.zeros((1, 32, 32, 1)), train=False))


# --- Trunks vs Keras Applications ---------------------------------------------


def flax_layer_sequence(module, input_shape, with_stats=False):
  """(name, kind, kernel shape, output shape) of each layer, in call order."""
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and context.module is not module:
      if isinstance(context.module, (nn.Conv, nn.BatchNorm, nn.Dropout,
                                     common.MaxPool)):
        calls.append((context.module.name, type(context.module).__name__,
                      tuple(out.shape)))
    return out

  def init(key):
    with nn.intercept_methods(record):
      return module.init(key, jnp.zeros(input_shape))

  variables = jax.eval_shape(init, jax.random.key(0))
  if with_stats:
    return calls, variables['params'], variables.get('batch_stats', {})
  return calls, variables['params']


@pytest.mark.slow
@pytest.mark.parametrize('name', ['vgg16', 'vgg19'])
def test_vgg_trunk_matches_keras_applications(name):
  keras = pytest.importorskip('keras')
  ref = train_helpers.keras_architecture(
      {'vgg16': 'VGG16', 'vgg19': 'VGG19'}[name], (32, 32, 3))
  ref_layers = [l for l in ref.layers
                if not isinstance(l, keras.layers.InputLayer)]
  ours, params = flax_layer_sequence(
      models.get_backbone(name, 1.0, jnp.float32), (1, 32, 32, 3))
  assert [n for n, _, _ in ours] == [l.name for l in ref_layers]
  for (lname, kind, out_shape), layer in zip(ours, ref_layers):
    assert tuple(layer.output.shape[1:]) == out_shape[1:], lname
    if isinstance(layer, keras.layers.Conv2D):
      assert kind == 'Conv'
      assert layer.activation.__name__ == 'relu'
      assert layer.padding == 'same' and tuple(layer.strides) == (1, 1)
      assert params[lname]['kernel'].shape == tuple(layer.kernel.shape)
      assert params[lname]['bias'].shape == tuple(layer.bias.shape)
    else:
      assert isinstance(layer, keras.layers.MaxPooling2D), lname
      assert kind == 'MaxPool'
      assert tuple(layer.pool_size) == (2, 2)
      assert tuple(layer.strides) == (2, 2) and layer.padding == 'valid'
      assert lname not in params
  assert models.count_params(params) == ref.count_params()


def test_width_multiplier_scales_channels():
  _, params = flax_layer_sequence(models.get_backbone('vgg16', 0.25),
                                  (1, 32, 32, 3))
  assert params['block1_conv1']['kernel'].shape == (3, 3, 3, 16)
  assert params['block5_conv3']['kernel'].shape == (3, 3, 128, 128)
  _, params = flax_layer_sequence(models.get_backbone('vgg16', 1 / 1000),
                                  (1, 32, 32, 3))
  assert params['block1_conv1']['kernel'].shape == (3, 3, 3, 1)


# name -> Keras Applications builder. ResNet-101 is ResNet-50 with more
# conv4 blocks; building it in Keras costs more than it adds here.
KERAS_TWINS = {
    'efficientnet_b0': 'EfficientNetB0', 'resnet50': 'ResNet50',
    'mobilenet_v2': 'MobileNetV2',
    'densenet121': 'DenseNet121',
}


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(KERAS_TWINS))
def test_backbone_matches_keras_applications(name):
  keras = pytest.importorskip('keras')
  ref = train_helpers.keras_architecture(KERAS_TWINS[name], (32, 32, 3))
  # Every layer with weights, every pool and dropout must match in name,
  # order, kind and output shape (Keras' input Rescaling/Normalization in
  # EfficientNet are not part of our trunks: see efficientnet.py).
  kinds = {keras.layers.Conv2D: 'Conv', keras.layers.DepthwiseConv2D: 'Conv',
           keras.layers.BatchNormalization: 'BatchNorm',
           keras.layers.Dropout: 'Dropout',
           keras.layers.MaxPooling2D: 'MaxPool',
           keras.layers.AveragePooling2D: 'AvgPool'}
  ref_layers = [l for l in ref.layers if type(l) in kinds]
  ours, params, stats = flax_layer_sequence(
      models.get_backbone(name), (1, 32, 32, 3), with_stats=True)
  names, ref_names = [n for n, _, _ in ours], [l.name for l in ref_layers]
  assert sorted(names) == sorted(ref_names)
  # Keras lists a functional model's layers by depth from the output, so a
  # residual shortcut (ResNet's `_0_` layers) lands after the longer branch;
  # apart from those the order is the same.
  on_chain = lambda n: re.search(r'_0_(conv|bn)$', n) is None
  assert ([n for n in names if on_chain(n)]
          == [n for n in ref_names if on_chain(n)])
  by_name = {l.name: l for l in ref_layers}
  for lname, kind, out_shape in ours:
    layer = by_name[lname]
    assert kind == kinds[type(layer)], lname
    assert tuple(layer.output.shape[1:]) == out_shape[1:], lname
    if isinstance(layer, keras.layers.DepthwiseConv2D):
      k = tuple(layer.kernel.shape)  # (k, k, C, 1) -> Flax (k, k, 1, C).
      assert params[lname]['kernel'].shape == k[:2] + k[3:] + k[2:3], lname
    elif isinstance(layer, keras.layers.Conv2D):
      assert params[lname]['kernel'].shape == tuple(layer.kernel.shape), lname
      assert ('bias' in params[lname]) == layer.use_bias, lname
    elif isinstance(layer, keras.layers.BatchNormalization):
      assert params[lname]['scale'].shape == tuple(layer.gamma.shape), lname
    elif isinstance(layer, keras.layers.Dropout):
      assert tuple(layer.noise_shape[1:]) == (1, 1, 1)
  trainable = sum(int(np.prod(w.shape)) for w in ref.trainable_weights)
  assert models.count_params(params) == trainable
  bn_stats = sum(int(np.prod(w.shape)) for l in ref_layers
                 if isinstance(l, keras.layers.BatchNormalization)
                 for w in l.non_trainable_weights)
  assert models.count_params(stats) == bn_stats


def test_resnet34_basic_blocks():
  ours, params = flax_layer_sequence(models.get_backbone('resnet34'),
                                     (1, 32, 32, 3))
  # torchvision's ResNet-34 without its fc has 21,284,672 parameters (biasless
  # convs); ours adds Keras ResNet's conv biases: stem 64, conv2 3*2*64,
  # conv3 4*2*128 + 128 (projection), conv4 6*2*256 + 256, conv5 3*2*512 + 512.
  biases = 64 + 3 * 2 * 64 + 4 * 2 * 128 + 128 + 6 * 2 * 256 + 256 + (
      3 * 2 * 512 + 512)
  assert models.count_params(params) == 21_284_672 + biases
  assert ours[-1][2] == (1, 1, 1, 512)
  # Projection shortcuts only where the shape changes.
  assert 'conv2_block1_0_conv' not in params
  assert params['conv3_block1_0_conv']['kernel'].shape == (1, 1, 64, 128)
  assert 'conv3_block2_0_conv' not in params


@pytest.mark.slow
def test_inception_v3_matches_keras_applications():
  keras = pytest.importorskip('keras')
  ref = train_helpers.keras_architecture('InceptionV3', (75, 75, 3))
  ours, params, stats = flax_layer_sequence(
      models.get_backbone('inception_v3'), (1, 75, 75, 3), with_stats=True)

  def creation_order(layers, kind):
    # Keras auto-names unnamed layers kind, kind_1, ... in creation order
    # (offset if this process built other models first).
    def index(layer):
      tail = layer.name.rsplit('_', 1)[-1]
      return int(tail) if tail.isdigit() else 0
    return sorted((l for l in layers if isinstance(l, kind)), key=index)

  for kind, ours_kind in ((keras.layers.Conv2D, 'Conv'),
                          (keras.layers.BatchNormalization, 'BatchNorm'),
                          (keras.layers.MaxPooling2D, 'MaxPool'),
                          (keras.layers.AveragePooling2D, 'AvgPool')):
    ref_layers = creation_order(ref.layers, kind)
    mine = [c for c in ours if c[1] == ours_kind]
    assert len(mine) == len(ref_layers), ours_kind
    for (lname, _, out_shape), layer in zip(mine, ref_layers):
      assert tuple(layer.output.shape[1:]) == out_shape[1:], lname
      if ours_kind == 'Conv':
        assert params[lname]['kernel'].shape == tuple(layer.kernel.shape)
        assert 'bias' not in params[lname] and not layer.use_bias
      if ours_kind == 'BatchNorm':
        assert set(params[lname]) == {'bias'} and not layer.scale
  assert [c[0] for c in ours][:3] == ['conv2d', 'batch_normalization',
                                      'conv2d_1']
  trainable = sum(int(np.prod(w.shape)) for w in ref.trainable_weights)
  assert models.count_params(params) == trainable
  assert models.count_params(stats) == sum(
      int(np.prod(w.shape)) for w in ref.non_trainable_weights)
  with pytest.raises(ValueError, match='at least 75x75'):
    flax_layer_sequence(models.get_backbone('inception_v3'), (1, 64, 64, 3))


# Output channels of each trunk at width 1 (Keras Applications' / He et al.).
TRUNK_CHANNELS = {'vgg16': 512, 'vgg19': 512, 'efficientnet_b0': 1280,
                  'resnet34': 512, 'resnet50': 2048, 'resnet101': 2048,
                  'mobilenet_v2': 1280, 'densenet121': 1024,
                  'inception_v3': 2048}


def test_every_backbone_is_tested():
  assert set(models.known_backbones()) == set(TRUNK_CHANNELS)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(TRUNK_CHANNELS))
def test_backbone_builds_at_tiny_width(name):
  net = models.get_backbone(name, 1 / 16, jnp.bfloat16)
  size = 75 if name == 'inception_v3' else 32  # Keras' minimum sizes.
  x = jnp.zeros((2, size, size, 3))
  # The output of the call that creates the variables: one trace, not two
  # (init, then apply).
  y, variables = jax.eval_shape(lambda k: net.init_with_output(k, x),
                                jax.random.key(0))
  # Five stride-2 stages take 32 (75) -> 1; channels scale with the width.
  assert y.shape == (2, 1, 1, TRUNK_CHANNELS[name] // 16)
  assert y.dtype == jnp.bfloat16
  assert {l.dtype for l in jax.tree_util.tree_leaves(variables)} == {
      jnp.dtype(jnp.float32)}


@pytest.mark.slow
def test_efficientnet_b0_tiny_train_and_eval():
  net = models.get_backbone('efficientnet_b0', 1 / 8, jnp.float32)
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3), np.float32)
  variables = train_helpers.quick_variables(lambda k: net.init(k, x[:1]))

  @jax.jit
  def train_apply(v, key):
    return net.apply(v, x, train=True, rngs={'dropout': key},
                     mutable=['batch_stats'])

  y1, updates = train_apply(variables, jax.random.key(2))
  y2, _ = train_apply(variables, jax.random.key(3))
  assert y1.shape == (2, 1, 1, 160)  # 1280 / 8 channels after five stride-2s.
  assert not np.array_equal(y1, y2)  # Stochastic depth is on in training.
  y_eval = jax.jit(lambda v: net.apply(v, x, train=False))(variables)
  assert y_eval.shape == y1.shape and np.all(np.isfinite(y_eval))
  assert not np.array_equal(
      updates['batch_stats']['top_bn']['mean'],
      variables['batch_stats']['top_bn']['mean'])


@pytest.mark.slow
def test_baseline_configs_use_efficientnet():
  for variant, crossing in (('baseline1', 'both'), ('baseline2', 'before'),
                            ('baseline3', 'after')):
    config = config_lib.get_config(variant)
    assert config.model.crossing == crossing
    assert config.model.speech_backbone == 'efficientnet_b0'
    assert config.model.image_backbone == 'efficientnet_b0'
  counts = models.count_by_branch(summary.variable_shapes(config)['params'])
  # B0 trunk (4,007,548), BatchNorm(1280), Dense(4*4*1280 -> 512).
  assert counts['N2_s'] == counts['N2_i'] == (
      4_007_548 + 2 * 1280 + 4 * 4 * 1280 * 512 + 512)


# --- jit, vmap, training mode, dtypes -----------------------------------------


@pytest.mark.slow
def test_vmap_of_single_example_equals_batched_apply(proposed):
  p = proposed
  model, variables = p['model'], p['variables']

  def single(image, spectrogram):
    logits, _ = model.apply(variables, image[None], spectrogram[None],
                            train=False)
    return logits[0]

  vmapped = jax.jit(jax.vmap(single))(p['image'], p['spectrogram'])
  np.testing.assert_allclose(vmapped, p['logits'], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_train_mode_updates_batch_stats(proposed):
  p = proposed
  (logits, _), updates = jax.jit(
      lambda v, i, s: p['model'].apply(
          v, i, s, train=True, mutable=['batch_stats', 'intermediates'],
          capture_intermediates=lambda m, _: m.name == 'backbone'))(
              p['variables'], p['image'], p['spectrogram'])
  old = p['variables']['batch_stats']
  new = updates['batch_stats']
  assert jax.tree_util.tree_structure(old) == jax.tree_util.tree_structure(new)
  # Keras momentum 0.99: from its initial zeros, N2_i's running mean moves 1%
  # of the way to the batch mean of the trunk's output.
  trunk_out = updates['intermediates']['N2_i']['backbone']['__call__'][0]
  np.testing.assert_array_equal(old['N2_i']['bn']['mean'], 0.0)
  np.testing.assert_allclose(new['N2_i']['bn']['mean'],
                             0.01 * trunk_out.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-7)
  assert float(jnp.abs(new['N2_i']['bn']['mean']).max()) > 0
  # Train mode normalises with batch statistics: a different output.
  assert not np.allclose(logits, p['logits'])


def test_bfloat16_compute_keeps_float32_params():
  config = tiny_config()
  config.model.dtype = 'bfloat16'
  model = models.get_model(config)
  shapes = jax.eval_shape(
      lambda k: models.init_variables(model, config, k), jax.random.key(0))
  dtypes = {x.dtype for x in jax.tree_util.tree_leaves(shapes)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  image, spectrogram = models.dummy_inputs(config, batch=2)
  logits, inter = jax.eval_shape(
      lambda v: model.apply(v, image, spectrogram, train=False), shapes)
  for name in ('N1_i', 'N1_s', 'N2_i', 'N2_s', 'F_i', 'F_s', 'F_mul',
               'O_sp', 'O_img', 'O_mul'):
    assert inter[name].dtype == jnp.bfloat16, name
  assert inter['fusion_weights'].dtype == jnp.float32
  assert logits.dtype == jnp.float32


@pytest.mark.slow
def test_frozen_trunks_keep_their_batch_stats_in_a_train_step(tiny_trunk):
  """train.trunk_lr_multiplier=0 is Keras' trainable=False: a training step
  leaves the trunks' BatchNorm statistics (and weights) as they were, while
  N1's and the BatchNorm closing N2 move; unfrozen, the trunks' move too."""
  from parallelnet import losses  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top

  config = tiny_config(f'ser_only,n2={tiny_trunk}')
  config.train.trunk_lr_multiplier = 0.0
  model = models.get_model(config)
  assert model.frozen_trunks
  variables = train_helpers.quick_variables(
      lambda k: models.init_variables(model, config, k))
  image, spectrogram = random_inputs(config, 2, batch=4)
  batch = dict(image=image, spectrogram=spectrogram,
               label=jnp.array([0, 1, 2, 3], jnp.int32))
  @jax.jit
  def step(variables, batch):
    state = train.create_train_state(
        model, variables, jax.random.key_data(jax.random.key(0)),
        learning_rate=1e-2, plateau_factor=0.1, plateau_patience=2,
        trunk_lr_multiplier=0.0)
    return train.train_step(state, batch, jax.random.key(3),
                            loss_kwargs=losses.loss_weights(config.train))[0]

  new = step(variables, batch)
  old_stats, new_stats = variables['batch_stats'], new.batch_stats
  trunk = old_stats['N2_s']['backbone']
  assert jax.tree.leaves(trunk)
  jax.tree.map(np.testing.assert_array_equal, new_stats['N2_s']['backbone'],
               trunk)
  jax.tree.map(np.testing.assert_array_equal, new.params['N2_s']['backbone'],
               variables['params']['N2_s']['backbone'])
  for branch, sub in (('N1_s', 'bn'), ('N2_s', 'bn')):
    assert not np.allclose(new_stats[branch][sub]['mean'],
                           old_stats[branch][sub]['mean'])
  # The same model unfrozen updates the trunk's statistics in train mode.
  unfrozen = model.clone(frozen_trunks=False)
  _, updates = jax.jit(functools.partial(
      unfrozen.apply, train=True, mutable=['batch_stats']))(
          variables, image, spectrogram)
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: not np.allclose(a, b),
      updates['batch_stats']['N2_s']['backbone'], trunk))
  assert all(moved)
