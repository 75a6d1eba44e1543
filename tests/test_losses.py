"""Tests of parallelnet.losses against Keras' definition and by hand."""

import jax
import jax.numpy as jnp
import numpy as np

from parallelnet import losses


def _keras_focal(probs, labels, gamma, alpha):
  # Keras CategoricalFocalCrossentropy with one-hot targets, written out.
  onehot = np.eye(probs.shape[1])[labels]
  return np.sum(alpha * (1 - probs) ** gamma * -onehot * np.log(probs), axis=1)


def test_focal_and_ce_match_definitions():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(7, 4)).astype(np.float32) * 3
  labels = rng.integers(0, 4, size=7)
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  focal = losses.categorical_focal_loss(jnp.asarray(logits),
                                        jnp.asarray(labels), gamma=2.0,
                                        alpha=0.25)
  np.testing.assert_allclose(focal, _keras_focal(probs, labels, 2.0, 0.25),
                             rtol=1e-5)
  ce = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(ce, -np.log(probs[np.arange(7), labels]),
                             rtol=1e-5)
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
