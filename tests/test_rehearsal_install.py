"""The cheap part of launch/rehearse.py, for CI: each launcher's install command installs every
module that `python -m ssen_jax.main --config configs/refsr.py` imports. Nothing is installed:
the command is read from the launcher's dry run, the set it resolves to from pyproject.toml and the
installed distributions' metadata, and the trainer's imports from its source (the import closure of
ssen_jax.main and the config file).
"""
import ast
import importlib.metadata
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from conftest import REPO_ROOT

LAUNCH = REPO_ROOT / 'launch'
PYPROJECT = tomllib.loads((REPO_ROOT / 'pyproject.toml').read_text())
PROJECT = PYPROJECT['project']['name']
TPU = ['--name', 'ssen-test', '--zone', 'us-central2-b']


def _norm(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def install_words(script: str, *args: str) -> list[str]:
  """The requirements of the `uv pip install` in a launcher's dry run, e.g. ['-e', '.[train]',
  'jax[tpu]']."""
  proc = subprocess.run(['bash', str(LAUNCH / script), *args, '--dry_run'], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=30,
                        env={'PATH': '/usr/bin:/bin', 'HOME': '/nonexistent'})
  assert proc.returncode == 0, proc.stderr
  scripts = [w for line in proc.stdout.splitlines() if not line.startswith('#')
             for w in shlex.split(line) if 'uv pip install' in w]
  assert len(scripts) == 1, proc.stdout
  shell = scripts[0].removeprefix('--command=')
  command = shell[shell.index('uv pip install'):].split('&&')[0]
  words = shlex.split(command)[3:]
  return words[words.index('--python') + 2:] if '--python' in words else words


def resolve(words: list[str]) -> set[str]:
  """The distributions `uv pip install WORDS` installs, as far as this environment's metadata
  tells: the project's base set and named extras, the other requirements, and what they need."""
  wanted: list[Requirement] = []
  for word in words:
    if word == '-e':
      continue
    if word.startswith('.'):  # The checkout itself, with its extras.
      wanted.append(Requirement(f'{PROJECT}{word[1:]}'))
    else:
      wanted.append(Requirement(word))
  found, extras_seen = set(), set()
  while wanted:
    req = wanted.pop()
    name = _norm(req.name)
    if name == _norm(PROJECT):
      for extra in ['', *sorted(req.extras)]:
        if extra in extras_seen:
          continue
        extras_seen.add(extra)
        deps = (PYPROJECT['project']['dependencies'] if not extra
                else PYPROJECT['project']['optional-dependencies'][extra])
        wanted.extend(Requirement(d) for d in deps)
      continue
    key = (name, frozenset(req.extras))
    if key in found:
      continue
    found.add(key)
    try:
      requires = importlib.metadata.requires(req.name) or []
    except importlib.metadata.PackageNotFoundError:
      continue  # An accelerator's package (libtpu, CUDA wheels): not installed on this machine.
    for line in requires:
      dep = Requirement(line)
      if dep.marker is None or any(dep.marker.evaluate({'extra': e})
                                   for e in [''] + sorted(req.extras)):
        wanted.append(dep)
  return {name for name, _ in found}


def provided_modules(distributions: set[str]) -> set[str]:
  """Top-level modules of the distributions (from the installed ones' file lists)."""
  modules = set()
  for module, dists in importlib.metadata.packages_distributions().items():
    if any(_norm(d) in distributions for d in dists):
      modules.add(module)
  return modules


def _module_file(module: str) -> pathlib.Path | None:
  path = REPO_ROOT.joinpath(*module.split('.'))
  for candidate in (path.with_suffix('.py'), path / '__init__.py'):
    if candidate.exists():
      return candidate
  return None


def _optional(node: ast.AST, parents: dict) -> bool:
  """Whether an import sits in a `try` that catches ImportError (an optional dependency)."""
  while node in parents:
    node = parents[node]
    if isinstance(node, ast.Try) and any(
        h.type is not None and 'ImportError' in ast.unparse(h.type) for h in node.handlers):
      return True
  return False


def trainer_imports() -> set[str]:
  """Top-level third-party modules imported by ssen_jax.main's import closure (every import in
  the modules it reaches, at module level or inside functions, except optional ones) and by the
  config file it loads."""
  todo, seen, third_party = [REPO_ROOT / 'ssen_jax' / 'main.py', REPO_ROOT / 'configs' /
                             'refsr.py'], set(), set()
  while todo:
    path = todo.pop()
    if path in seen:
      continue
    seen.add(path)
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = '.'.join(path.relative_to(REPO_ROOT).with_suffix('').parts)
    if path.name != '__init__.py':
      package = package.rpartition('.')[0]
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] +
                          ([base] if base else []))
        names = [base] + [f'{base}.{a.name}' for a in node.names]
      else:
        continue
      for name in names:
        top = name.split('.')[0]
        if top in ('ssen_jax', 'configs'):
          parts = name.split('.')
          for i in range(1, len(parts) + 1):  # A package's __init__ runs too.
            if (file := _module_file('.'.join(parts[:i]))) is not None:
              todo.append(file)
        elif top and top not in sys.stdlib_module_names and top != '__future__' and \
            not _optional(node, parents):
          third_party.add(top)
  return third_party


LAUNCHERS = {
    'tpu_vm.sh install': ('tpu_vm.sh', 'install', *TPU),
    'gpu_host.sh --install': ('gpu_host.sh', '--install'),
    'slurm_submit.sh --install': ('slurm_submit.sh', '--install'),
}


@pytest.mark.parametrize('launcher', list(LAUNCHERS))
def test_install_command_provides_every_module_the_trainer_imports(launcher):
  words = install_words(*LAUNCHERS[launcher])
  assert words[:2] == ['-e', '.[train]'] and words[2] in ('jax[tpu]', 'jax[cuda12]'), words
  missing = trainer_imports() - provided_modules(resolve(words))
  assert not missing, f'{launcher} installs {words}, which lacks {sorted(missing)}'


def test_the_check_sees_what_the_base_set_lacks():
  """The check is not vacuous: the install line the launchers had (`-e . 'jax[tpu]'`, no train
  extra) misses the trainer's training modules, and torch is never needed."""
  needed = trainer_imports()
  assert {'jax', 'flax', 'optax', 'clu', 'tensorflow', 'ml_collections'} <= needed, needed
  assert 'torch' not in needed
  missing = needed - provided_modules(resolve(['-e', '.', 'jax[tpu]']))
  assert {'clu', 'tensorflow', 'tensorflow_datasets'} <= missing, missing  # optax comes with flax.
  assert 'torch' not in resolve(['-e', '.[train]', 'jax'])


def test_the_jax_requirement_can_be_replaced():
  """SSEN_JAX_REQUIREMENT replaces the accelerator's JAX build (launch/rehearse.py, CUDA 13)."""
  proc = subprocess.run(['bash', str(LAUNCH / 'gpu_host.sh'), '--install', '--dry_run'],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
                        env={'PATH': '/usr/bin:/bin', 'SSEN_JAX_REQUIREMENT': 'jax[cuda13]'})
  assert proc.returncode == 0, proc.stderr
  assert "-e '\\''.[train]'\\'' '\\''jax[cuda13]'\\''" in proc.stdout
