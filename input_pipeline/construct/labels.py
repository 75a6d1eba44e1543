"""The labelling rule and the class map (PAPER.md, "Building the dataset")."""

import numpy as np

from parallelnet.core.errors import UserError

DEFAULT_CLASS_MAP = 'excitement:happy,disgust:hate'
DECISIONS = ('kept', 'low_confidence', 'disagreement', 'bad_input')


def label_pair(p_image, p_speech, *, threshold=0.5, require_agreement=False):
  """The paper's labelling rule (§3.1, PAPER.md, "Building the dataset") for one pair.

  m_i = max p_image, m_s = max p_speech. Returns (label_index, 'kept') with
  the argmax of the more confident teacher, or (None, reason):
    * 'low_confidence' when max(m_i, m_s) < threshold (a maximum equal to
      the threshold is kept);
    * 'disagreement' when `require_agreement` and the two argmaxes differ
      (checked after the threshold: a pair failing both is low_confidence).
  Ties: equal maxima go to the image teacher; equal probabilities inside one
  vector go to the lower class index (numpy argmax).
  """
  pi = np.asarray(p_image, np.float64)
  ps = np.asarray(p_speech, np.float64)
  if pi.ndim != 1 or pi.shape != ps.shape or pi.size == 0:
    raise ValueError(f'label_pair needs two probability vectors of one length; '
                     f'got shapes {pi.shape} and {ps.shape}.')
  for name, p in (('image', pi), ('speech', ps)):
    if not np.all(np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1) > 1e-3:
      raise ValueError(f'{name} probabilities {p.tolist()} are not a '
                       'probability vector (finite, >= 0, summing to 1).')
  m_i, m_s = pi.max(), ps.max()
  if max(m_i, m_s) < threshold:
    return None, 'low_confidence'
  a_i, a_s = int(np.argmax(pi)), int(np.argmax(ps))
  if require_agreement and a_i != a_s:
    return None, 'disagreement'
  return (a_i if m_i >= m_s else a_s), 'kept'


def parse_class_map(text):
  """'excitement:happy,disgust:hate' -> {'excitement': 'happy', ...}."""
  out = {}
  for item in (text or '').split(','):
    item = item.strip()
    if not item:
      continue
    src, sep, dst = item.partition(':')
    if not sep or not src.strip() or not dst.strip():
      raise UserError(f'--class_map item {item!r} is not teacher_class:'
                      'target_class (e.g. excitement:happy).')
    out[src.strip()] = dst.strip()
  return out


def class_matrix(teacher_classes, target_classes, class_map, who='teacher'):
  """(len(teacher_classes), len(target_classes)) 0/1 matrix: p @ M maps a
  teacher's probabilities onto the targets (summing merged classes)."""
  targets = list(target_classes)
  m = np.zeros((len(teacher_classes), len(targets)), np.float64)
  unmapped = []
  for i, name in enumerate(teacher_classes):
    dst = class_map.get(name, name if name in targets else None)
    if dst not in targets:
      unmapped.append(f'{name!r}' + (f' (mapped to unknown class {dst!r})'
                                     if dst is not None else ''))
      continue
    m[i, targets.index(dst)] = 1.0
  if unmapped:
    raise UserError(
        f'The {who}\'s class(es) {", ".join(unmapped)} map to none of the '
        f'target classes ({", ".join(targets)}); add them to --class_map '
        '(teacher_class:target_class, comma-separated).')
  return m
