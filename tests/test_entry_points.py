"""Every console command in pyproject.toml names a `run()` that parses the same flags as
`python -m` on the module, and every module runnable with `python -m` has one."""
import importlib
import pathlib
import shutil
import subprocess
import sys
import tomllib

from conftest import REPO_ROOT

SCRIPTS = tomllib.loads((pathlib.Path(REPO_ROOT) / 'pyproject.toml').read_text())[
    'project']['scripts']


def test_every_command_has_a_console_script():
  targets = {value.split(':')[0] for value in SCRIPTS.values()}
  legacy = {'ssen_jax.data_prep.convert'}  # A deprecated alias of tfds_build: `python -m` only.
  package = pathlib.Path(REPO_ROOT) / 'ssen_jax'
  runnable = {'.'.join(p.relative_to(REPO_ROOT).with_suffix('').parts)
              for p in package.rglob('*.py') if "if __name__ == '__main__':" in p.read_text()}
  assert 'ssen_jax.main' in runnable and 'ssen_jax.data_prep.tfds_build' in runnable, runnable
  missing = runnable - targets - legacy
  assert not missing, missing
  for name, value in SCRIPTS.items():
    module, function = value.split(':')
    assert name.startswith('ssen-') and callable(getattr(importlib.import_module(module), function))


def test_installed_script_runs_like_python_m():
  """The installed `ssen-infer` (pip install -e puts it beside the interpreter) and
  `python -m ssen_jax.infer` give the same usage error for a missing flag."""
  script = shutil.which('ssen-infer', path=str(pathlib.Path(sys.executable).parent))
  assert script, 'ssen-infer is not installed beside this Python: pip install -e .'
  runs = [subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
          for cmd in ([script], [sys.executable, '-m', 'ssen_jax.infer'])]
  assert runs[0].returncode == runs[1].returncode != 0, runs
  assert runs[0].stderr.splitlines()[-1] == runs[1].stderr.splitlines()[-1], runs
