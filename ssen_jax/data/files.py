"""Atomic file writes: a temporary file beside the destination, then one rename.

An existing file is replaced whole or not at all, and a failed write leaves nothing behind. The
file gets the permissions a plain `open` would give (mkstemp's 0600 is not kept).
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import IO, Any


def write_atomic(path: str | os.PathLike, write: Callable[[IO], None], *,
                 binary: bool = False) -> None:
  """Calls `write(f)` on a temporary file in `path`'s folder, then renames it over `path`.

  Raises:
    whatever `write` or the file system raises (OSError, TypeError, ...); nothing is left behind.
  """
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
  try:
    with os.fdopen(fd, 'wb' if binary else 'w') as f:
      write(f)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  write_atomic(path, lambda f: f.write(text))


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
  """`value` as indented JSON with a final newline."""
  write_text_atomic(path, json.dumps(value, indent=2) + '\n')
