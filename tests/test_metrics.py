"""parallelnet.metrics agrees with scikit-learn, padding included."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from parallelnet import metrics

CLASSES = ('anger', 'happy', 'hate', 'sad')


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_summary_matches_sklearn_with_padding(seed):
  rng = np.random.default_rng(seed)
  n = 53
  labels = rng.integers(0, 4, size=n)
  preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 4, size=n))
  if seed == 2:  # A class that never occurs in labels nor predictions.
    labels[labels == 3] = 0
    preds[preds == 3] = 1
  mask = rng.random(n) < 0.8
  # Padding rows carry garbage labels and predictions that must be ignored.
  cm = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), 4,
                                jnp.asarray(mask))
  # Accumulating over two "batches" gives the same matrix.
  half = n // 2
  cm2 = sum(metrics.confusion_matrix(jnp.asarray(labels[s]),
                                     jnp.asarray(preds[s]), 4,
                                     jnp.asarray(mask[s]))
            for s in (slice(0, half), slice(half, n)))
  np.testing.assert_array_equal(cm, cm2)
  y, p = labels[mask], preds[mask]
  np.testing.assert_array_equal(
      cm, skm.confusion_matrix(y, p, labels=range(4)))
  got = metrics.summarize(cm, CLASSES)
  assert got['num_examples'] == mask.sum()
  assert abs(got['accuracy'] - skm.accuracy_score(y, p)) < 1e-6
  assert abs(got['macro_f1'] - skm.f1_score(y, p, average='macro',
                                            zero_division=0)) < 1e-6
  assert abs(got['cohen_kappa'] - skm.cohen_kappa_score(y, p)) < 1e-6
  prec, rec, f1, sup = skm.precision_recall_fscore_support(
      y, p, labels=range(4), zero_division=0)
  for i, name in enumerate(CLASSES):
    assert abs(got['per_class'][name]['precision'] - prec[i]) < 1e-6
    assert abs(got['per_class'][name]['recall'] - rec[i]) < 1e-6
    assert abs(got['per_class'][name]['f1'] - f1[i]) < 1e-6
    assert got['per_class'][name]['support'] == sup[i]


def test_summary_rejects_wrong_class_count():
  with pytest.raises(ValueError, match='3 class names'):
    metrics.summarize(np.zeros((4, 4)), CLASSES[:3])
