"""The teacher interface: `module:function` teachers, and checking what any
teacher returns (the interface itself: the package docstring)."""

import importlib
import os
import re

import numpy as np

from parallelnet.core.errors import UserError


class CallableTeacher:
  """A `module:function` teacher: function(list of paths) -> probabilities."""

  def __init__(self, fn, modality, classes, description):
    self.fn = fn
    self.modality = modality
    self.classes = tuple(classes)
    self.input_spec = {'kind': 'path'}
    self.description = description

  def predict(self, paths):
    return np.asarray(self.fn(list(paths)), np.float64)


def load_callable_teacher(spec, modality, default_classes):
  """CallableTeacher from 'module:function'; its classes are
  `function.classes` if set, else `default_classes`."""
  module_name, _, fn_name = spec.partition(':')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise UserError(f'Teacher {spec!r}: cannot import module '
                    f'{module_name!r} ({e}).') from e
  fn = getattr(module, fn_name, None)
  if not callable(fn):
    raise UserError(f'Teacher {spec!r}: {module_name} has no callable '
                    f'{fn_name!r}.')
  return CallableTeacher(fn, modality, getattr(fn, 'classes', default_classes),
                         f'callable {spec}')


def is_callable_spec(spec):
  """'pkg.module:function' (and not an existing folder)."""
  return (not os.path.isdir(spec) and
          re.fullmatch(r'[A-Za-z_][\w.]*:[A-Za-z_]\w*', spec) is not None)


def teacher_probs(teacher, inputs, who):
  """The teacher's probabilities over its own classes, checked."""
  n = len(inputs)
  p = np.asarray(teacher.predict(inputs), np.float64)
  if p.shape != (n, len(teacher.classes)):
    raise UserError(f'The {who} ({teacher.description}) returned shape '
                    f'{p.shape} for {n} inputs; expected ({n}, '
                    f'{len(teacher.classes)}) probabilities.')
  if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(
      np.abs(p.sum(-1) - 1) > 1e-3):
    raise UserError(f'The {who} ({teacher.description}) returned values that '
                    'are not probabilities (finite, >= 0, rows summing to 1); '
                    'apply a softmax.')
  return p
