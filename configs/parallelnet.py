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
  imagenet    the paper's ImageNet-initialised N2 trunks: requires
              --config.model.speech_weights=FILE --config.model.image_weights=FILE
              (an error names the empty field; README, 'Pretrained weights').
  paper_explain  DnCShap as Algorithm 1: absent players are a black image
              and silence (baseline=zeros), dnc contexts without the other
              players (context=absent); the default is the measured better
              setting (PAPER.md, "Where we choose").
  proposed    no change (the proposed model; a row name of --mode=study).
  n2=<name>   the §4.3.2 N2 sweep: backbone <name> in both N2 trunks.
  runlocal    tiny widths and inputs so that a 2-core CPU runs it in seconds.
  small       a training recipe for tens to hundreds of examples
              (docs/own_data.md): small batches, 40 epochs, patient
              plateau; combine with the other variants (e.g. runlocal,small
              or configs/demo.py:small).

`config_from_json(path)` reads a config that training saved as
`<workdir>/config.json` (main.py accepts --config=<workdir>/config.json).
"""

import json
import os

import ml_collections

from parallelnet.core import errors
from parallelnet.core import paths

from parallelnet.core.classes import EMOTIONS
from parallelnet.core.classes import SENTIMENTS

VARIANTS = ('proposed', 'ser_only', 'ier_only', 'baseline1', 'baseline2',
            'baseline3', 'sentiment', 'imagenet', 'paper_explain',
            'n2=<backbone>', 'runlocal', 'small')
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
  # True: a manifest row with an empty image or audio cell is kept as a pair
  # lacking that modality (stored as a black image / silence); False: it is a
  # bad row. A named but unreadable file is bad either way.
  c.dataset.allow_missing = False
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
  # True: every N2 trunk the model has needs its weights file (variant
  # imagenet); an empty field is an error before anything runs. False: an
  # empty field means random init, with a warning at full width.
  c.model.require_weights = False

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
  # A validation split with fewer examples than this (each one moves its
  # accuracy by more than 1/8) cannot tell a plateau from noise: early
  # stopping then never stops (logged) and all num_epochs run.
  c.train.min_val_examples = 8
  c.train.plateau_patience = 2  # Epochs without val-loss gain before LR is cut.
  c.train.plateau_factor = 0.1  # LR multiplier on plateau (Keras default).
  c.train.log_every_steps = 50  # Training-metric logging period (steps).
  c.train.checkpoint_every_steps = 0  # Mid-epoch checkpoint period; 0 = epoch ends only.
  c.train.max_steps_per_epoch = -1  # Cap for quick runs; -1 = the whole split.
  # Learning-rate factor of the N2 trunks (fine-tuning): 1 = same as the rest,
  # 0 = frozen as Keras' trainable=False: their parameters never change and
  # their BatchNorms run in inference mode (running statistics kept).
  c.train.trunk_lr_multiplier = 1.0
  # Modality dropout (parallelnet/modality.py): the probability that a training
  # example loses one modality to the model's missing input (zeros); 0 = the
  # paper's recipe. _split: the share of those drops that take the image (the
  # rest take the speech). Evaluation and test use complete pairs.
  c.train.modality_dropout = 0.0
  c.train.modality_dropout_split = 0.5

  # --- Explanation (PAPER.md, "DnCShap") --------------------------------------------
  c.explain = ml_collections.ConfigDict()
  c.explain.depth = 4  # Halvings per modality: 2**depth leaf regions each.
  c.explain.mode = 'dnc'  # dnc (2**(depth+2) evaluations) | exact (Owen values).
  # The defaults context='present', baseline='mean' are the measured better
  # setting (README, 'Explanations'); Algorithm 1's is context='absent',
  # baseline='zeros': the variant paper_explain (PAPER.md, "Where we choose").
  c.explain.context = 'present'  # dnc context policy: absent | present | random.
  # What absent players take: zeros (Algorithm 1's blank input: a black image
  # and silence, put through the data's preprocessing) | mean (training
  # split's mean input, cached in <workdir>/explain/baseline_mean.npz) | blur
  # (the input blurred) | background (explanations averaged over
  # background_size training inputs, that many times the evaluations) | a
  # path to an .npz with arrays image (H, W, 3) and spectrogram (T, F, 1),
  # in model-input space.
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
  # A row folder trained with another config (its config.json differs in a
  # field that changes the result) stops the study naming the fields; True:
  # move that folder aside to <row>.stale and retrain the row.
  c.study.retrain_changed = False
  # True: also score each row's best checkpoint with the image missing and
  # with the speech missing (no_image_accuracy, no_speech_accuracy columns).
  c.study.robustness = False

  # --- Robustness (--mode=robustness: missing and degraded inputs) ----------
  c.robustness = ml_collections.ConfigDict()
  # Comma-separated conditions (input_pipeline/degrade.py): full, no_image,
  # no_speech, speech_snr_<dB> (white noise), babble_snr_<dB> (other test
  # clips), image_occlusion_<percent>, image_blur[_<sigma>].
  c.robustness.conditions = ','.join((
      'full', 'no_image', 'no_speech', 'speech_snr_20', 'speech_snr_10',
      'speech_snr_0', 'babble_snr_20', 'babble_snr_10', 'babble_snr_0',
      'image_occlusion_25', 'image_occlusion_50', 'image_blur'))
  c.robustness.seed = 0  # Seeds the noise, babble picks and occlusion places.
  c.robustness.blur_sigma = 2.0  # image_blur's Gaussian sigma (model-input pixels).
  c.robustness.babble_talkers = 4  # Other clips summed into one babble.

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
  elif variant == 'imagenet':
    c.model.require_weights = True
  elif variant == 'paper_explain':
    c.explain.mode = 'dnc'
    c.explain.context = 'absent'
    c.explain.baseline = 'zeros'
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
  elif variant == 'small':
    # Tens to hundreds of examples: a handful of steps per epoch, and a
    # validation split of a few examples whose loss is mostly noise.
    c.train.batch_size = 8
    c.train.eval_batch_size = 8
    c.train.num_epochs = 40
    c.train.max_steps_per_epoch = -1
    c.train.early_stopping_patience = 10
    c.train.plateau_patience = 10
    c.train.log_every_steps = 10
    c.explain.num_examples = 4
  else:
    raise ValueError(
        f'Unknown config variant {variant!r}; known: {", ".join(VARIANTS)}.')


def _merge(base: dict, saved: dict) -> dict:
  out = dict(base)
  for k, v in saved.items():
    out[k] = (_merge(base[k], v) if isinstance(v, dict)
              and isinstance(base.get(k), dict) else v)
  return out


def config_from_json(path: str) -> ml_collections.ConfigDict:
  """The config saved as JSON at `path` (a workdir's config.json).

  Every saved field wins; fields the current code knows but the file lacks
  (added after the run) take get_config()'s defaults. Raises a one-line
  UserError when the file is missing or not a JSON config object.
  """
  if not paths.isfile(path):
    raise errors.UserFileNotFoundError(f'No config file {path}.')
  try:
    saved = json.loads(paths.read_text(path))
  except (OSError, ValueError) as e:
    raise errors.UserValueError(f'{path} is not readable JSON ({e}).') from e
  if not isinstance(saved, dict):
    raise errors.UserValueError(f'{path} does not hold a config object.')
  merged = _merge(get_config().to_dict(), saved)
  # JSON has no tuples: the class list is one again, as get_config makes it.
  merged['dataset']['classes'] = tuple(merged['dataset']['classes'])
  return ml_collections.ConfigDict(merged)
