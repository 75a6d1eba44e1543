"""ParallelNet as the paper trains it (PAPER.md, "Inputs" to "Training"), and its ablation rows.

Usage:
  python main.py --config=configs/parallelnet.py            # the proposed model
  python main.py --config=configs/parallelnet.py:ser_only   # an ablation row
  python main.py --config=configs/parallelnet.py:runlocal   # tiny, for a laptop
  python main.py --config=configs/parallelnet.py:ier_only,runlocal

`arg` is a comma-separated list of variant names, applied left to right:
  ser_only    speech branches and speech head only (Table 2, "SER Only").
  ier_only    image branches and image head only (Table 2, "IER Only").
  baseline1   criss-cross before and after N2, EfficientNet-B0 as N2.
  baseline2   criss-cross before N2, EfficientNet-B0 as N2.
  baseline3   criss-cross after N2, EfficientNet-B0 as N2.
  sentiment   B-T4SA with three sentiment classes (Table 3).
  proposed    no change (the proposed model; a row name of --mode=study).
  n2=<name>   the §4.3.2 N2 sweep: backbone <name> in both N2 trunks.
  runlocal    tiny widths and inputs so that a 2-core CPU runs it in seconds.
"""

import ml_collections

from parallelnet.core.classes import EMOTIONS
from parallelnet.core.classes import SENTIMENTS

VARIANTS = ('proposed', 'ser_only', 'ier_only', 'baseline1', 'baseline2',
            'baseline3', 'sentiment', 'n2=<backbone>', 'runlocal')
# Table 2's rows, in the paper's order: --mode=study's default.
TABLE2_ROWS = ('ser_only', 'ier_only', 'baseline1', 'baseline2', 'baseline3',
               'proposed')


def get_config(arg=None):
  """Returns the paper's configuration, modified by the variants in `arg`."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init, shuffling, dropout and the DnCShap coin.

  # --- Data (PAPER.md, "Inputs" and "Building the dataset") ---------------------------------------------------
  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'iitr_sier'  # TFDS builder: iitr_sier | b_t4sa | synthetic_sier.
  c.dataset.classes = EMOTIONS  # Label names; their order is the class index.
  c.dataset.manual_dir = ''  # Folder holding manifest.csv (iitr_sier, b_t4sa).
  c.dataset.data_dir = '~/tensorflow_datasets'  # Where built datasets are written.
  c.dataset.skip_bad = False  # False: any bad file fails the build; True: skip and report.
  c.dataset.test_fraction = 0.3  # Paper's 70/30 split when the manifest has no split column.
  c.dataset.val_fraction = 0.1  # Share of train held out for early stopping; 0 = use test.
  c.dataset.num_folds = 5  # k of k-fold cross-validation (--mode=cv).
  c.dataset.fold = -1  # Which CV fold is the test set; -1 = the 70/30 split.
  c.dataset.synthetic_size = 2000  # Examples in the synthetic_sier demo corpus.
  c.dataset.synthetic_seed = 0  # Seed that generates the synthetic_sier corpus.
  # What carries synthetic_sier's image bit: colour (a warm or a cold disc) |
  # side (a warm disc in the left or the right half; input_pipeline/synthetic.py).
  c.dataset.image_cue = 'colour'
  c.dataset.shuffle_buffer = 2048  # tf.data shuffle buffer (examples).

  # --- Input representation (PAPER.md, "Inputs") ---------------------------------------
  c.input = ml_collections.ConfigDict()
  c.input.image_size = 128  # Images are resized to image_size x image_size x 3.
  # auto | caffe | tf | torch | unit (input_pipeline/image.py). 'auto': what
  # model.image_weights expect (caffe for Keras VGG), else 'caffe'; an explicit
  # mode contradicting the loaded weights is an error naming the right one.
  c.input.image_scaling = 'auto'
  c.input.sample_rate = 16000  # Audio is resampled to this rate (Hz).
  c.input.n_fft = 1024  # STFT window (samples).
  c.input.hop_length = 512  # STFT hop (samples).
  c.input.n_mels = 128  # Mel bins: the spectrogram's frequency axis.
  c.input.num_frames = 128  # Frames: the spectrogram's time axis.
  # Clip length in seconds; audio is padded or cropped to it so that it yields
  # exactly num_frames frames: (num_frames - 1) * hop_length / sample_rate.
  c.input.duration_s = 127 * 512 / 16000
  # Spectrogram layout is (time, frequency, 1) everywhere: pipeline, model,
  # attribution and plots. Values are log-mel dB (ref=max, top_db=80) mapped to
  # [0, 1] by (dB + 80) / 80, so 0 is silence and a zero baseline means silence.

  # --- Model (PAPER.md, "The two branches" to "Crossing positions") ----------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = 'parallelnet'  # Model registry key (parallelnet/models).
  c.model.modalities = 'both'  # both | speech (SER only) | image (IER only).
  c.model.crossing = 'after'  # Criss-cross position: after | before | both N2.
  c.model.speech_backbone = 'vgg16'  # N2_s trunk, by registry name.
  c.model.image_backbone = 'vgg19'  # N2_i trunk, by registry name.
  c.model.width = 1.0  # Multiplies every conv channel count (N1 and trunks).
  c.model.feature_dim = 512  # Dense width closing N1 and N2 (the fused features).
  c.model.head_dim = 1024  # Hidden width of the three late-fusion heads.
  c.model.bn_momentum = 0.99  # BatchNorm momentum closing N1/N2 (Keras default 0.99).
  c.model.dtype = 'float32'  # Compute dtype (bfloat16 on accelerators); params stay float32.
  # N2 trunk weights (README, 'Pretrained weights'): a Keras Applications .h5,
  # a Keras 3 .weights.h5, our .npz, or a torchvision .pth (VGG); '' = random.
  c.model.speech_weights = ''  # File for N2_s's trunk (speech_backbone); '' = random init.
  c.model.image_weights = ''  # File for N2_i's trunk (image_backbone); '' = random init.
  c.model.pretrained = ''  # Older form: one .npz for both trunks; excludes *_weights.

  # --- Training (PAPER.md, "Training") ---------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # Global batch, whatever the device count.
  c.train.eval_batch_size = 64  # Global eval batch (padded at the end).
  c.train.learning_rate = 8e-6  # Adam.
  c.train.num_epochs = 30  # Upper bound; early stopping usually ends sooner.
  c.train.ce_weight = 1.0  # Weight of categorical cross-entropy in the loss.
  c.train.focal_weight = 0.5  # Weight of categorical focal loss in the loss.
  c.train.focal_gamma = 2.0  # Focal loss gamma.
  c.train.focal_alpha = 0.25  # Focal loss alpha.
  c.train.early_stopping_patience = 5  # Epochs without val-loss gain before stopping.
  c.train.plateau_patience = 2  # Epochs without val-loss gain before LR is cut.
  c.train.plateau_factor = 0.1  # LR multiplier on plateau (Keras default).
  c.train.log_every_steps = 50  # Training-metric logging period (steps).
  c.train.checkpoint_every_steps = 0  # Mid-epoch checkpoint period; 0 = epoch ends only.
  c.train.max_steps_per_epoch = -1  # Cap for quick runs; -1 = the whole split.
  # Learning-rate factor of the N2 trunks (fine-tuning): 1 = same as the rest,
  # 0 = frozen (their parameters never change).
  c.train.trunk_lr_multiplier = 1.0

  # --- Explanation (PAPER.md, "DnCShap") --------------------------------------------
  c.explain = ml_collections.ConfigDict()
  c.explain.depth = 4  # Halvings per modality: 2**depth leaf regions each.
  c.explain.mode = 'dnc'  # dnc (2**(depth+2) evaluations) | exact (Owen values).
  c.explain.context = 'present'  # dnc context policy: absent | present | random (README).
  # What absent players take: zeros (Algorithm 1) | mean (training split's
  # mean input, cached in <workdir>/explain/baseline_mean.npz) | blur (the
  # input blurred) | background (explanations averaged over background_size
  # training inputs, that many times the evaluations) | a path to an .npz
  # with arrays image (H, W, 3) and spectrogram (T, F, 1). README,
  # 'Explanations', says why mean is the default.
  c.explain.baseline = 'mean'  # zeros | mean | blur | background | path.npz.
  c.explain.blur_sigma = 4.0  # baseline=blur: Gaussian sigma in pixels / (frames, mel bins).
  c.explain.background_size = 8  # baseline=background: training inputs averaged over.
  c.explain.num_examples = 8  # Test examples explained by --mode=explain.
  c.explain.batch_size = 4  # Examples per dncshap_batch call.
  c.explain.max_batch = 256  # Masked inputs per forward pass (bounds memory).
  c.explain.keep_percentile = 30.0  # Speech frames under this percentile are dropped.
  c.explain.after_train = False  # Explain test examples at the end of --mode=train.

  # --- Explanation tests (--mode=explain_eval; explain/evaluate_run.py) -----
  c.explain_eval = ml_collections.ConfigDict()
  c.explain_eval.num_examples = 64  # First test examples evaluated (0 = all).
  # Methods besides DnCShap (config.explain's setting): occlusion, ig,
  # gradxinput, random, shap-partition, shap-kernel (explain/peers.py).
  c.explain_eval.peers = 'occlusion,ig,gradxinput,random'
  # Per-method example limits for slow methods, e.g. 'shap-kernel=16'.
  c.explain_eval.peer_examples = 'shap-partition=16,shap-kernel=16'
  # Methods re-explained under every randomised model (sanity checks).
  c.explain_eval.sanity_methods = 'dncshap,occlusion,ig,gradxinput'
  c.explain_eval.sanity_examples = 32  # Of the first examples (0 = all).
  # What a removed leaf takes in deletion / insertion and faithfulness
  # correlation, for every method: zeros | mean | blur (ROAD imputes instead).
  c.explain_eval.fill = 'zeros'
  c.explain_eval.road_noise = 0.01  # ROAD imputation noise (times the input's std).
  c.explain_eval.num_subsets = 32  # Random leaf subsets per faithfulness correlation.

  # --- Study (--mode=study: Table 2/3 and the N2 sweep, §4.3) ---------------
  c.study = ml_collections.ConfigDict()
  # Comma-separated rows, each a variant of this file (proposed, ser_only,
  # ier_only, baseline1-3, sentiment, n2=<backbone>); one <workdir>/<row>/ each.
  c.study.rows = ','.join(TABLE2_ROWS)
  c.study.cv = False  # True: each row is k-fold cross-validated (mean ± std).
  # Folder of the b_t4sa manifest for the `sentiment` row (its manual_dir);
  # '' = dataset.manual_dir.
  c.study.sentiment_dir = ''

  # --- Prediction (--mode=predict) -----------------------------------------
  c.predict = ml_collections.ConfigDict()
  c.predict.manual_dir = ''  # A manifest folder to score (label optional); '' = the dataset's test split.

  for variant in (arg.split(',') if arg else ()):
    apply_variant(c, variant.strip())
  return c


def apply_variant(c, variant):
  """Modifies config `c` in place for one named variant."""
  if variant == 'proposed':
    pass
  elif variant.startswith('n2='):
    backbone = variant[len('n2='):].strip()
    if not backbone:
      raise ValueError(f'Config variant {variant!r} names no backbone; write '
                       'e.g. n2=vgg16.')
    c.model.speech_backbone = backbone
    c.model.image_backbone = backbone
  elif variant == 'ser_only':
    c.model.modalities = 'speech'
  elif variant == 'ier_only':
    c.model.modalities = 'image'
  elif variant in ('baseline1', 'baseline2', 'baseline3'):
    c.model.crossing = {'baseline1': 'both', 'baseline2': 'before',
                        'baseline3': 'after'}[variant]
    c.model.speech_backbone = 'efficientnet_b0'
    c.model.image_backbone = 'efficientnet_b0'
  elif variant == 'sentiment':
    c.dataset.name = 'b_t4sa'
    c.dataset.classes = SENTIMENTS
  elif variant == 'runlocal':
    c.input.image_size = 32
    c.input.n_mels = 32
    c.input.num_frames = 32
    c.input.n_fft = 512
    c.input.hop_length = 256
    c.input.sample_rate = 8000
    c.input.duration_s = 31 * 256 / 8000
    c.model.width = 1 / 16
    c.model.feature_dim = 16
    c.model.head_dim = 32
    c.train.batch_size = 8
    c.train.eval_batch_size = 8
    c.train.num_epochs = 1
    c.train.max_steps_per_epoch = 2
    c.dataset.synthetic_size = 64
    c.explain.depth = 2
    c.explain.num_examples = 2
    c.explain_eval.num_examples = 4
    c.explain_eval.sanity_examples = 4
    c.explain_eval.num_subsets = 8
  else:
    raise ValueError(
        f'Unknown config variant {variant!r}; known: {", ".join(VARIANTS)}.')
