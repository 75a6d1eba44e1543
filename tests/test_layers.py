"""DESIGN.md's import rules, checked on every library module: the one-way
dependency order (module-level and function-level imports alike), and
imports at the top but for a listed few."""

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


def _module_name(path, root):
  parts = list(path.relative_to(root).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _imported(node):
  """(line, imported module) of an absolute import statement, else nothing."""
  if isinstance(node, ast.Import):
    for alias in node.names:
      yield node.lineno, alias.name
  elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
    # `from parallelnet import train` imports parallelnet.train; a name
    # that is no module (`from x.errors import UserError`) lands in x.errors.
    for alias in node.names:
      yield node.lineno, f'{node.module}.{alias.name}'


def _imports(path, *, in_functions=False):
  """(line, imported module) for every import statement in `path` (or only
  those inside a function)."""
  tree = ast.parse(path.read_text(encoding='utf-8'), str(path))
  roots = [tree]
  if in_functions:
    roots = [n for n in ast.walk(tree)
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
  for root in roots:
    for node in ast.walk(root):
      yield from _imported(node)


def _library_files(root):
  for package in ('parallelnet', 'input_pipeline', 'explain', 'configs'):
    yield from sorted((root / package).rglob('*.py'))


def _violations(root=ROOT):
  out = []
  for path in _library_files(root):
    me = _module_name(path, root)
    mine = _layer(me)
    for line, imported in _imports(path):
      theirs = _layer(imported)
      if theirs is not None and theirs > mine:
        out.append(f'{path.relative_to(root)}:{line} imports {imported} '
                   f'({LAYERS[theirs]} comes after {LAYERS[mine]})')
      for prefix, banned in EXTRA_FORBIDDEN.items():
        if me == prefix or me.startswith(prefix + '.'):
          if any(imported == b or imported.startswith(b + '.')
                 for b in banned):
            out.append(f'{path.relative_to(root)}:{line} imports {imported}'
                       f' (models import no data code)')
  return out


def _probe(tmp_path, relpath, text):
  """A tree in tmp_path holding only module `relpath` (the checks read the
  repository's files, so a probe never goes there, where another test
  process may be reading)."""
  path = tmp_path / relpath
  path.parent.mkdir(parents=True)
  path.write_text(text)
  return tmp_path


def test_dependencies_run_one_way():
  assert not _violations(), '\n'.join(_violations())


def test_the_check_sees_a_wrong_arrow(tmp_path):
  """The parser finds a function-level import that runs the wrong way."""
  root = _probe(tmp_path, 'input_pipeline/probe.py',
                'def f():\n  from parallelnet import train\n')
  assert _violations(root) == [
      'input_pipeline/probe.py:2 imports parallelnet.train (parallelnet '
      'comes after input_pipeline)']


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


def _deferred_without_reason(root=ROOT):
  out = set()  # A nested function's imports are walked twice.
  for path in _library_files(root):
    for line, imported in _imports(path, in_functions=True):
      if not any(imported == m or imported.startswith(m + '.')
                 for m in DEFERRED_IMPORTS):
        out.add(f'{path.relative_to(root)}:{line} imports {imported} '
                'inside a function')
  return sorted(out)


def test_library_imports_sit_at_the_top():
  """No import inside a function to dodge the order or a cycle: only the
  optional and heavy modules listed above (main.py, bench/ and tests/ may
  import per mode)."""
  assert not _deferred_without_reason(), '\n'.join(_deferred_without_reason())


def test_the_check_sees_a_deferred_import(tmp_path):
  root = _probe(tmp_path, 'parallelnet/probe.py',
                'def f():\n  from parallelnet import mesh\n  import keras\n')
  assert _deferred_without_reason(root) == [
      'parallelnet/probe.py:2 imports parallelnet.mesh inside a function']
