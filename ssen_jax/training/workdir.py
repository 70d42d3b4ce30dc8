"""Training workdirs made from given parameters (imported PyTorch weights).

`write_workdir` writes what `python -m ssen_jax.main` writes: `config.json` and an Orbax checkpoint
of the whole training state, here holding the given generator parameters with fresh optimiser
(and, for GAN configs, discriminator) states. `main` can therefore fine-tune such a workdir, and
every tool restores it like any other (`ssen_jax.inference.restore`). `import_pth` is what
`python -m ssen_jax.convert_torch` does.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from ssen_jax.core import checkpointing
from ssen_jax.core import config as config_lib
from ssen_jax.core import sharding
from ssen_jax.data_prep import folder_swap
from ssen_jax.inference import restore
from ssen_jax.interop import convert
from ssen_jax.training import steps


def write_workdir(workdir: str | os.PathLike, config: ml_collections.ConfigDict, params: Any,
                  *, step: int = 0) -> None:
  """Writes config.json and an Orbax checkpoint of the state starting from `params` at `step`.

  Args:
    workdir: the folder to write (created if needed).
    config: the full config; its architecture must match `params`.
    params: the generator's flax parameters (numpy or jax arrays).
    step: the checkpoint step.
  """
  trainer = steps.Trainer(config, sharding.create_mesh(jax.local_devices()[:1]))
  state = trainer.init_state(config.seed, params=params)
  state['step'] = jax.device_put(np.asarray(step, np.int32), state['step'].sharding)
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  checkpointing.write_config(workdir, config)
  with checkpointing.create_manager(workdir, save_every=1, keep=1) as manager:
    checkpointing.save(manager, step, state, force=True)
    manager.wait_until_finished()


def _count(tree) -> int:
  if isinstance(tree, Mapping):
    return sum(_count(v) for v in tree.values())
  return int(np.size(tree))


def _is_training_workdir(path: pathlib.Path) -> bool:
  """TensorBoard logs, a config history or checkpoints of steps other than 0 (conversions save
  step 0 only)."""
  if (any(path.glob('events.out.tfevents.*'))
      or (path / checkpointing.CONFIG_HISTORY_FILE).exists()):
    return True
  return any(step != 0 for step in checkpointing.checkpoint_steps(path))


def _check_out_writable(out_dir: pathlib.Path) -> None:
  """Raises ConversionError unless `out_dir` can be created (or written) here; writes nothing
  that stays: a probe folder in the nearest existing ancestor is made and removed."""
  folder = out_dir if out_dir.is_dir() else out_dir.parent
  while not folder.exists() and folder != folder.parent:
    folder = folder.parent
  try:
    if not folder.is_dir():
      raise NotADirectoryError(20, 'Not a directory')
    os.rmdir(tempfile.mkdtemp(prefix='.probe-', dir=folder))
  except OSError as e:
    raise convert.ConversionError(
        f'--out_dir {out_dir} is not writable: {e.strerror or e} (at {folder})') from None


def import_pth(pth: str, config_spec: str, out: str, *, overwrite: bool = False) -> str:
  """Converts a PyTorch .pth into the training workdir `out`; returns a summary line.

  The workdir is built complete in a folder beside `out` and swapped in as one folder
  (`data_prep.folder_swap`: `out` is either all-old, all-new, or, only while killed between two
  renames, absent with the old one whole in `.NAME.old`, which the next run puts back first).
  With `overwrite`, the new `out` holds a new config.json and checkpoints/ and the old folder's
  other entries (hard links). A training workdir (training checkpoints or logs) is never
  overwritten.

  Raises:
    convert.ConversionError, config_lib.ConfigError: bad input (the message may list several
      problems), or `out` cannot be written (checked first); nothing is written.
    ImportError: torch is not installed.
  """
  out_dir = pathlib.Path(os.path.realpath(out))  # A symlinked --out_dir: its target is replaced.
  folder_swap.recover(out_dir)  # A replacement killed half-way: the old folder comes back.
  if out_dir.exists() and not out_dir.is_dir():
    raise convert.ConversionError(f'--out_dir {out} exists and is not a folder')
  if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
    raise convert.ConversionError(f'--out_dir {out} is not empty; pass --overwrite to replace '
                                  'its config.json and checkpoints/')
  if out_dir.is_dir() and _is_training_workdir(out_dir):
    raise convert.ConversionError(
        f'--out_dir {out} is a training workdir (it has training checkpoints or logs); '
        '--overwrite would destroy the run: choose another --out_dir')
  _check_out_writable(out_dir)  # Before the state_dict is read and converted.
  config = config_lib.load_config(config_spec)
  state_dict = convert.read_state_dict(pth)
  try:
    params = restore.params_from_state_dict(state_dict, config)
  except convert.ConversionError as e:
    raise convert.ConversionError(
        f'{pth} does not fit the architecture of {config_spec}: {e}') from None
  tmp = folder_swap.staging(out_dir)
  try:
    write_workdir(tmp, config, params)
    if out_dir.is_dir():  # Entries other than config.json and checkpoints/ stay.
      folder_swap.carry_over(out_dir, tmp, skip=('checkpoints', checkpointing.CONFIG_FILE))
    folder_swap.replace(tmp, out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return (f'wrote {out_dir}: {config.model.variant} x{config.model.scale} from {pth} '
          f'({_count(params):,} parameters, step 0)')
