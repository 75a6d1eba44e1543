"""Tests of parallelnet.losses against Keras' own losses and by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parallelnet import losses


@pytest.mark.slow  # Keras equivalence.
def test_focal_and_ce_match_keras():
  """Against Keras' own CategoricalFocalCrossentropy and
  CategoricalCrossentropy (the losses the paper trains with), per example,
  for several gamma/alpha and for confident (large-logit) examples."""
  import keras  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(9, 4)).astype(np.float32) * 3
  logits[0] = [12.0, -3.0, 0.0, 1.0]  # p_t near 1: (1 - p_t)^gamma matters.
  labels = rng.integers(0, 4, size=9)
  labels[0] = 0
  onehot = np.eye(4, dtype=np.float32)[labels]
  for gamma, alpha in ((2.0, 0.25), (0.0, 1.0), (3.5, 0.6)):
    ours = losses.categorical_focal_loss(jnp.asarray(logits),
                                         jnp.asarray(labels), gamma=gamma,
                                         alpha=alpha)
    theirs = keras.losses.CategoricalFocalCrossentropy(
        alpha=alpha, gamma=gamma, from_logits=True, reduction=None)(
            onehot, logits)
    # atol: float32 resolution of log p_t near 12 (the confident example),
    # where ours (log-softmax) and Keras (softmax, then log) round apart.
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-5,
                               atol=5e-7)
  ce = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  keras_ce = keras.losses.CategoricalCrossentropy(
      from_logits=True, reduction=None)(onehot, logits)
  np.testing.assert_allclose(ce, np.asarray(keras_ce), rtol=1e-5, atol=5e-7)
  focal = losses.categorical_focal_loss(jnp.asarray(logits),
                                        jnp.asarray(labels), gamma=2.0,
                                        alpha=0.25)
  total = losses.per_example_loss(
      jnp.asarray(logits), jnp.asarray(labels), ce_weight=1.0,
      focal_weight=0.5, focal_gamma=2.0, focal_alpha=0.25)
  np.testing.assert_allclose(total, ce + 0.5 * focal, rtol=1e-6)


def test_masked_mean_ignores_padding():
  values = jnp.array([1.0, 2.0, 100.0, 3.0])
  mask = jnp.array([True, True, False, True])
  assert float(losses.masked_mean(values, mask)) == 2.0
  assert float(losses.masked_mean(values, None)) == 26.5
  # An all-padding batch gives 0, not NaN.
  assert float(losses.masked_mean(values, jnp.zeros(4, bool))) == 0.0


def test_focal_down_weights_easy_examples():
  # A confident correct example loses more of its CE under focal weighting.
  logits = jnp.array([[6.0, 0.0, 0.0], [0.2, 0.0, 0.0]])
  labels = jnp.array([0, 0])
  ratio = (losses.categorical_focal_loss(logits, labels, gamma=2.0, alpha=1.0)
           / losses.cross_entropy(logits, labels))
  assert ratio[0] < 0.01 < 0.3 < ratio[1]
