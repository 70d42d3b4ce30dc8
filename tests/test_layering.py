"""The package's layering (docs/architecture.md), checked on the source with `ast`.

* Commands (`python -m ssen_jax.X`) are the top-level modules; library modules (every subpackage)
  never import one.
* Each package imports only the packages of the layers below it (LAYERS), never upwards.
* ops and models import nothing outside jax, flax, numpy and ssen_jax.ops (+ the standard library),
  TensorFlow only the input pipeline and data preparation, torch only interop and the benchmarks.
* The module import graph has no cycles.

Every import counts, also those inside functions (lazy imports are still dependencies).
"""
import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'ssen_jax'
COMMANDS = {'main', 'evaluate', 'infer', 'visualize_offsets', 'convert_torch', 'benchmark',
            'probe_reference'}
# Package -> the ssen_jax packages it may import (besides itself). Lower layers first.
LAYERS = {
    'ops': set(),
    'models': {'ops'},
    'core': set(),
    'interop': set(),
    'data': {'ops'},  # The one cubic kernel (ops.resize.cubic_kernel), numpy.
    'eval': {'ops', 'core', 'data'},
    'inference': {'ops', 'models', 'core', 'data', 'interop'},
    'data_prep': {'ops', 'core', 'data'},  # core: the commands' shared flags (core.cli).
    # The demo config prepares its TFDS dataset on first use (data_prep.tfds_build).
    'training': {'ops', 'models', 'core', 'data', 'data_prep', 'eval', 'inference', 'interop'},
    'benchmarks': {'ops', 'models', 'core', 'data', 'data_prep', 'eval', 'inference', 'interop',
                   'training'},
}
THIRD_PARTY_ONLY = {
    'ops': {'jax', 'numpy'},
    'models': {'jax', 'flax', 'numpy'},
}
TENSORFLOW = {'ssen_jax.data.input_pipeline', 'ssen_jax.data_prep.benchmark_input'}
# TensorFlow Datasets: the builders, their command and the input pipeline that reads them.
TFDS = {'ssen_jax.data.input_pipeline', 'ssen_jax.data_prep.tfds_builders',
        'ssen_jax.data_prep.tfds_build'}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: pathlib.Path, module: str) -> set[str]:
  """Absolute names of every module `path` imports (relative imports resolved)."""
  is_package = path.name == '__init__.py'
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = module.split('.')
        anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
        base = '.'.join(anchor + ([base] if base else []))
      names.add(base)
      # `from ssen_jax.data import images` imports the module ssen_jax.data.images.
      names.update(f'{base}.{alias.name}' for alias in node.names)
  return names


@pytest.fixture(scope='module')
def graph() -> dict[str, set[str]]:
  modules = {_module_name(p): p for p in PACKAGE.rglob('*.py')}
  edges = {}
  for name, path in modules.items():
    edges[name] = {n for n in _imports(path, name) if n in modules and n != name}
  raw = {name: _imports(path, name) for name, path in modules.items()}
  return {'edges': edges, 'raw': raw}


def _package(module: str) -> str | None:
  """'ssen_jax.data.images' -> 'data'; top-level modules -> None."""
  parts = module.split('.')
  return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def test_every_subpackage_has_a_layer(graph):
  packages = {_package(m) for m in graph['edges']} - {None}
  assert packages == set(LAYERS), 'add new packages to LAYERS and docs/architecture.md'
  top = {m.split('.')[1] for m in graph['edges'] if m.count('.') == 1 and _package(m) is None}
  assert top == COMMANDS, 'top-level modules are the commands; library code goes in a package'


def test_library_never_imports_a_command(graph):
  commands = {f'ssen_jax.{c}' for c in COMMANDS}
  bad = [(m, sorted(deps & commands)) for m, deps in graph['edges'].items()
         if _package(m) is not None and deps & commands]
  assert not bad


def test_no_upward_imports(graph):
  bad = []
  for module, deps in graph['edges'].items():
    package = _package(module)
    if package is None:
      continue
    for dep in deps:
      target = _package(dep)
      if target is not None and target != package and target not in LAYERS[package]:
        bad.append(f'{module} -> {dep}')
  assert not bad


def test_models_and_ops_import_only_jax_flax_numpy(graph):
  stdlib = set(sys.stdlib_module_names) | {'__future__'}
  bad = []
  for module, names in graph['raw'].items():
    package = _package(module)
    if package not in THIRD_PARTY_ONLY:
      continue
    for name in names:
      root = name.split('.')[0]
      ok = (root in stdlib or root in THIRD_PARTY_ONLY[package]
            or name == 'ssen_jax' or name.startswith('ssen_jax.ops')
            or (package == 'models' and name.startswith('ssen_jax.models')))
      if not ok:
        bad.append(f'{module} imports {name}')
  assert not bad


def test_tensorflow_and_torch_stay_in_their_corners(graph):
  bad = []
  for module, names in graph['raw'].items():
    roots = {n.split('.')[0] for n in names}
    if 'tensorflow' in roots and module not in TENSORFLOW:
      bad.append(f'{module} imports tensorflow')
    if 'tensorflow_datasets' in roots and module not in TFDS:
      bad.append(f'{module} imports tensorflow_datasets')
    if roots & {'torch', 'torchvision'} and _package(module) not in ('interop', 'benchmarks'):
      bad.append(f'{module} imports torch')
  assert not bad


def test_no_import_cycles(graph):
  edges = graph['edges']
  state, stack, cycles = {}, [], []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for dep in sorted(edges[node]):
      if state.get(dep) == 'open':
        cycles.append(stack[stack.index(dep):] + [dep])
      elif dep not in state:
        visit(dep)
    stack.pop()
    state[node] = 'done'

  for node in sorted(edges):
    if node not in state:
      visit(node)
  # A package's __init__ re-exporting its submodules is not a cycle of code.
  cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + '.') for m in c)
            and not any(m.startswith(n + '.') for m, n in zip(c, c[1:]))]
  assert not cycles, '\n'.join(' -> '.join(c) for c in cycles)
