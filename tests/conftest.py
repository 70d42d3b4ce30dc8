"""Shared pytest setup.

torch and torchvision must be imported before tensorflow in one process: the other order crashes
with a segmentation fault on these machines (tensorflow-cpu 2.21, torch 2.14.1, torchvision 0.29.1;
see docs/conventions.md). Importing them here, first, makes every test module safe whatever it imports.
"""
import os
import pathlib
import tempfile

# Eight simulated CPU devices for the sharding tests (must precede the first jax import). Tests
# that do not build a mesh run on device 0 as usual.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The tools' persistent compilation cache (on by default, ~/.cache/ssen_jax) goes to a temporary
# folder: tests never write into the real home. Subprocesses inherit it.
os.environ.setdefault('SSEN_JAX_CACHE_DIR', tempfile.mkdtemp(prefix='ssen_jax_test_cache-'))

try:  # The parity tests need torch; the rest of the suite does not.
  import torch  # noqa: F401
  import torchvision  # noqa: F401
  torch.set_num_threads(2)
except ImportError:  # pragma: no cover - the test extra installs both.
  pass

import jax
import pytest

from ssen_jax.core import config as config_lib

# The test process uses that cache too, for every program however fast it compiles: the many
# tests that build the same tiny model (same config, same shapes, same devices) compile its init,
# train and SR steps once per session, and load them afterwards. `compilation_cache_env()` gives
# the trainer subprocesses the same cache.
jax.config.update('jax_compilation_cache_dir', os.environ['SSEN_JAX_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def config_module(name: str):
  """The config file configs/NAME.py as a module (the configs are files, not a package)."""
  return config_lib.load_module(REPO_ROOT / 'configs' / f'{name}.py')


def shared_dir() -> pathlib.Path:
  """The read-only `shared/` folder (Set5 etc.); `.ci/run` sets SSEN_SHARED_DIR."""
  return pathlib.Path(os.environ.get('SSEN_SHARED_DIR', REPO_ROOT.parent / 'shared'))


@pytest.fixture(scope='session')
def set5_dir() -> pathlib.Path:
  path = shared_dir() / 'datasets' / 'Set5'
  if not path.is_dir():
    raise FileNotFoundError(f'Set5 not found at {path}; set SSEN_SHARED_DIR to the shared/ folder.')
  return path


def compilation_cache_env() -> dict:
  """Environment for `python -m ssen_jax.main` subprocesses (which enable no cache of their own)
  that makes them use the session's compilation cache, like this process."""
  return {'JAX_COMPILATION_CACHE_DIR': os.environ['SSEN_JAX_CACHE_DIR'],
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
