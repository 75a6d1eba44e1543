"""configs/demo.py loads through ml_collections' config_flags (as main.py
does), from any working directory, with the ablation variants passed on."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # Subprocesses.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys

from absl import flags
from ml_collections import config_flags

cfg = config_flags.DEFINE_config_file('config', None, 'c', lock_config=True)
flags.FLAGS(['prog', '--config=' + sys.argv[1]])
c = cfg.value
print(c.dataset.name, c.model.modalities, c.input.image_scaling,
      c.train.learning_rate, c.model.width)
"""


def _load(spec):
  # Run outside the repository, without it on the path: the config file must
  # find configs/parallelnet.py by itself.
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  out = subprocess.run([sys.executable, '-c', SCRIPT, spec], cwd='/',
                       env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.split()


def test_demo_config_and_variants():
  path = os.path.join(ROOT, 'configs', 'demo.py')
  assert _load(path) == ['synthetic_sier', 'both', 'unit', '0.001', '0.125']
  assert _load(path + ':ser_only')[1] == 'speech'
  assert _load(path + ':ier_only')[1] == 'image'
