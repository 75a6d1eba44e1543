"""`tfds build` for our builders without apache_beam.

  python -m input_pipeline.build synthetic_sier --config=runlocal
  python -m input_pipeline.build iitr_sier --config=paper --manual_dir=DIR

The `tfds` console script of tensorflow-datasets 4.9.10 imports apache_beam
at start-up even for plain builds; this runs the same build command
(tensorflow_datasets.scripts.cli.build), with the same flags, after
registering input_pipeline.builders.
"""

import sys

import simple_parsing
from tensorflow_datasets.scripts.cli import build as tfds_build

from input_pipeline import builders  # pylint: disable=unused-import  (registers)


def main(argv):
  simple_parsing.parse(tfds_build.Args, args=argv).execute()


if __name__ == '__main__':
  main(sys.argv[1:])
