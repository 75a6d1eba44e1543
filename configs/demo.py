"""The whole system on the synthetic_sier demo corpus, sized for a 2-core CPU.

  python main.py --config=configs/demo.py --workdir=/tmp/demo
  python main.py --config=configs/demo.py:ser_only --workdir=/tmp/demo_ser
  python main.py --config=configs/demo.py:ier_only --workdir=/tmp/demo_ier

Generates and builds the corpus (first run only), trains the fused model,
evaluates it on the test split and explains a few test examples, in a few
minutes. `arg` takes the variants of configs/parallelnet.py (ser_only,
ier_only, baseline1-3), applied after the demo settings.

Differences from the paper's recipe, and why:
  * Small inputs (32x32 images, 32 frames x 32 mel bins at 8 kHz) and narrow
    networks (width 1/8): the corpus's cues (a disc's colour, the pitch
    contour of one span of speech) survive at this resolution, and a 2-core
    CPU trains it in minutes.
  * Random initialisation with 'unit' image scaling: no pretrained weights
    can be downloaded, and 'caffe' scaling only matters for ImageNet VGG
    weights.
  * Learning rate 1e-3 instead of 8e-6: the paper's rate is for fine-tuning
    pretrained trunks; from scratch with 15 epochs of a small corpus, 8e-6
    barely moves the weights.
"""

from configs import parallelnet


def get_config(arg=None):
  """Demo settings, then the variants in `arg` (comma-separated)."""
  c = parallelnet.get_config()
  c.dataset.name = 'synthetic_sier'
  c.dataset.synthetic_size = 1500  # Examples generated (70/30 split, 10% val).
  c.dataset.shuffle_buffer = 2048

  c.input.image_size = 32
  c.input.image_scaling = 'unit'  # No ImageNet weights: plain [0, 1] RGB.
  c.input.sample_rate = 8000
  c.input.n_fft = 512
  c.input.hop_length = 256
  c.input.n_mels = 32
  c.input.num_frames = 32
  c.input.duration_s = 31 * 256 / 8000  # ~1 s: exactly 32 frames.

  c.model.width = 1 / 8  # VGG channels 8 ... 64.
  c.model.feature_dim = 32
  c.model.head_dim = 64
  # Keras' 0.99 lags the weights over a demo's few hundred steps, so the
  # validation loss (early stopping, plateau) swings by tens of points.
  c.model.bn_momentum = 0.9

  c.train.batch_size = 32
  c.train.eval_batch_size = 64
  c.train.learning_rate = 1e-3  # From scratch, not fine-tuning (see above).
  c.train.num_epochs = 15
  c.train.log_every_steps = 10

  c.explain.after_train = True
  c.explain.depth = 3
  # dnc with the present context and the mean baseline (configs/parallelnet.py)
  # finds the planted cues best of the settings measured by
  # bench/explain_quality.py, at 32 evaluations (exact mode: 172); README,
  # 'Explanations'.
  c.explain.mode = 'dnc'
  c.explain.num_examples = 4

  for variant in (arg.split(',') if arg else ()):
    parallelnet.apply_variant(c, variant.strip())
  return c
