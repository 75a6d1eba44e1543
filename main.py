"""ParallelNet-JAX entry point.

  python main.py --config=configs/parallelnet.py --workdir=/tmp/pn --mode=summary
  python main.py --config=configs/demo.py --workdir=/tmp/demo
  python main.py --config=configs/parallelnet.py --workdir=/tmp/pn \
      --config.dataset.manual_dir=/data/iitr_sier --config.train.batch_size=128

Each mode calls one library function, so tests and notebooks can call the same.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file (a get_config() module).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics and explanations.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'cv', 'explain', 'summary'],
    'train: train, evaluate on the test split (and explain if '
    'config.explain.after_train); eval: evaluate the best checkpoint; cv: '
    'k-fold cross-validation; explain: DnCShap for test examples or for '
    '--image/--audio; summary: parameter counts per branch.')
_IMAGE = flags.DEFINE_string('image', None, 'Explain this image (with --audio).')
_AUDIO = flags.DEFINE_string('audio', None, 'Explain this audio (with --image).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'host:port of process 0 for multi-process runs (else from the environment).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process\'s index in a multi-process run.')

flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # TF serves only the input pipeline: keep it off the accelerators JAX uses.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')

  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if mode == 'summary':
    from parallelnet import summary  # pylint: disable=g-import-not-at-top
    print(summary.summarize(config))
    return

  from parallelnet import mesh  # pylint: disable=g-import-not-at-top
  from parallelnet import train  # pylint: disable=g-import-not-at-top
  mesh.maybe_initialize_distributed(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)

  if mode == 'train':
    metrics = train.train_and_evaluate(config, workdir)
    logging.info('Test metrics: %s', metrics)
    print(f"test_accuracy={metrics['accuracy']:.4f}")
    if config.explain.after_train:
      from explain import run as explain_run  # pylint: disable=g-import-not-at-top
      explain_run.explain_dataset(config, workdir)
  elif mode == 'eval':
    metrics = train.evaluate(config, workdir)
    print(f"test_accuracy={metrics['accuracy']:.4f}")
  elif mode == 'cv':
    train.cross_validate(config, workdir)
  elif mode == 'explain':
    from explain import run as explain_run  # pylint: disable=g-import-not-at-top
    if bool(_IMAGE.value) != bool(_AUDIO.value):
      raise app.UsageError('--image and --audio go together.')
    if _IMAGE.value:
      explain_run.explain_files(config, workdir, _IMAGE.value, _AUDIO.value)
    else:
      explain_run.explain_dataset(config, workdir)


if __name__ == '__main__':
  app.run(main)
