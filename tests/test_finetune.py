"""config.train.trunk_lr_multiplier: the N2 trunks' rate through
optax.multi_transform. Training with frozen trunks (bit-identical after
training and a resume; a resume under another layout refused) is checked in
test_study.py's two-row run, which trains with multiplier 0."""

import jax
import numpy as np
import pytest

from parallelnet.core.errors import UserError
from parallelnet import models
from parallelnet import train
import train_helpers

pytestmark = pytest.mark.usefixtures('fast_compile')


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


def test_negative_multiplier_is_a_user_error():
  with pytest.raises(UserError, match='trunk_lr_multiplier=-1'):
    train.make_optimizer(1e-3, -1.0)
