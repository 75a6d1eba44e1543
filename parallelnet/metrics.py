"""Classification metrics of PAPER.md, "Training" from a confusion matrix.

The confusion matrix is accumulated on device (`confusion_matrix`, masked so
that padding is ignored, summed over eval batches); everything else is a
float64 numpy summary of that matrix (`summarize`), which is what lets the
numbers agree with scikit-learn to rounding error. Conventions follow
scikit-learn: rows are true labels, columns predictions; macro-F1 averages
over the classes that occur in the labels or the predictions; a 0/0
precision, recall or F1 is 0.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels: jax.Array, predictions: jax.Array,
                     num_classes: int,
                     mask: jax.Array | None = None) -> jax.Array:
  """int32 `(C, C)` counts: entry [t, p] counts label t predicted as p."""
  weights = (jnp.ones(labels.shape, jnp.int32) if mask is None
             else mask.astype(jnp.int32))
  cm = jnp.zeros((num_classes, num_classes), jnp.int32)
  return cm.at[labels, predictions].add(weights, mode='drop')


def _safe_div(num, den):
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def per_class(cm) -> dict:
  """Per-class precision, recall, F1 and support (numpy float64 arrays)."""
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  predicted = cm.sum(axis=0)
  support = cm.sum(axis=1)
  precision = _safe_div(tp, predicted)
  recall = _safe_div(tp, support)
  f1 = _safe_div(2 * tp, predicted + support)  # = 2PR / (P + R).
  return dict(precision=precision, recall=recall, f1=f1, support=support)


def accuracy(cm) -> float:
  cm = np.asarray(cm, np.float64)
  return float(np.trace(cm) / max(cm.sum(), 1.0))


def macro_f1(cm) -> float:
  """Mean F1 over the classes present in the labels or the predictions."""
  cm = np.asarray(cm, np.float64)
  present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
  if not present.any():
    return 0.0
  return float(per_class(cm)['f1'][present].mean())


def cohen_kappa(cm) -> float:
  """Cohen's kappa: (p_o - p_e) / (1 - p_e) from the confusion matrix."""
  cm = np.asarray(cm, np.float64)
  n = cm.sum()
  if n == 0:
    return float('nan')
  p_o = np.trace(cm) / n
  p_e = float(np.dot(cm.sum(axis=0), cm.sum(axis=1))) / (n * n)
  if p_e == 1.0:  # Both raters use one class only: kappa is undefined.
    return float('nan')
  return float((p_o - p_e) / (1.0 - p_e))


def summarize(cm, class_names: Sequence[str]) -> dict:
  """JSON-ready metrics: accuracy, macro_f1, cohen_kappa, confusion_matrix,
  per_class (name -> precision/recall/f1/support) and num_examples."""
  cm = np.asarray(cm)
  if cm.shape != (len(class_names), len(class_names)):
    raise ValueError(f'Confusion matrix of shape {cm.shape} does not match '
                     f'{len(class_names)} class names {tuple(class_names)}.')
  pc = per_class(cm)
  return dict(
      accuracy=accuracy(cm),
      macro_f1=macro_f1(cm),
      cohen_kappa=cohen_kappa(cm),
      confusion_matrix=cm.astype(int).tolist(),
      per_class={
          name: dict(precision=float(pc['precision'][i]),
                     recall=float(pc['recall'][i]), f1=float(pc['f1'][i]),
                     support=int(pc['support'][i]))
          for i, name in enumerate(class_names)},
      num_examples=int(cm.sum()),
  )
