"""Config files: loading `path/to/config.py[:variants]` and parsing the variant string.

A config file defines `get_config(arg=None) -> ml_collections.ConfigDict`; `arg` is what follows
the colon, a comma-separated list of variants (`configs/refsr.py:demo,baseline`), as
`ml_collections.config_flags` passes it to `python -m ssen_jax.main --config ...`. The tools that
take a config spec (`infer --config`, `convert_torch --config`, `benchmark --config`) load it here,
the same way. The configs themselves are files, not an installed package: a config that builds on
another loads its sibling by path (`load_sibling`).
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import types
from collections.abc import Iterable

import ml_collections


class ConfigError(ValueError):
  """A config spec that cannot be loaded (missing file, no get_config, get_config failing)."""


def parse_variants(arg: str | None, known: Iterable[str]) -> frozenset[str]:
  """The variants of a comma-separated `arg`, all of which must be `known`.

  Args:
    arg: e.g. 'demo,baseline'; None or '' for none. Blanks around names are ignored.
    known: the variants the config understands.

  Raises:
    ValueError: an unknown variant (the message lists the known ones).
  """
  variants = frozenset(v.strip() for v in (arg or '').split(',') if v.strip())
  unknown = variants - set(known)
  if unknown:
    raise ValueError(f'unknown variant(s) {sorted(unknown)}; known: {sorted(known)}')
  return variants


def split_spec(spec: str) -> tuple[pathlib.Path, str | None]:
  """'dir/x.py:a,b' -> (Path('dir/x.py'), 'a,b'); 'dir/x.py' -> (Path('dir/x.py'), None)."""
  head, sep, tail = str(spec).rpartition(':')
  if sep and head.endswith('.py'):
    return pathlib.Path(head), tail
  return pathlib.Path(spec), None


def load_module(path: str | os.PathLike) -> types.ModuleType:
  """Executes a Python file as a fresh module (not registered in sys.modules)."""
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(f'_ssen_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sibling(file: str | os.PathLike, name: str) -> types.ModuleType:
  """The config module `name`.py in the folder of `file` (a config's own `__file__`)."""
  return load_module(pathlib.Path(file).with_name(f'{name}.py'))


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` by calling its `get_config(arg)`.

  Relative paths are relative to the working directory (the repository root in the README's
  commands), as for `python -m ssen_jax.main --config`.

  Raises:
    ConfigError: missing file, no get_config, or get_config failing (e.g. an unknown variant).
  """
  file, arg = split_spec(spec)
  if not file.is_file():
    raise ConfigError(f'config file {file} does not exist')
  try:
    module = load_module(file)
  except Exception as e:  # pylint: disable=broad-except  # User code: report, do not crash.
    raise ConfigError(f'config {spec}: {type(e).__name__}: {e}') from None
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'config file {file} defines no get_config()')
  try:
    return module.get_config(arg) if arg is not None else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'config {spec}: {type(e).__name__}: {e}') from None
