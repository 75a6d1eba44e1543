"""Builds a dataset ahead of training, without apache_beam.

From a training config (the dataset main.py will read, same settings):

  python -m input_pipeline.build --config=configs/parallelnet.py \
      --config.dataset.manual_dir=/data/iitr_sier \
      --config.dataset.data_dir=~/tensorflow_datasets

`tfds build` style, for the builder configs `paper` and `runlocal` (stored
under those names, so main.py builds its own copy from the config):

  python -m input_pipeline.build synthetic_sier --config=runlocal
  python -m input_pipeline.build iitr_sier --config=paper --manual_dir=DIR

The `tfds` console script of tensorflow-datasets 4.9.10 imports apache_beam
at start-up even for plain builds; the second form runs the same build command
(tensorflow_datasets.scripts.cli.build), with the same flags, after
registering input_pipeline.builders.
"""

import os
import sys

from absl import app
from ml_collections import config_flags

from parallelnet.core import progress
from parallelnet.core.errors import UserError


def _is_config_file(argv):
  return any(a.startswith('--config=') and
             a.split('=', 1)[1].split(':')[0].endswith('.py') for a in argv)


def build_from_config(argv):
  """Builds the dataset a training config reads (absl flags, as main.py) and
  prints where it is; the same quiet log as main.py unless --verbosity."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # TF's C++ lines.
  config_flag = config_flags.DEFINE_config_file(
      'config', None, 'Training configuration file.', lock_config=True)

  def main(_):
    if not any(a.split('=')[0] in ('--verbosity', '-v') for a in argv):
      progress.import_tensorflow_quietly()
      progress.quiet_logs()
    # After the quiet TensorFlow import above: pipeline imports TF.
    from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
    config = config_flag.value
    try:
      b = pipeline.get_builder(config)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(1)
    total = sum(v.num_examples for v in b.info.splits.values())
    print(f'{b.name}: {total} examples built in {b.data_dir}')

  app.run(main, argv=[sys.argv[0]] + argv)


def main(argv):
  if _is_config_file(argv):
    build_from_config(argv)
    return
  import simple_parsing  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.scripts.cli import build as tfds_build  # pylint: disable=g-import-not-at-top
  from input_pipeline import builders  # pylint: disable=g-import-not-at-top,unused-import  (registers)
  simple_parsing.parse(tfds_build.Args, args=argv).execute()


if __name__ == '__main__':
  main(sys.argv[1:])
