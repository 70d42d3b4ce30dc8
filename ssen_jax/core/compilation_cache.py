"""JAX's persistent compilation cache for the tools (infer, evaluate, visualize_offsets).

On by default in `~/.cache/ssen_jax/jax_cache` (`$XDG_CACHE_HOME/ssen_jax/jax_cache` when set);
`SSEN_JAX_CACHE_DIR` or the tools' --compilation_cache_dir choose another folder,
--nocompilation_cache turns it off. A `JAX_COMPILATION_CACHE_DIR` set by the user is left to JAX.
Executables that compile in under a second are not cached (JAX's
`jax_persistent_cache_min_compile_time_secs`).
"""
from __future__ import annotations

import os
import pathlib
from typing import Optional

ENV = 'SSEN_JAX_CACHE_DIR'


def default_dir() -> pathlib.Path:
  if os.environ.get(ENV):
    return pathlib.Path(os.environ[ENV])
  base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(base) / 'ssen_jax' / 'jax_cache'


def enable(path: Optional[str | os.PathLike] = None) -> tuple[Optional[str], str]:
  """Turns the cache on; returns (folder or None, a note for the user)."""
  import jax  # pylint: disable=import-outside-toplevel
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return os.environ['JAX_COMPILATION_CACHE_DIR'], 'from JAX_COMPILATION_CACHE_DIR'
  folder = pathlib.Path(path) if path else default_dir()
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    return None, f'compilation cache off: cannot create {folder} ({e.strerror or e})'
  jax.config.update('jax_compilation_cache_dir', str(folder))
  return str(folder), f'compilation cache {folder}'
