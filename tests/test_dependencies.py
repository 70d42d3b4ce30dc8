"""pyproject.toml declares every package ssen_jax imports; inference needs only the base set.

* Every third-party top-level module imported anywhere in ssen_jax/ (ast, lazy imports included)
  maps to a distribution declared in `dependencies` or an extra.
* The inference side (the `infer` command and `ssen_jax.inference`, with everything they import
  at module level) imports only base dependencies, checked on the source and, in a fresh process,
  on `sys.modules`: no TensorFlow, TFDS, clu, TensorBoard, torch or scikit-image.
"""
import ast
import pathlib
import re
import subprocess
import sys
import tomllib

from conftest import REPO_ROOT

PACKAGE = pathlib.Path(REPO_ROOT) / 'ssen_jax'
# Import name -> distribution name, where they differ (else '_' -> '-').
DISTRIBUTION = {
    'PIL': 'pillow', 'skimage': 'scikit-image', 'ml_collections': 'ml-collections',
    'absl': 'absl-py', 'orbax': 'orbax-checkpoint', 'tensorflow': 'tensorflow-cpu',
    'jaxlib': 'jax',  # jaxlib comes with (and is pinned by) the jax distribution.
}
INFERENCE_MODULES = ('ssen_jax.infer', 'ssen_jax.inference.restore', 'ssen_jax.inference.tiling',
                     'ssen_jax.inference.offsets', 'ssen_jax.data.images')
NOT_FOR_INFERENCE = ('tensorflow', 'tensorflow_datasets', 'clu', 'tensorboard', 'torch',
                     'torchvision', 'skimage')


def _requirement_name(req: str) -> str:
  return re.split(r'[\s\[<>=!~;]', req, maxsplit=1)[0].lower().replace('_', '-')


def _declared() -> dict[str, set[str]]:
  project = tomllib.loads((pathlib.Path(REPO_ROOT) / 'pyproject.toml').read_text())['project']
  groups = {'base': {_requirement_name(r) for r in project['dependencies']}}
  for extra, reqs in project['optional-dependencies'].items():
    groups[extra] = {_requirement_name(r) for r in reqs}
  return groups


def _module_path(module: str) -> pathlib.Path | None:
  path = PACKAGE.parent.joinpath(*module.split('.'))
  for candidate in (path.with_suffix('.py'), path / '__init__.py'):
    if candidate.exists():
      return candidate
  return None


def _imports(path: pathlib.Path, module_level_only: bool = False) -> set[str]:
  """Absolute names imported by the file (relative imports resolved)."""
  tree = ast.parse(path.read_text(), str(path))
  nodes = tree.body if module_level_only else list(ast.walk(tree))
  names = set()
  package = '.'.join(path.relative_to(PACKAGE.parent).with_suffix('').parts[:-1])
  for node in nodes:
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
        base = '.'.join(anchor + ([base] if base else []))
      names.add(base)
      names.update(f'{base}.{a.name}' for a in node.names)
  return names


def _third_party(names: set[str]) -> set[str]:
  stdlib = set(sys.stdlib_module_names) | {'__future__'}
  return {n.split('.')[0] for n in names} - stdlib - {'ssen_jax'}


def _distribution(root: str) -> str:
  return DISTRIBUTION.get(root, root.replace('_', '-').lower())


def test_every_imported_package_is_declared():
  declared = set().union(*_declared().values())
  missing = {}
  for path in PACKAGE.rglob('*.py'):
    for root in _third_party(_imports(path)):
      if _distribution(root) not in declared:
        missing.setdefault(f'{root} ({_distribution(root)})', []).append(
            str(path.relative_to(PACKAGE.parent)))
  assert not missing, f'imported but not in pyproject.toml: {missing}'


def test_test_extra_includes_train_and_pins_torch():
  project = tomllib.loads((pathlib.Path(REPO_ROOT) / 'pyproject.toml').read_text())['project']
  test = project['optional-dependencies']['test']
  assert 'ssen_jax[train]' in test
  assert 'torch==2.14.1' in test and 'torchvision==0.29.1' in test


def test_inference_imports_only_the_base_set_at_module_level():
  """Static closure over module-level imports (a function's lazy import runs only when called)."""
  base = _declared()['base']
  seen, todo, outside = set(), list(INFERENCE_MODULES), {}
  while todo:
    module = todo.pop()
    if module in seen:
      continue
    seen.add(module)
    path = _module_path(module)
    if path is None:
      continue
    names = _imports(path, module_level_only=True)
    todo += [n for n in names if n.startswith('ssen_jax')]
    for root in _third_party(names):
      if _distribution(root) not in base:
        outside.setdefault(root, []).append(module)
  assert not outside, f'inference imports beyond the base dependencies: {outside}'


def test_inference_process_loads_no_training_stack():
  code = ('import sys, time\n'
          't = time.perf_counter()\n'
          + ''.join(f'import {m}\n' for m in INFERENCE_MODULES) +
          'dt = time.perf_counter() - t\n'
          f'bad = sorted({{m.split(".")[0] for m in sys.modules}} & set({NOT_FOR_INFERENCE!r}))\n'
          'print(bad, round(dt, 2))\n')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split()[0] == '[]', out.stdout


def test_train_extra_has_one_installable_tensorflow_on_each_platform():
  """tensorflow-cpu publishes x86-64 wheels only: macOS on Apple silicon and Linux aarch64 get
  the full `tensorflow`, and every platform gets exactly one of the two."""
  from packaging.requirements import Requirement
  project = tomllib.loads((pathlib.Path(REPO_ROOT) / 'pyproject.toml').read_text())['project']
  tf = [Requirement(r) for r in project['optional-dependencies']['train']
        if _requirement_name(r) in ('tensorflow', 'tensorflow-cpu')]
  platforms = {'linux-x86_64': ('Linux', 'x86_64'), 'windows': ('Windows', 'AMD64'),
               'linux-aarch64': ('Linux', 'aarch64'), 'macos-arm64': ('Darwin', 'arm64')}
  chosen = {}
  for name, (system, machine) in platforms.items():
    env = {'platform_machine': machine, 'platform_system': system}
    chosen[name] = [r.name for r in tf if r.marker is None or r.marker.evaluate(env)]
  assert chosen == {'linux-x86_64': ['tensorflow-cpu'], 'windows': ['tensorflow-cpu'],
                    'linux-aarch64': ['tensorflow'], 'macos-arm64': ['tensorflow']}, chosen


def test_import_leaves_the_environment_alone_until_tensorflow_is_imported():
  """`import ssen_jax` and the inference side set no environment variable; the modules that
  import TensorFlow (here the input pipeline) set its two defaults first, a user's value kept."""
  code = ('import os, sys\n'
          'before = dict(os.environ)\n'
          'import ssen_jax, ssen_jax.inference.api\n'
          'assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n'
          'import ssen_jax.data.input_pipeline\n'
          'assert "tensorflow" in sys.modules\n'
          'print(os.environ["TF_ENABLE_ONEDNN_OPTS"], os.environ["TF_CPP_MIN_LOG_LEVEL"])\n')
  env = {k: v for k, v in __import__('os').environ.items()
         if k not in ('TF_ENABLE_ONEDNN_OPTS', 'TF_CPP_MIN_LOG_LEVEL')}
  env['TF_CPP_MIN_LOG_LEVEL'] = '1'  # The user's own value wins.
  out = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO_ROOT, capture_output=True,
                       text=True, check=True).stdout.split()
  assert out == ['0', '1'], out
