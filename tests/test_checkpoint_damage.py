"""Damaged checkpoints: training resumes from the newest `latest` step that
restores (never silently from scratch), and eval on a damaged `best` fails
with a message naming it."""

import glob
import json
import logging
import os
import re
import shutil

import pytest

from parallelnet.core import errors
from parallelnet import checkpointing
from parallelnet import mesh as mesh_lib
from parallelnet import models
from parallelnet import train
import train_helpers

pytestmark = pytest.mark.usefixtures('fast_compile')


def _config(num_epochs):
  # The tiny N2 trunk (registered by the test's `tiny_trunk` fixture): the
  # subject is the checkpoints, not the trunk.
  c = train_helpers.tiny_config(f'n2={train_helpers.TINY_TRUNK}')
  c.model.modalities = 'speech'  # Half the compile time of the fused model.
  c.train.num_epochs = num_epochs
  c.train.checkpoint_every_steps = 1
  return c


def _overwrite(files, offset=None, size=64):
  """Overwrites a byte range of each file (the middle one by default)."""
  assert files
  for path in files:
    n = os.path.getsize(path)
    start = n // 2 if offset is None else offset
    with open(path, 'r+b') as f:
      f.seek(start)
      f.write(b'\x5a' * min(size, n - start))


def _state_files(workdir, which, step):
  """The state's OCDBT data files (b-tree nodes and array chunks)."""
  return glob.glob(os.path.join(workdir, 'checkpoints', which, str(step),
                                'state', '**', 'd', '*'), recursive=True)


@pytest.mark.slow
def test_damaged_newest_checkpoint_resumes_from_previous(tmp_path, caplog,
                                                        tiny_trunk):
  del tiny_trunk  # Registered for _config.
  data = train_helpers.ArrayData(_config(1), sizes=(16, 8, 8))  # 2 steps/epoch.
  base = str(tmp_path / 'base')
  first = train.train_and_evaluate(_config(1), base, data=data)
  latest = os.path.join(base, 'checkpoints', 'latest')
  assert sorted(int(s) for s in os.listdir(latest)) == [1, 2]  # Two kept.

  # Reference: a workdir never damaged whose newest checkpoint is step 1.
  clean, damaged = str(tmp_path / 'clean'), str(tmp_path / 'damaged')
  shutil.copytree(base, clean)
  shutil.rmtree(os.path.join(clean, 'checkpoints', 'latest', '2'))
  shutil.copytree(base, damaged)
  _overwrite(_state_files(damaged, 'latest', 2), size=200)

  with caplog.at_level(logging.INFO):
    got = train.train_and_evaluate(_config(2), damaged, data=data)
  log = caplog.text
  assert f'{damaged}/checkpoints/latest/2 is damaged' in log
  assert f'Resuming from {damaged}/checkpoints/latest/1' in log
  assert 'Resuming at epoch 1, step 1 of the epoch' in log
  assert os.path.isdir(os.path.join(damaged, 'checkpoints', 'damaged',
                                    'latest_2'))
  expected = train.train_and_evaluate(_config(2), clean, data=data)
  assert got == expected
  # Training went on past the damaged step: it saved steps 3 and 4 again.
  assert sorted(os.listdir(os.path.join(damaged, 'checkpoints', 'latest'))) \
      == ['3', '4']

  # A kill while `best` of an improving epoch was still being written (it is
  # saved beside `latest` of the same step, without waiting): the resume
  # writes it again from `latest`, whose meta names its own step as best.
  cut = str(tmp_path / 'cut')
  shutil.copytree(base, cut)
  shutil.rmtree(os.path.join(cut, 'checkpoints', 'best', '2'))
  with caplog.at_level(logging.INFO):
    assert train.train_and_evaluate(_config(1), cut, data=data) == first
  assert 'The best checkpoint of step 2 was cut short' in caplog.text
  assert os.listdir(os.path.join(cut, 'checkpoints', 'best')) == ['2']

  config = _config(1)
  abstract = train.abstract_checkpoint_tree(
      config, models.get_model(config), mesh_lib.make_mesh())
  # Array values that do not match their saved checksums are refused
  # (OCDBT checksums its b-tree, not the array chunks).
  meta_file = os.path.join(base, 'checkpoints', 'latest', '2', 'meta',
                           'metadata')
  meta = json.loads(open(meta_file).read())
  key = sorted(meta['state_crc32'])[0]
  meta['state_crc32'][key] ^= 1
  with open(meta_file, 'w') as f:
    json.dump(meta, f)
  ckpts = checkpointing.Checkpoints(base, config, async_save=False)
  with pytest.raises(checkpointing.DamagedCheckpointError,
                     match=r"The 'latest' checkpoint .*/latest/2 is damaged: "
                           rf'the values of {re.escape(key)} do not match'):
    ckpts.restore('latest', abstract, step=2)
  # No `latest` restores: an error naming the folder, not a fresh start.
  _overwrite(_state_files(base, 'latest', 1), size=200)
  with pytest.raises(errors.UserError,
                     match=r"No 'latest' checkpoint in .*base/checkpoints/"
                           r'latest restores: step 2: .*; step 1: '):
    ckpts.restore('latest', abstract, fallback=True)
  ckpts.close()

  # --mode=eval on a damaged `best`: a UserError naming it.
  _overwrite(_state_files(base, 'best', 2), size=200)
  with pytest.raises(errors.UserError,
                     match=r"The 'best' checkpoint .*base/checkpoints/best/2"
                           r' is damaged'):
    train.evaluate(config, base, data=data)
