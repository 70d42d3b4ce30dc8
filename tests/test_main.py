"""`python -m ssen_jax.main` turns mistakes known before any compute into one line and exit 1."""
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _main(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, '-m', 'ssen_jax.main', '--config=configs/refsr.py:tiny',
                         *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('override, expected', [
    ('--config.batch_sise=16', 'error: bad --config override: batch_sise; Did you mean '
                               '"batch_size" instead of "batch_sise"?'),
    ('--config.batch_size=abc', 'error: flag --config.batch_size=abc: invalid literal'),
])
def test_config_override_mistake_is_one_line(tmp_path, override, expected):
  result = _main(f'--workdir={tmp_path}', override)
  assert result.returncode == 1
  assert result.stderr.strip().startswith(expected), result.stderr
  assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unwritable_workdir_is_one_line(tmp_path):
  (tmp_path / 'file').write_text('')
  result = _main(f'--workdir={tmp_path / "file" / "w"}')
  assert result.returncode == 1
  assert result.stderr.strip() == (f'error: --workdir {tmp_path / "file" / "w"} is not a '
                                   'writable folder: Not a directory'), result.stderr
