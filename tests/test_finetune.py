"""config.train.trunk_lr_multiplier: the N2 trunks' rate through
optax.multi_transform; 0 freezes them bit for bit, through training and a
resume, and a resume with another optimizer layout is refused."""

import jax
import numpy as np
import pytest

from input_pipeline.errors import UserError
from parallelnet import checkpointing
from parallelnet import mesh as mesh_lib
from parallelnet import models
from parallelnet import train
import train_helpers

pytestmark = pytest.mark.usefixtures('fast_compile')


def _config(multiplier):
  c = train_helpers.tiny_config()
  c.model.modalities = 'speech'  # One trunk (N2_s): half the compile time.
  c.train.trunk_lr_multiplier = multiplier
  return c


def _split(params):
  labels = train.trunk_labels(params)
  trunk = [x for x, l in zip(jax.tree.leaves(params), jax.tree.leaves(labels))
           if l == 'trunk']
  rest = [x for x, l in zip(jax.tree.leaves(params), jax.tree.leaves(labels))
          if l == 'rest']
  return trunk, rest


def test_trunk_labels_cover_exactly_the_n2_trunks():
  config = train_helpers.tiny_config()
  params = jax.eval_shape(lambda k: models.init_variables(
      models.get_model(config), config, k, load_pretrained=False),
                          jax.random.key(0))['params']
  trunk, _ = _split(params)
  expected = (models.count_params(params['N2_s']['backbone'])
              + models.count_params(params['N2_i']['backbone']))
  assert sum(int(np.prod(x.shape)) for x in trunk) == expected > 0


def test_first_adam_step_scales_trunk_updates():
  """Adam's first step moves each weight by ~lr (|m/sqrt(v)| = 1): the
  trunks move by multiplier * lr, everything else by lr."""
  rng = np.random.default_rng(0)
  params = {'N2_s': {'backbone': {'w': rng.normal(size=(3, 4))},
                     'dense': {'w': rng.normal(size=(4,))}},
            'N2_i': {'backbone': {'w': rng.normal(size=(5,))}},
            'N1_s': {'w': rng.normal(size=(2, 2))}}
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape), params)
  lr = 1e-3
  for multiplier in (0.25, 0.0, 1.0):
    tx = train.make_optimizer(lr, multiplier)
    updates, _ = tx.update(grads, tx.init(params), params)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
      trunk = jax.tree_util.keystr(path[1:2]) == "['backbone']"
      np.testing.assert_allclose(np.abs(u), (multiplier if trunk else 1) * lr,
                                 rtol=1e-4, err_msg=str(path))
  # Only the multiplier-1 optimizer keeps the single-Adam state layout.
  assert train.optimizer_layout(1.0) == 'adam'
  assert train.optimizer_layout(0.0) == 'adam+frozen_trunk'


def test_frozen_trunks_are_bit_identical_after_training_and_resume(tmp_path):
  config = _config(0.0)
  config.train.num_epochs = 1
  workdir = str(tmp_path / 'run')
  data = train_helpers.ArrayData(config, sizes=(16, 8, 8))
  train.train_and_evaluate(config, workdir, data=data)
  # A resume with another optimizer layout is refused before training.
  with pytest.raises(UserError, match=r'trunk_lr_multiplier=1\.0.*'
                                      r"'adam'"):
    train.train_and_evaluate(_config(1.0), workdir, data=data)
  config.train.num_epochs = 2  # Resumes with the frozen layout.
  train.train_and_evaluate(config, workdir, data=data)

  init = models.init_variables(models.get_model(config), config,
                               train._keys(config)[0])  # pylint: disable=protected-access
  _, trained, step = checkpointing.restore_for_inference(config, workdir,
                                                         'latest')
  assert step == 4
  (t0, r0), (t1, r1) = _split(init['params']), _split(trained['params'])
  for a, b in zip(t0, t1):  # Bit for bit, not just close.
    np.testing.assert_array_equal(np.asarray(a).view(np.uint32),
                                  np.asarray(b).view(np.uint32))
  assert all(not np.array_equal(a, b) for a, b in zip(r0, r1))


def test_negative_multiplier_is_a_user_error():
  with pytest.raises(UserError, match='trunk_lr_multiplier=-1'):
    train.make_optimizer(1e-3, -1.0)
