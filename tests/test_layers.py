"""The one-way dependency order of DESIGN.md, checked on every module's
imports (module-level and inside functions alike)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# DESIGN.md: parallelnet.core < configs < input_pipeline < parallelnet < explain.
# A module may import its own layer and the ones before it, never later ones.
LAYERS = ('parallelnet.core', 'configs', 'input_pipeline', 'parallelnet',
          'explain')
# Inside parallelnet, the models import no data code either.
EXTRA_FORBIDDEN = {'parallelnet.models': ('input_pipeline',)}


def _layer(module):
  for i, prefix in enumerate(LAYERS):
    if module == prefix or module.startswith(prefix + '.'):
      return i
  return None


def _module_name(path):
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _imports(path):
  """(line, imported module) for every import statement of ours in `path`."""
  tree = ast.parse(path.read_text(encoding='utf-8'), str(path))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      # `from parallelnet import train` imports parallelnet.train; a name
      # that is no module (`from x.errors import UserError`) lands in x.errors.
      for alias in node.names:
        yield node.lineno, f'{node.module}.{alias.name}'


def _violations():
  out = []
  for package in ('parallelnet', 'input_pipeline', 'explain', 'configs'):
    for path in sorted((ROOT / package).rglob('*.py')):
      me = _module_name(path)
      mine = _layer(me)
      for line, imported in _imports(path):
        theirs = _layer(imported)
        if theirs is not None and theirs > mine:
          out.append(f'{path.relative_to(ROOT)}:{line} imports {imported} '
                     f'({LAYERS[theirs]} comes after {LAYERS[mine]})')
        for prefix, banned in EXTRA_FORBIDDEN.items():
          if me == prefix or me.startswith(prefix + '.'):
            if any(imported == b or imported.startswith(b + '.')
                   for b in banned):
              out.append(f'{path.relative_to(ROOT)}:{line} imports {imported}'
                         f' (models import no data code)')
  return out


def test_dependencies_run_one_way():
  assert not _violations(), '\n'.join(_violations())


def test_the_check_sees_a_wrong_arrow(tmp_path):
  """The parser finds a function-level import that runs the wrong way."""
  bad = ROOT / 'input_pipeline' / '_layers_probe.py'
  bad.write_text('def f():\n  from parallelnet import train\n')
  try:
    found = [v for v in _violations() if '_layers_probe' in v]
  finally:
    bad.unlink()
  assert found and 'parallelnet comes after input_pipeline' in found[0]


def test_design_md_states_the_same_order():
  design = (ROOT / 'DESIGN.md').read_text(encoding='utf-8')
  assert ' < '.join(LAYERS) in design


# DESIGN.md "Imports": a library module imports at its top. Inside a function
# only these, each for a reason a reader can check:
DEFERRED_IMPORTS = {
    # Optional: a missing one fails only the feature that needs it.
    'keras', 'h5py', 'torch', 'shap',
    # Heavy, and only some commands need them: TensorFlow and TFDS (through
    # core.progress, which first blocks TF's eager Keras import), matplotlib
    # (through core.plotting), scipy's signal and ndimage (~0.6 s).
    'tensorflow', 'tensorflow_datasets', 'matplotlib', 'scipy', 'simple_parsing',
    # input_pipeline.pipeline imports TensorFlow at its top, so the package
    # and the build command line load it after setting TF's log level.
    'input_pipeline.pipeline', 'input_pipeline.builders',
}


def _function_level_imports(path):
  """(line, module) of every import inside a function of `path`."""
  tree = ast.parse(path.read_text(encoding='utf-8'), str(path))
  for fn in ast.walk(tree):
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    for node in ast.walk(fn):
      if isinstance(node, ast.Import):
        for alias in node.names:
          yield node.lineno, alias.name
      elif isinstance(node, ast.ImportFrom) and node.module:
        for alias in node.names:
          yield node.lineno, f'{node.module}.{alias.name}'


def _deferred_without_reason():
  out = []
  for package in ('parallelnet', 'input_pipeline', 'explain', 'configs'):
    for path in sorted((ROOT / package).rglob('*.py')):
      for line, imported in _function_level_imports(path):
        if not any(imported == m or imported.startswith(m + '.')
                   for m in DEFERRED_IMPORTS):
          out.append(f'{path.relative_to(ROOT)}:{line} imports {imported} '
                     'inside a function')
  return sorted(set(out))


def test_library_imports_sit_at_the_top():
  """No import inside a function to dodge the order or a cycle: only the
  optional and heavy modules listed above (main.py, bench/ and tests/ may
  import per mode)."""
  assert not _deferred_without_reason(), '\n'.join(_deferred_without_reason())


def test_the_check_sees_a_deferred_import():
  bad = ROOT / 'parallelnet' / '_deferred_probe.py'
  bad.write_text('def f():\n  from parallelnet import mesh\n  import keras\n')
  try:
    found = [v for v in _deferred_without_reason() if '_deferred_probe' in v]
  finally:
    bad.unlink()
  assert found == ['parallelnet/_deferred_probe.py:2 imports parallelnet.mesh '
                   'inside a function']
