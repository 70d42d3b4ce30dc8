"""Replacing a whole folder by a new one in a single step (`convert_torch --overwrite`).

The new folder is built completely beside the old one (`.NAME.new-PID-XXXX`, same file system),
then swapped in. What is atomic is one rename(2); POSIX cannot rename a folder onto a non-empty
one, so the swap is two renames, then a deletion:

  1. DEST -> .NAME.old          (the old folder, whole, aside)
  2. .NAME.new-... -> DEST      (the new folder, whole, in)
  3. .NAME.old deleted

A reader therefore sees the old folder, the new folder, or (between 1 and 2) no folder at all,
never a mix of old and new files. If the second rename raises, the old folder is renamed back
before the error goes on. A process killed between 1 and 2 leaves `.NAME.old` beside a missing
DEST: `recover(DEST)`, which the commands call before anything else, renames it back (all-old,
nothing lost); killed between 2 and 3, DEST is already the new folder and `recover` deletes
`.NAME.old`. Entries of the old folder that the command does not replace are carried into the
new folder as hard links (copies where the file system has none) before the swap. Nothing else
may write into DEST while it is replaced.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import stat
import tempfile
from typing import Iterable, Optional


def aside_path(dest: pathlib.Path) -> pathlib.Path:
  """Where the old folder waits between the two renames."""
  return dest.parent / f'.{dest.name}.old'


def _pid_alive(pid: int) -> bool:
  if pid == os.getpid():
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def recover(dest: str | os.PathLike) -> Optional[str]:
  """Finishes or undoes a replacement of `dest` that a killed process left half done; removes
  its unfinished new folders. Returns what was done (None: nothing to do)."""
  dest = pathlib.Path(dest)
  if not dest.parent.is_dir():
    return None
  for stale in dest.parent.glob(f'.{dest.name}.new-*'):
    pid = stale.name[len(f'.{dest.name}.new-'):].split('-', 1)[0]
    if pid.isdigit() and not _pid_alive(int(pid)):
      shutil.rmtree(stale, ignore_errors=True)
  old = aside_path(dest)
  if not old.exists():
    return None
  if dest.exists():  # Killed after the new folder moved in: the old one is no longer needed.
    shutil.rmtree(old)
    return f'removed {old}, left by a replacement of {dest} that had finished'
  old.rename(dest)  # Killed between the renames: the previous folder, whole, goes back.
  return f'put back {dest} from {old}, left by an interrupted replacement'


def staging(dest: str | os.PathLike) -> pathlib.Path:
  """A new empty folder beside `dest` to build the replacement in, with `dest`'s permissions
  (or the umask's for a new `dest`)."""
  dest = pathlib.Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  new = pathlib.Path(tempfile.mkdtemp(prefix=f'.{dest.name}.new-{os.getpid()}-', dir=dest.parent))
  if dest.is_dir():
    mode = stat.S_IMODE(dest.stat().st_mode)
  else:
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o777 & ~umask
  os.chmod(new, mode)
  return new


def _link_or_copy(src: str, dst: str) -> None:
  try:
    os.link(src, dst, follow_symlinks=False)
  except OSError:  # A file system without hard links.
    shutil.copy2(src, dst, follow_symlinks=False)


def carry_over(dest: str | os.PathLike, new: str | os.PathLike, skip: Iterable[str]) -> None:
  """Adds to `new` the entries of `dest` not named in `skip` (what the command does not
  replace), as hard links."""
  dest, new, skip = pathlib.Path(dest), pathlib.Path(new), set(skip)
  for entry in dest.iterdir():
    if entry.name in skip:
      continue
    if entry.is_dir() and not entry.is_symlink():
      shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=_link_or_copy)
    else:
      _link_or_copy(str(entry), str(new / entry.name))


def _move_in(new: pathlib.Path, dest: pathlib.Path) -> None:
  """Step 2: the new folder takes `dest`'s name."""
  new.rename(dest)


def replace(new: str | os.PathLike, dest: str | os.PathLike) -> None:
  """Makes the complete folder `new` (from `staging`) be `dest`, in the steps of the module
  docstring. Call `recover(dest)` first."""
  new, dest = pathlib.Path(new), pathlib.Path(dest)
  if not dest.exists():
    _move_in(new, dest)
    return
  old = aside_path(dest)
  dest.rename(old)
  try:
    _move_in(new, dest)
  except BaseException:
    old.rename(dest)
    raise
  shutil.rmtree(old)
