"""The paper's training loss (PAPER.md, "Training"): ce_weight·CE + focal_weight·focal.

All functions take logits `(batch, C)` and integer labels `(batch,)`; the
per-example losses are reduced by a masked mean so that padded examples
(mask False) contribute nothing.
"""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example categorical cross-entropy, -log p_t."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def categorical_focal_loss(logits: jax.Array, labels: jax.Array, *,
                           gamma: float, alpha: float) -> jax.Array:
  """Per-example categorical focal loss, -α (1 - p_t)^γ log p_t.

  This is Keras' `CategoricalFocalCrossentropy` for one-hot targets (the loss
  the paper trains with). It is hand-rolled because optax only ships the
  binary `sigmoid_focal_loss`, which treats every class as an independent
  sigmoid and so is a different loss. Computed from log-softmax for stability
  (Keras clips probabilities instead).
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  log_p_t = jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
  p_t = jnp.exp(log_p_t)
  return -alpha * (1.0 - p_t) ** gamma * log_p_t


def per_example_loss(logits: jax.Array, labels: jax.Array, *,
                     ce_weight: float, focal_weight: float,
                     focal_gamma: float, focal_alpha: float) -> jax.Array:
  """ce_weight·cross-entropy + focal_weight·focal loss, per example."""
  return (ce_weight * cross_entropy(logits, labels)
          + focal_weight * categorical_focal_loss(
              logits, labels, gamma=focal_gamma, alpha=focal_alpha))


def masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Mean of `values` over the examples where `mask` is True (all if None)."""
  if mask is None:
    return jnp.mean(values)
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def loss_weights(train_config) -> dict:
  """The loss keyword arguments taken from `config.train`."""
  return dict(ce_weight=float(train_config.ce_weight),
              focal_weight=float(train_config.focal_weight),
              focal_gamma=float(train_config.focal_gamma),
              focal_alpha=float(train_config.focal_alpha))
