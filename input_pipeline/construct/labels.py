"""The labelling rule and the class map (PAPER.md, "Building the dataset").

Each teacher votes (label, m): m is its confidence and label the target class
it names, or None. Under the paper's rule (class_merge='max', the default) m
is the maximum over the teacher's OWN classes and label is the target that
its argmax class maps to (excitement -> happy, disgust -> hate), None when
that class maps to no target (e.g. fear, neutral, surprise). Under
class_merge='sum' the teacher's probabilities are first summed onto the
targets (every class must map), and m and label are the maximum and argmax
of that distribution. `combine` turns the two votes into the pair's label.
"""

import numpy as np

from parallelnet.core.errors import UserError

DEFAULT_CLASS_MAP = 'excitement:happy,disgust:hate'
CLASS_MERGES = ('max', 'sum')
DECISIONS = ('kept', 'low_confidence', 'unmapped', 'disagreement',
             'bad_input')


def combine(vote_image, vote_speech, *, threshold=0.5,
            require_agreement=False):
  """The paper's labelling rule (§3.1) on two votes (label or None, m).

  The more confident teacher labels the pair (equal m: the image teacher).
  Returns (label, 'kept') or (None, reason), checked in this order:
    * 'low_confidence' when max(m_i, m_s) < threshold (a maximum equal to
      the threshold is kept);
    * 'unmapped' when the more confident teacher's label is None (its class
      is none of the targets: the paper drops such samples);
    * 'disagreement' when `require_agreement` and the two labels differ (a
      None label differs from every target).
  """
  (l_i, m_i), (l_s, m_s) = vote_image, vote_speech
  if max(m_i, m_s) < threshold:
    return None, 'low_confidence'
  label = l_i if m_i >= m_s else l_s
  if label is None:
    return None, 'unmapped'
  if require_agreement and l_i != l_s:
    return None, 'disagreement'
  return label, 'kept'


def label_pair(p_image, p_speech, *, threshold=0.5, require_agreement=False):
  """The paper's labelling rule (§3.1, PAPER.md, "Building the dataset") for
  two probability vectors over the target classes.

  Each teacher votes (argmax, max) of its vector, and `combine` decides:
  (label_index, 'kept') with the argmax of the more confident teacher, or
  (None, 'low_confidence' | 'disagreement'). Ties: equal maxima go to the
  image teacher; equal probabilities inside one vector go to the lower class
  index (numpy argmax). Teachers with other classes vote through
  ClassMapping.vote.
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
  return combine((int(np.argmax(pi)), pi.max()), (int(np.argmax(ps)), ps.max()),
                 threshold=threshold, require_agreement=require_agreement)


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


def class_targets(teacher_classes, target_classes, class_map, who='teacher'):
  """Per teacher class, the index of the target class it maps to (its own
  name, or `class_map`), or -1 when it maps to none. A class that
  `class_map` sends to a name that is no target is an error (a typo)."""
  targets = list(target_classes)
  out, unknown = [], []
  for name in teacher_classes:
    dst = class_map.get(name, name if name in targets else None)
    if dst is not None and dst not in targets:
      unknown.append(f'{name!r} (mapped to unknown class {dst!r})')
    out.append(targets.index(dst) if dst in targets else -1)
  if unknown:
    raise UserError(
        f'--class_map maps the {who}\'s class(es) {", ".join(unknown)} to '
        f'none of the target classes ({", ".join(targets)}).')
  return np.array(out, np.int64)


def class_matrix(teacher_classes, target_classes, class_map, who='teacher'):
  """(len(teacher_classes), len(target_classes)) 0/1 matrix: p @ M sums a
  teacher's probabilities onto the targets (class_merge='sum'), which needs
  every teacher class to map to a target."""
  idx = class_targets(teacher_classes, target_classes, class_map, who)
  unmapped = [repr(c) for c, i in zip(teacher_classes, idx) if i < 0]
  if unmapped:
    raise UserError(
        f'The {who}\'s class(es) {", ".join(unmapped)} map to none of the '
        f'target classes ({", ".join(target_classes)}); add them to '
        '--class_map (teacher_class:target_class, comma-separated), or use '
        '--class_merge=max, which drops the pairs they label.')
  m = np.zeros((len(teacher_classes), len(target_classes)), np.float64)
  m[np.arange(len(idx)), idx] = 1.0
  return m


class ClassMapping:
  """One teacher's classes onto the target classes, under a merge rule."""

  def __init__(self, teacher_classes, target_classes, class_map, merge='max',
               who='teacher'):
    if merge not in CLASS_MERGES:
      raise UserError(f'--class_merge={merge!r}; use max (the paper) or sum.')
    self.classes = tuple(teacher_classes)
    self.merge = merge
    self.targets = class_targets(self.classes, target_classes, class_map, who)
    self.matrix = (class_matrix(self.classes, target_classes, class_map, who)
                   if merge == 'sum' else None)

  def vote(self, p):
    """(target index or None, m) for the teacher's probabilities `p` over
    its own classes (see the module doc)."""
    p = np.asarray(p, np.float64)
    if self.matrix is not None:
      q = p @ self.matrix
      return int(np.argmax(q)), float(q.max())
    a = int(np.argmax(p))
    return (None if self.targets[a] < 0 else int(self.targets[a])), float(p[a])
