"""ParallelNet in Keras 3 (TensorFlow backend): the framework baseline.

The paper's authors trained ParallelNet in Keras, so the training benchmark
compares our Flax step against this model: the same architecture as PAPER.md, "The two branches"
(criss-cross after N2, late fusion with learned softmax weights), the same
loss (1.0 * categorical cross-entropy + 0.5 * categorical focal loss) and the
same optimizer (Adam). At width 1.0 the trunks are `keras.applications.VGG16`
and `VGG19` (weights=None, include_top=False) exactly as the authors would
write it; at other widths an equivalent trunk with scaled channel counts (same
layer names) is built, since Keras Applications has no width multiplier.

Usage (prints the per-branch parameter count):
  python -m bench.keras_parallelnet --image_size=128 --width=1.0
"""

import os

os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # pylint: disable=g-import-not-at-top
from keras import layers  # pylint: disable=g-import-not-at-top

if keras.backend.backend() != 'tensorflow':
  raise RuntimeError('bench/keras_parallelnet.py is the TensorFlow-backend '
                     f'baseline; KERAS_BACKEND is {keras.backend.backend()!r}.')

# (filters, convs) per block, as in Keras Applications.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
VGG19_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
# N1 (PAPER.md, "The two branches"): conv pairs of 64, 128, 256 filters, each pair then a max pool.
N1_BLOCKS = ((64, 2), (128, 2), (256, 2))


def scaled(channels, width):
  """A channel count times the width multiplier, at least 1 (as ours)."""
  return max(1, int(round(channels * width)))


def _conv_blocks(x, blocks, width, prefix):
  for b, (filters, convs) in enumerate(blocks, start=1):
    for i in range(1, convs + 1):
      x = layers.Conv2D(scaled(filters, width), 3, padding='same',
                        activation='relu',
                        name=f'{prefix}block{b}_conv{i}')(x)
    x = layers.MaxPooling2D(2, strides=2, name=f'{prefix}block{b}_pool')(x)
  return x


def vgg_trunk(name, input_shape, width, prefix):
  """The VGG trunk M of an N2 branch, as a Keras model."""
  if width == 1.0:
    app = {'vgg16': keras.applications.VGG16,
           'vgg19': keras.applications.VGG19}[name]
    trunk = app(weights=None, include_top=False, input_shape=input_shape)
    trunk.name = prefix + name
    return trunk
  blocks = {'vgg16': VGG16_BLOCKS, 'vgg19': VGG19_BLOCKS}[name]
  inp = keras.Input(input_shape)
  return keras.Model(inp, _conv_blocks(inp, blocks, width, ''),
                     name=prefix + name)


class LateFusion(layers.Layer):
  """O = sum_k softmax(theta)_k * O_k over (O_sp, O_img, O_mul) (PAPER.md, "The two branches")."""

  def build(self, input_shape):
    self.theta = self.add_weight(
        shape=(len(input_shape),), name='theta',
        initializer=keras.initializers.RandomNormal(stddev=1.0))

  def call(self, outputs):
    w = keras.ops.softmax(self.theta)
    return sum(w[k] * o for k, o in enumerate(outputs))


def _head(x, head_dim, num_classes, name):
  x = layers.Dense(head_dim, activation='relu', name=f'{name}_dense1')(x)
  x = layers.Dense(head_dim, activation='relu', name=f'{name}_dense2')(x)
  return layers.Dense(num_classes, name=f'{name}_logits')(x)


def _close(x, feature_dim, name):
  """BatchNorm, Flatten, Dense(feature_dim): how N1 and N2 end (PAPER.md, "The two branches")."""
  x = layers.BatchNormalization(name=f'{name}_bn')(x)
  x = layers.Flatten(name=f'{name}_flatten')(x)
  return layers.Dense(feature_dim, name=f'{name}_dense')(x)


def build_parallelnet(image_size=128, spec_shape=(128, 128), width=1.0,
                      feature_dim=512, head_dim=1024, num_classes=4):
  """ParallelNet 'Configuration 3' (criss-cross after N2) as a Keras model.

  Inputs are `image` (H, W, 3) and `spectrogram` (T, F, 1); the output is the
  fused logits O (softmax is in the loss, as in ours).
  """
  image = keras.Input((image_size, image_size, 3), name='image')
  spec = keras.Input((*spec_shape, 1), name='spectrogram')
  n1_i = _close(_conv_blocks(image, N1_BLOCKS, width, 'n1_i_'), feature_dim,
                'n1_i')
  n1_s = _close(_conv_blocks(spec, N1_BLOCKS, width, 'n1_s_'), feature_dim,
                'n1_s')
  adapted = layers.Conv2D(3, 1, name='speech_adapter')(spec)
  n2_s = vgg_trunk('vgg16', (*spec_shape, 3), width, 'n2_s_')(adapted)
  n2_s = _close(n2_s, feature_dim, 'n2_s')
  n2_i = vgg_trunk('vgg19', (image_size, image_size, 3), width, 'n2_i_')(image)
  n2_i = _close(n2_i, feature_dim, 'n2_i')
  f_i = layers.Add(name='F_i')([n1_i, n2_s])  # Eq. 1 as PAPER.md reads it.
  f_s = layers.Add(name='F_s')([n1_s, n2_i])
  f_mul = layers.Multiply(name='F_mul')([f_i, f_s])
  o_sp = _head(f_s, head_dim, num_classes, 'head_sp')
  o_img = _head(f_i, head_dim, num_classes, 'head_img')
  o_mul = _head(f_mul, head_dim, num_classes, 'head_mul')
  logits = LateFusion(name='fusion')([o_sp, o_img, o_mul])
  return keras.Model({'image': image, 'spectrogram': spec}, logits,
                     name='parallelnet_keras')


def make_loss(ce_weight=1.0, focal_weight=0.5, gamma=2.0, alpha=0.25):
  """ce_weight * CE + focal_weight * focal, on logits and one-hot labels."""
  ce = keras.losses.CategoricalCrossentropy(from_logits=True)
  focal = keras.losses.CategoricalFocalCrossentropy(
      alpha=alpha, gamma=gamma, from_logits=True)

  def loss(y_true, logits):
    return ce_weight * ce(y_true, logits) + focal_weight * focal(y_true,
                                                                 logits)

  return loss


def from_config(config, jit_compile=False):
  """The compiled Keras model matching an ml-collections ParallelNet config."""
  model = build_parallelnet(
      image_size=config.input.image_size,
      spec_shape=(config.input.num_frames, config.input.n_mels),
      width=config.model.width, feature_dim=config.model.feature_dim,
      head_dim=config.model.head_dim,
      num_classes=len(config.dataset.classes))
  model.compile(
      optimizer=keras.optimizers.Adam(config.train.learning_rate),
      loss=make_loss(config.train.ce_weight, config.train.focal_weight,
                     config.train.focal_gamma, config.train.focal_alpha),
      jit_compile=jit_compile)
  return model


def trainable_count(model_or_layer):
  return sum(int(w.numpy().size) for w in model_or_layer.trainable_weights)


def branch_counts(model):
  """Trainable parameters per branch, keyed like our model's branches."""
  groups = {}
  for layer in model.layers:
    n = trainable_count(layer)
    if not n:
      continue
    key = layer.name
    for prefix in ('n1_i', 'n1_s', 'n2_s', 'n2_i', 'head_sp', 'head_img',
                   'head_mul'):
      if key.startswith(prefix):
        key = prefix
    if key == 'speech_adapter':
      key = 'n2_s'
    groups[key] = groups.get(key, 0) + n
  return groups


def main():
  import argparse  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--image_size', type=int, default=128)
  p.add_argument('--width', type=float, default=1.0)
  p.add_argument('--feature_dim', type=int, default=512)
  p.add_argument('--head_dim', type=int, default=1024)
  p.add_argument('--num_classes', type=int, default=4)
  a = p.parse_args()
  model = build_parallelnet(a.image_size, (a.image_size, a.image_size),
                            a.width, a.feature_dim, a.head_dim, a.num_classes)
  for k, v in branch_counts(model).items():
    print(f'{k:10s} {v:>13,d}')
  print(f'{"trainable":10s} {trainable_count(model):>13,d}')
  print(f'{"all":10s} {model.count_params():>13,d}  (incl. BN moving stats)')


if __name__ == '__main__':
  main()
