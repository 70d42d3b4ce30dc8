"""Orbax checkpoints under `{workdir}/checkpoints`: asynchronous, every N steps, on preemption and
at the end; the latest K are kept plus the best by evaluation PSNR (MaxText's pattern).

The config of the run is written beside them as `config.json`, so that `ssen_jax.inference.restore`
rebuilds the model from the workdir alone (what `infer`, `evaluate`, `visualize_offsets` and the GAN
stage's initialisation use).
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import time
from typing import Any, Dict, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

CONFIG_FILE = 'config.json'
CONFIG_HISTORY_FILE = 'config_history.json'
BEST_METRIC = 'eval_psnr'


PathLike = str | os.PathLike


class CorruptCheckpointError(RuntimeError):
  """The latest checkpoint cannot be restored and no earlier one can replace it."""


class NoBestCheckpointError(FileNotFoundError):
  """`--best` asked for, but no checkpoint of the workdir carries an eval PSNR."""


def workdir_path(workdir: PathLike) -> epath.Path:
  """The workdir as a path that also understands gs:// (TPU VMs keep workdirs in buckets)."""
  path = epath.Path(workdir)
  return path if '://' in str(workdir) else path.absolute()


def checkpoint_dir(workdir: PathLike) -> epath.Path:
  return workdir_path(workdir) / 'checkpoints'


def best_metric(metrics: Optional[Dict[str, Any]]) -> float:
  """The ranking value of a checkpoint's saved metrics: its eval PSNR (-inf if absent or NaN)."""
  value = float((metrics or {}).get(BEST_METRIC, float('-inf')))
  return value if value == value else float('-inf')


def create_manager(workdir: PathLike, *, save_every: int, keep: int,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager that saves every `save_every` steps and on preemption.

  Keeps the `keep` latest checkpoints and, in addition, the one with the highest eval PSNR (saves
  made at evaluation steps carry that metric). `best_fn` must be set for Orbax to write the
  metrics beside each checkpoint (`checkpoints/STEP/metrics/metrics`), to read them back after a
  restart and to rank by them in `best_step()`; without it `best_step()` is `latest_step()`.
  Checkpoints saved without metrics (interval, preemption and final saves between evaluations)
  take no part in the ranking: the latest `keep` protect them.
  """
  preservation = policies.AnyPreservationPolicy([
      policies.LatestN(n=keep),
      policies.BestN(get_metric_fn=best_metric, reverse=False, n=1,
                     keep_checkpoints_without_metrics=False),
  ])
  saving = policies.AnySavePolicy([
      policies.FixedIntervalPolicy(save_every),
      policies.PreemptionCheckpointingPolicy(),
  ])
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=not read_only, preservation_policy=preservation,
      best_fn=best_metric, best_mode='max',
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


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(f'ssen_jax:{name}')


def _set_aside(folder: epath.Path, cause: str, previous: int) -> None:
  """Renames a corrupt step folder (process 0) once every host has stopped reading it."""
  aside = folder.parent / f'{folder.name}.corrupt-{time.strftime("%Y%m%d-%H%M%S")}'
  _sync('before_set_aside')
  if jax.process_index() == 0:
    folder.rename(aside)
  _sync('after_set_aside')
  logging.warning('checkpoint step %s cannot be restored (%s); set aside as %s; resuming from '
                  'step %d.', folder.name, cause, aside, previous)


def _describe(error: BaseException) -> str:
  text = str(error).splitlines()[0] if str(error) else ''
  return f'{type(error).__name__}: {text}'[:300]


def set_aside_unreadable_latest(workdir: PathLike) -> None:
  """Before a CheckpointManager opens the folder (it parses every step's metadata and metrics and
  fails on a truncated one): sets the latest step aside if one of its JSON files does not parse
  and an earlier step exists. Binary damage is found by `restore_latest_good`."""
  saved = checkpoint_steps(workdir)
  _sync('listed_steps')  # Every host has decided from the same listing before any rename.
  if not saved:
    return
  folder = checkpoint_dir(workdir) / str(saved[-1])
  cause = None
  # Two levels (STEP/_CHECKPOINT_METADATA, STEP/ITEM/_METADATA, STEP/metrics/metrics): epath
  # refuses recursive globs, which would be slow on buckets anyway.
  files = [f for d in [folder] + [p for p in folder.iterdir() if p.is_dir()]
           for f in d.iterdir() if f.name in ('_CHECKPOINT_METADATA', '_METADATA', 'metrics')]
  for f in files:
    if f.is_file():
      try:
        json.loads(f.read_text())
      except (ValueError, UnicodeDecodeError) as e:
        cause = f'{f.relative_to(folder)}: {_describe(e)}'
        break
  if cause is None:
    return
  if len(saved) < 2:
    raise CorruptCheckpointError(f'checkpoint {folder} is damaged ({cause}) and there is no '
                                 'earlier one; move it away to start afresh')
  _set_aside(folder, cause, saved[-2])


def restore_latest_good(manager: ocp.CheckpointManager, abstract_state: Any):
  """Restores the latest checkpoint; if it is corrupt or truncated and the one before restores,
  sets the latest aside (renamed `STEP.corrupt-TIME`, not deleted) with a warning.

  Only one checkpoint is ever set aside: if the previous one fails too, the cause is likely not
  the files (e.g. a code change), and the original error is raised with nothing renamed.
  """
  saved = manager.all_steps()
  latest = saved[-1]
  try:
    return restore(manager, abstract_state, latest)
  except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many kinds)
    error = e
  folder = manager.directory / str(latest)
  if len(saved) < 2:
    raise CorruptCheckpointError(
        f'checkpoint {folder} cannot be restored ({_describe(error)}) and there is no earlier '
        'one; move it away to start afresh') from error
  try:
    state = restore(manager, abstract_state, saved[-2])
  except Exception:  # pylint: disable=broad-except
    raise error from None
  _set_aside(folder, _describe(error), saved[-2])
  manager.reload()
  return state


def restore_params(workdir: PathLike, abstract_params: Any,
                   step: Optional[int] = None, best: bool = False,
                   best_or_latest: bool = False):
  """Only the generator parameters of a run (the latest, a given step, or the best).

  The optimiser and discriminator states in the checkpoint are not read (Orbax partial restore),
  so restoring needs no optimiser: `abstract_params` is the tree of `jax.ShapeDtypeStruct`s
  (with shardings) that `jax.eval_shape` gives for the model's `init`.

  Args:
    best: the checkpoint with the highest eval PSNR; NoBestCheckpointError (a FileNotFoundError)
      if none carries one.
    best_or_latest: the best, else (no evaluation was saved) the latest.

  Returns:
    (params, step).
  """
  with create_manager(workdir, save_every=1, keep=1, read_only=True) as manager:
    if step is None:
      step = manager.best_step() if best or best_or_latest else manager.latest_step()
      if step is None and best and manager.latest_step() is not None:
        raise NoBestCheckpointError(
            f'no checkpoint in {checkpoint_dir(workdir)} carries an eval PSNR (the run saved '
            'no evaluation), so there is no best one; leave out --best for the latest')
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


class ConfigChangeError(ValueError):
  """A resumed run's config differs from the one its checkpoints were trained with."""


# Fields that change the shapes or the structure of the saved state: a checkpoint cannot be
# restored under another value. Prefixes end with '.'.
SHAPE_FIELDS = ('model.', 'gan.disc_features')
# Fields whose zero-ness adds or removes parts of the state (discriminator, clipping state).
STRUCTURE_IF_ZERO = ('loss.adversarial_weight', 'optim.grad_clip_norm')
# Bookkeeping that a resumed run may change without --allow_config_change (still recorded):
# extending a run, logging, evaluation and checkpoint cadence.
FREE_FIELDS = ('num_train_steps', 'log_every_steps', 'eval_every_steps',
               'checkpoint_every_steps', 'keep_checkpoints', 'num_image_summaries')
# Fields added to the configs later, with the value that means what their absence meant: a
# config.json written before them resumes without a reported change.
ADDED_FIELDS = {'data.tfds_name': '', 'data.tfds_data_dir': '', 'data.tfds_split': 'train',
                'optim.offset_lr_multiplier': 1.0, 'loss.align_weight': 0.0,
                'model.match_radius': 0, 'model.learned_offsets': True,
                'model.match_local_radius': 0, 'model.ref_prewarp': False,
                'model.match_phases': 1,
                'data.ref_mix.far_prob': 0.0,
                'data.ref_mix.far_max': 64.0, 'data.ref_mix.far_rotate': 0.0,
                'data.ref_mix.far_zoom': 0.0}


def _flatten(tree: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def config_changes(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, tuple]:
  """{dotted field: (old, new)} for every field that differs (missing on one side: None)."""
  old, new = _flatten(old), _flatten(new)
  for field, neutral in ADDED_FIELDS.items():
    if field not in old and new.get(field) == neutral:
      old[field] = neutral
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)}


def _changes_shapes(field: str, old: Any, new: Any) -> bool:
  if any(field == f or (f.endswith('.') and field.startswith(f)) for f in SHAPE_FIELDS):
    return True
  if field == 'optim.offset_lr_multiplier':  # Only a multiplier other than 1 adds a transform.
    return (old in (None, 1.0)) != (new in (None, 1.0))
  return field in STRUCTURE_IF_ZERO and bool(old) != bool(new)


def check_resume_config(workdir: PathLike, config: ml_collections.ConfigDict, *,
                        allow_change: bool = False) -> Dict[str, tuple]:
  """Compares `config` with the `config.json` of a workdir that holds checkpoints; writes nothing.

  Returns:
    The changes ({field: (old, new)}) to record; {} for a new workdir or an identical config.

  Raises:
    ConfigChangeError: a field that changes the state's shapes differs (always refused), or other
      fields differ (outside FREE_FIELDS) and `allow_change` is False. The message names them.
  """
  path = workdir_path(workdir) / CONFIG_FILE
  if not checkpoint_steps(workdir) or not path.exists():
    return {}  # Nothing trained yet: the new config simply replaces an earlier one.
  changes = config_changes(json.loads(path.read_text()),
                           json.loads(config.to_json_best_effort()))
  describe = lambda fields: ', '.join(f'{k} ({changes[k][0]!r} -> {changes[k][1]!r})'
                                      for k in fields)
  shape = [k for k, (a, b) in changes.items() if _changes_shapes(k, a, b)]
  if shape:
    raise ConfigChangeError(
        f'{workdir} holds checkpoints of another network: {describe(shape)} differ from its '
        f'{CONFIG_FILE}; use a new --workdir (nothing was written)')
  other = [k for k in changes if k not in FREE_FIELDS]
  if other and not allow_change:
    raise ConfigChangeError(
        f'resuming {workdir} with a changed config: {describe(other)}; pass '
        f'--allow_config_change to resume with it (recorded in {CONFIG_HISTORY_FILE}) or use a '
        'new --workdir (nothing was written)')
  return changes


def record_config_change(workdir: PathLike, changes: Dict[str, tuple], step: int) -> None:
  """Appends to `config_history.json`: the changes, effective from training step `step + 1`."""
  if not changes or jax.process_index() != 0:
    return
  path = workdir_path(workdir) / CONFIG_HISTORY_FILE
  history = json.loads(path.read_text()) if path.exists() else []
  history.append({'resumed_from_step': step, 'effective_from_step': step + 1,
                  'time': datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  'changes': {k: {'old': a, 'new': b} for k, (a, b) in changes.items()}})
  tmp = workdir_path(workdir) / (CONFIG_HISTORY_FILE + '.tmp')
  tmp.write_text(json.dumps(history, indent=2))
  tmp.replace(path)


def read_config(workdir: PathLike) -> ml_collections.ConfigDict:
  path = workdir_path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f'{workdir} is not a training workdir (no {CONFIG_FILE})')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


# Exit status of a run that saved and stopped on SIGTERM (128 + SIGTERM, the shell's convention),
# distinct from a finished run's 0 and an error's 1: requeue on 143.
PREEMPTED_EXIT_CODE = 143


class PreemptionFlag:
  """SIGTERM on this host -> `requested`; decisions that all hosts must share go through JAX.

  Single process (no `jax.distributed`): the flag is the whole story, checked between steps and
  between evaluation images.

  Several processes: `jax.distributed.initialize()` installed JAX's preemption notifier as the C
  SIGTERM handler; it tells the coordination service, and `CheckpointManager.reached_preemption`
  then turns True on every host at the same step (one past the furthest host's step). This class
  keeps that: its Python handler records the signal and calls the handler it found (JAX's), so
  the notifier still sees every SIGTERM. Training steps stop on `reached_preemption` only; an
  evaluation (one host's flag is not the others') asks all hosts between images
  (`any_host_requested`) and is cut short on all of them at the same image.
  """

  def __init__(self):
    self.requested = False
    self._c_handler = None  # The handler found at entry (JAX's notifier), as a C address.
    self._installed = False
    self._previous = None  # The Python-level handler found at entry, if any.

  @staticmethod
  def _libc():
    import ctypes  # pylint: disable=import-outside-toplevel
    libc = ctypes.CDLL(None)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return libc

  def __enter__(self):
    try:
      libc = self._libc()
      current = libc.signal(signal.SIGTERM, 1)  # Reads the C handler (SIG_IGN for an instant).
      libc.signal(signal.SIGTERM, current)
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
      python_trampoline = libc.signal(signal.SIGTERM, 1)
      libc.signal(signal.SIGTERM, python_trampoline)
      # A handler neither default (0, read as None), ignore (1) nor Python's own: JAX's notifier.
      if current not in (None, 1, python_trampoline):
        self._c_handler = current
    except ValueError:  # Not the main thread (e.g. a notebook worker): rely on JAX's sync point.
      pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    if self._c_handler not in (None, 0, 1):  # SIG_DFL, SIG_IGN
      import ctypes  # pylint: disable=import-outside-toplevel
      ctypes.CFUNCTYPE(None, ctypes.c_int)(self._c_handler)(signum)

  def reached(self, manager: ocp.CheckpointManager, step: int) -> bool:
    """Whether to save `step` and stop: the same answer on every host."""
    if jax.process_count() == 1:
      return self.requested
    return manager.reached_preemption(step)

  def any_host_requested(self) -> bool:
    """Whether any host received SIGTERM (a small collective on several hosts: call it on all)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    flags = multihost_utils.process_allgather(np.asarray([self.requested], np.int32))
    return bool(np.any(flags))

  def __exit__(self, *exc):
    if self._installed:
      if self._c_handler is not None:
        self._libc().signal(signal.SIGTERM, self._c_handler)
      else:
        signal.signal(signal.SIGTERM, self._previous)
    return False
