"""Orbax checkpoints under `{workdir}/checkpoints`: asynchronous, every N steps, on preemption and
at the end; the latest K are kept plus the best by evaluation PSNR (MaxText's pattern).

The config of the run is written beside them as `config.json`, so that `ssen_jax.inference.restore`
rebuilds the model from the workdir alone (what `infer`, `evaluate`, `visualize_offsets` and the GAN
stage's initialisation use).
"""
from __future__ import annotations

import json
import os
import signal
from typing import Any, Dict, Optional

import jax
import ml_collections
from etils import epath
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

CONFIG_FILE = 'config.json'
BEST_METRIC = 'eval_psnr'


PathLike = str | os.PathLike


def workdir_path(workdir: PathLike) -> epath.Path:
  """The workdir as a path that also understands gs:// (TPU VMs keep workdirs in buckets)."""
  path = epath.Path(workdir)
  return path if '://' in str(workdir) else path.absolute()


def checkpoint_dir(workdir: PathLike) -> epath.Path:
  return workdir_path(workdir) / 'checkpoints'


def create_manager(workdir: PathLike, *, save_every: int, keep: int,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager that saves every `save_every` steps and on preemption.

  Keeps the `keep` latest checkpoints and, in addition, the one with the highest eval PSNR (saves
  made at evaluation steps carry that metric).
  """
  preservation = policies.AnyPreservationPolicy([
      policies.LatestN(n=keep),
      policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=1,
                     keep_checkpoints_without_metrics=False),
  ])
  saving = policies.AnySavePolicy([
      policies.FixedIntervalPolicy(save_every),
      policies.PreemptionCheckpointingPolicy(),
  ])
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=not read_only, preservation_policy=preservation,
      save_decision_policy=saving, read_only=read_only, create=not read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False,
         metrics: Optional[Dict[str, float]] = None) -> bool:
  """Saves (asynchronously) if the policy, a preemption or `force` asks for it."""
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                      metrics=metrics, force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: Optional[int] = None):
  """Restores the state at `step` (default: latest) onto the shardings of `abstract_state`."""
  step = manager.latest_step() if step is None else step
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  return restored['state']


def restore_params(workdir: PathLike, abstract_params: Any,
                   step: Optional[int] = None, best: bool = False):
  """Only the generator parameters of a run (the latest, a given step, or the best).

  The optimiser and discriminator states in the checkpoint are not read (Orbax partial restore),
  so restoring needs no optimiser: `abstract_params` is the tree of `jax.ShapeDtypeStruct`s
  (with shardings) that `jax.eval_shape` gives for the model's `init`.

  Returns:
    (params, step).
  """
  with create_manager(workdir, save_every=1, keep=1, read_only=True) as manager:
    if step is None:
      step = manager.best_step() if best else manager.latest_step()
      if step is None:
        step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {checkpoint_dir(workdir)}')
    item = {'params': abstract_params}
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
    return restored['state']['params'], step


def checkpoint_steps(workdir: PathLike) -> list[int]:
  """Steps saved under `{workdir}/checkpoints` (sorted), read from the folder names."""
  ckpt = checkpoint_dir(workdir)
  if not ckpt.is_dir():
    return []
  return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit())


def write_config(workdir: PathLike, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() == 0:
    path = workdir_path(workdir) / CONFIG_FILE
    tmp = workdir_path(workdir) / (CONFIG_FILE + '.tmp')
    tmp.write_text(config.to_json_best_effort(indent=2))
    tmp.replace(path)


def read_config(workdir: PathLike) -> ml_collections.ConfigDict:
  path = workdir_path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f'{workdir} is not a training workdir (no {CONFIG_FILE})')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


class PreemptionFlag:
  """Turns SIGTERM into a flag checked between steps (together with JAX's preemption sync point
  that `CheckpointManager.reached_preemption` consults on multi-host runs)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. a notebook worker): rely on JAX's sync point.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
