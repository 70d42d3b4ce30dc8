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
  """The best checkpoint asked for (`--checkpoint best`, `best=True`), but no checkpoint of the
  workdir carries a finite eval PSNR."""


class CheckpointReadError(RuntimeError):
  """Restoring failed without proof that the checkpoint is damaged (an I/O or permission error,
  out of memory, ...): nothing was set aside; the run stops so that a rerun can try again."""


def workdir_path(workdir: PathLike) -> epath.Path:
  """The workdir as a path that also understands gs:// (TPU VMs keep workdirs in buckets)."""
  path = epath.Path(workdir)
  return path if '://' in str(workdir) else path.absolute()


def checkpoint_dir(workdir: PathLike) -> epath.Path:
  return workdir_path(workdir) / 'checkpoints'


def best_metric(metrics: Optional[Dict[str, Any]]) -> float:
  """The ranking value of a checkpoint's saved metrics: its eval PSNR, -inf if absent or not
  finite (NaN, +inf, -inf): a non-finite PSNR says the evaluation went wrong, never that the
  checkpoint is the best one (docs/choices.md, "Which checkpoint is the best")."""
  try:
    value = float((metrics or {}).get(BEST_METRIC, float('-inf')))
  except (TypeError, ValueError):
    return float('-inf')
  return value if np.isfinite(value) else float('-inf')


def best_step(manager: ocp.CheckpointManager) -> Optional[int]:
  """The step whose checkpoint has the highest finite eval PSNR (the latest of equal ones), or
  None when no checkpoint carries a finite one."""
  ranked = [(best_metric(manager.metrics(step)), step) for step in manager.all_steps()]
  ranked = [r for r in ranked if np.isfinite(r[0])]
  return max(ranked)[1] if ranked else None


def create_manager(workdir: PathLike, *, save_every: int, keep: int,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager that saves every `save_every` steps and on preemption.

  Keeps the `keep` latest checkpoints and, in addition, the one with the highest eval PSNR (saves
  made at evaluation steps carry that metric). `best_fn` must be set for Orbax to write the
  metrics beside each checkpoint (`checkpoints/STEP/metrics/metrics`), to read them back after a
  restart and to rank by them in `best_step()`; without it `best_step()` is `latest_step()`.
  Checkpoints saved without metrics (interval, preemption and final saves between evaluations)
  take no part in the ranking: the latest `keep` protect them.

  Raises:
    ValueError: `keep` or `save_every` below 1 (with `keep` 0 the latest checkpoint would survive
      only by the order in which Orbax prunes).
  """
  if keep < 1 or save_every < 1:
    raise ValueError(f'keep ({keep}) and save_every ({save_every}) must be at least 1')
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


def _broadcast_from_0(values: list[int]) -> list[int]:
  """Process 0's `values` on every host (small non-negative or -1 integers: steps, verdicts)."""
  if jax.process_count() == 1:
    return [int(v) for v in values]
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  out = multihost_utils.broadcast_one_to_all(np.asarray(values, np.int32))
  return [int(v) for v in np.asarray(out).reshape(-1)]


def _gather(value: int) -> list[int]:
  """Every host's `value`, in process order (a collective: call it on all hosts)."""
  if jax.process_count() == 1:
    return [int(value)]
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return [int(v) for v in np.asarray(
      multihost_utils.process_allgather(np.asarray([value], np.int32))).reshape(-1)]


# Outcomes of reading a checkpoint on one host, worst last: hosts take the worst of all of them.
_READ_OK, _DAMAGED, _READ_FAILED = 0, 1, 2
# TensorStore (the array storage under Orbax) raises ValueError for every failure, with the
# absl status code first. These codes, raised while a committed checkpoint's own files are read,
# are proof of damage: bytes that do not decode (DATA_LOSS: a truncated or garbled OCDBT
# manifest or chunk), a file the checkpoint's metadata names that is missing (NOT_FOUND), a read
# past a file's end (OUT_OF_RANGE). Other codes (PERMISSION_DENIED, UNAVAILABLE,
# RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNKNOWN, ...) are not.
DAMAGE_STATUS_CODES = ('DATA_LOSS', 'NOT_FOUND', 'OUT_OF_RANGE')


def is_damage(error: BaseException) -> bool:
  """Whether `error`, raised while a checkpoint was read, proves its files damaged.

  Proof: metadata that does not parse (json.JSONDecodeError, UnicodeDecodeError), a missing file
  (FileNotFoundError), or a TensorStore ValueError with a code of DAMAGE_STATUS_CODES. Everything
  else is not: another OSError (permission, I/O error, a stale network mount), MemoryError, an XLA
  error (out of device memory), a ValueError about shapes or structure (a code change, not the
  files), KeyboardInterrupt. Such errors leave every checkpoint where it is.
  """
  if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError)):
    return True
  if type(error) is ValueError:  # pylint: disable=unidiomatic-typecheck  (TensorStore's own)
    code = str(error).split(':', 1)[0].strip()
    return code in DAMAGE_STATUS_CODES
  return False


def _set_aside(folder: epath.Path, cause: str, previous: int) -> None:
  """Renames a damaged step folder (process 0) once every host has stopped reading it."""
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


def _read_failed(folder, error: Optional[BaseException]) -> CheckpointReadError:
  cause = _describe(error) if error is not None else 'on another host: see its log'
  return CheckpointReadError(
      f'checkpoint {folder} could not be read ({cause}); this is no proof that it is damaged, so '
      'every checkpoint was left as it is: rerun the same command once the cause is gone')


def _damaged_json(folder: epath.Path) -> Optional[str]:
  """The first of a step folder's JSON files that does not parse, with why; None if all do."""
  # Two levels (STEP/_CHECKPOINT_METADATA, STEP/ITEM/_METADATA, STEP/metrics/metrics): epath
  # refuses recursive globs, which would be slow on buckets anyway.
  files = [f for d in [folder] + [p for p in folder.iterdir() if p.is_dir()]
           for f in d.iterdir() if f.name in ('_CHECKPOINT_METADATA', '_METADATA', 'metrics')]
  for f in files:
    if f.is_file():
      try:
        json.loads(f.read_text())
      except (ValueError, UnicodeDecodeError) as e:
        return f'{f.relative_to(folder)}: {_describe(e)}'
  return None


def set_aside_unreadable_latest(workdir: PathLike) -> None:
  """Before a CheckpointManager opens the folder (it parses every step's metadata and metrics and
  fails on a truncated one): sets the latest step aside if one of its JSON files does not parse
  and an earlier step exists. Binary damage is found by `restore_latest_good`.

  Process 0 lists the steps and reads the files; every host follows its verdict. An error other
  than a parse error (the folder cannot be listed or read) stops every host with
  CheckpointReadError and renames nothing.
  """
  latest, previous, verdict, cause, error = -1, -1, _READ_OK, None, None
  if jax.process_index() == 0:
    try:
      saved = checkpoint_steps(workdir)
      if saved:
        latest, previous = saved[-1], (saved[-2] if len(saved) > 1 else -1)
        cause = _damaged_json(checkpoint_dir(workdir) / str(latest))
        verdict = _DAMAGED if cause else _READ_OK
    except Exception as e:  # pylint: disable=broad-except  (handed to the other hosts first)
      verdict, error = _READ_FAILED, e
  latest, previous, verdict = _broadcast_from_0([latest, previous, verdict])
  folder = checkpoint_dir(workdir) / str(latest)
  if verdict == _READ_FAILED:
    raise _read_failed(checkpoint_dir(workdir) if latest < 0 else folder, error) from error
  if verdict == _READ_OK:
    return
  if previous < 0:
    cause = cause or 'see the log of process 0'
    raise CorruptCheckpointError(f'checkpoint {folder} is damaged ({cause}) and there is no '
                                 'earlier one; move it away to start afresh')
  _set_aside(folder, cause or 'unparseable metadata, found by process 0', previous)


def _try_restore(manager, abstract_state, step: int):
  """(state or None, outcome on this host, error or None)."""
  try:
    return restore(manager, abstract_state, step), _READ_OK, None
  except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many kinds)
    return None, (_DAMAGED if is_damage(e) else _READ_FAILED), e


def restore_latest_good(manager: ocp.CheckpointManager, abstract_state: Any):
  """Restores the latest checkpoint; if its files are shown to be damaged (`is_damage`) and the
  one before restores, sets the latest aside (renamed `STEP.corrupt-TIME`, not deleted) with a
  warning.

  Any other failure (`is_damage` false: a transient I/O or permission error, out of memory)
  raises CheckpointReadError and leaves every checkpoint in place. Only one checkpoint is ever
  set aside: if the previous one fails too, the cause is likely not the files (e.g. a code
  change), and CorruptCheckpointError is raised with nothing renamed.

  On several hosts, process 0 chooses the steps (its listing) and every host restores them; the
  hosts then exchange their outcomes and all act on the worst one (read failure > damage > ok),
  so they resume from the same step or stop together.
  """
  saved = manager.all_steps()
  latest, previous = _broadcast_from_0([saved[-1] if saved else -1,
                                        saved[-2] if len(saved) > 1 else -1])
  folder = manager.directory / str(latest)
  state, outcome, error = _try_restore(manager, abstract_state, latest)
  verdict = max(_gather(outcome))
  if verdict == _READ_OK:
    return state
  if verdict == _READ_FAILED:
    raise _read_failed(folder, error if outcome == _READ_FAILED else None) from error
  cause = _describe(error) if error is not None else 'damaged as read by another host'
  if previous < 0:
    raise CorruptCheckpointError(
        f'checkpoint {folder} cannot be restored ({cause}) and there is no earlier one; move it '
        'away to start afresh') from error
  state, outcome, error2 = _try_restore(manager, abstract_state, previous)
  verdict = max(_gather(outcome))
  if verdict == _READ_FAILED:
    raise _read_failed(manager.directory / str(previous),
                       error2 if outcome == _READ_FAILED else None) from error2
  if verdict == _DAMAGED:
    raise CorruptCheckpointError(
        f'checkpoints {latest} and {previous} in {manager.directory} both cannot be restored '
        f'({cause}); nothing was set aside: two at once point to another cause (a code or '
        'library change)') from error
  _set_aside(folder, cause, previous)
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
    best: the checkpoint with the highest finite eval PSNR (`best_step`); NoBestCheckpointError
      (a FileNotFoundError) if none carries one.
    best_or_latest: the best, else (no finite evaluation was saved) the latest.

  Returns:
    (params, step).
  """
  with create_manager(workdir, save_every=1, keep=1, read_only=True) as manager:
    if step is None:
      step = best_step(manager) if best or best_or_latest else manager.latest_step()
      if step is None and best and manager.latest_step() is not None:
        raise NoBestCheckpointError(
            f'no checkpoint in {checkpoint_dir(workdir)} carries a finite eval PSNR (the run '
            'saved no evaluation, or only NaN/inf ones), so there is no best one; take the latest '
            '(--checkpoint latest) instead')
      if step is None:
        step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {checkpoint_dir(workdir)}')
    item = {'params': abstract_params}
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
    return restored['state']['params'], step


def record_psnr(workdir: PathLike, step: int, psnr: float) -> bool:
  """Records `psnr` as the eval PSNR of the saved step `step` if it carries none (process 0).

  For the re-evaluation of a finished run whose last evaluation was cut short by SIGTERM (that
  step was saved without a PSNR); a step that carries one keeps it (the same parameters evaluated
  again). Written where Orbax keeps the metrics of a save (`checkpoints/STEP/metrics/metrics`, by
  a rename: all or nothing), so `best_step` and the preservation policy see it after a restart.

  Returns:
    Whether it was written.
  """
  folder = checkpoint_dir(workdir) / str(step) / 'metrics'
  if jax.process_index() != 0 or (folder / 'metrics').exists():
    return False
  folder.mkdir(parents=True, exist_ok=True)
  tmp = folder / 'metrics.tmp'
  tmp.write_text(json.dumps({BEST_METRIC: float(psnr)}))
  tmp.replace(folder / 'metrics')
  return True


def has_checkpoints(workdir: PathLike) -> bool:
  """Whether `workdir` holds a checkpoint, as process 0 lists it: the same answer on every host
  (CheckpointReadError on all of them if process 0 cannot list the folder)."""
  found, error = 0, None
  if jax.process_index() == 0:
    try:
      found = int(bool(checkpoint_steps(workdir)))
    except OSError as e:
      found, error = _READ_FAILED, e
  [found] = _broadcast_from_0([found])
  if found == _READ_FAILED:
    raise _read_failed(checkpoint_dir(workdir), error) from error
  return bool(found)


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
# Fields removed from the configs, with the value that meant what their absence means now: a
# config.json holding that value resumes without a reported change (any other value is a change;
# the training loop refuses data.train_pattern's first, in a line of its own).
RETIRED_FIELDS = {'data.train_pattern': ''}


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
  for field, neutral in RETIRED_FIELDS.items():
    if field not in new and old.get(field) == neutral:
      del old[field]
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
    # `data_prep.folder_swap` (convert_torch --overwrite) killed between its two renames.
    aside = workdir_path(workdir).parent / f'.{workdir_path(workdir).name}.old'
    if not workdir_path(workdir).exists() and aside.exists():
      raise FileNotFoundError(
          f'{workdir} is missing: an interrupted replacement left the previous one whole in '
          f'{aside}; rerun the command that replaced it (it puts the previous one back first)')
    raise FileNotFoundError(f'{workdir} is not a training workdir (no {CONFIG_FILE})')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


# Exit status of a run that saved and stopped on SIGTERM (128 + SIGTERM, the shell's convention),
# distinct from a finished run's 0 and an error's 1: requeue on 143.
PREEMPTED_EXIT_CODE = 143


class PreemptionFlag:
  """SIGTERM on this host -> `requested`; decisions that all hosts must share go through JAX.

  Use it as a context manager around everything that writes checkpoints, the final
  `wait_until_finished` included: inside, every SIGTERM is only recorded (a second one, while the
  save it asked for commits, is logged and absorbed), so the process never dies half-way through
  a checkpoint. Outside, `install_process_handler` (the trainer's `main`) turns SIGTERM into exit
  status 143 at once: nothing is being written there.

  Single process (no `jax.distributed`): the flag is the whole story, checked between steps and
  between evaluation images.

  Several processes: `jax.distributed.initialize()` installed JAX's preemption notifier as the C
  SIGTERM handler; it tells the coordination service, and `CheckpointManager.reached_preemption`
  then turns True on every host at the same step (one past the furthest host's step). This class
  keeps that: its Python handler records the signal and calls the handler it found (JAX's), so
  the notifier still sees every SIGTERM. Training steps stop on `reached_preemption` only; an
  evaluation (one host's flag is not the others') asks all hosts between images
  (`any_host_requested`) and is cut short on all of them at the same image.

  Any other handler found at entry is chained the same way (called after the signal is recorded);
  SIG_DFL, SIG_IGN and `install_process_handler`'s own are not: inside the block, SIGTERM means
  save and stop, whatever it means outside.
  """

  _stopping = False  # install_process_handler's handler has taken a SIGTERM.
  _UNDECIDED = object()

  def __init__(self):
    self.requested = False
    self._found = None  # The C-level `struct sigaction` found at entry, restored at exit.
    # The handler called after ours (signum, frame), or None; _UNDECIDED while __enter__ reads
    # what it found: a SIGTERM handled then is counted in `_missed` and passed on at its end.
    self._chained = self._UNDECIDED
    self._missed = 0
    self._installed = False
    self._previous = None  # The Python-level handler found at entry.

  # glibc's `struct sigaction` on Linux (x86-64 and aarch64): the handler (a union with
  # sa_sigaction) first, a 128-byte signal mask, then sa_flags. Read with sigaction(2), which
  # changes nothing: signal(2) would have to install something to learn what was there, and a
  # SIGTERM arriving in between would be lost.
  _SIGACTION_SIZE = 256  # More than the 152 bytes glibc uses.
  _FLAGS_OFFSET = 8 + 128
  _SA_SIGINFO = 4

  @classmethod
  def _read_action(cls):
    """(struct bytes, handler address or 0/1 for SIG_DFL/SIG_IGN, sa_flags), or None off Linux."""
    import ctypes  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    if not sys.platform.startswith('linux'):
      return None
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(cls._SIGACTION_SIZE)
    if libc.sigaction(signal.SIGTERM, None, buf) != 0:
      return None
    handler = ctypes.c_void_p.from_buffer(buf, 0).value or 0
    flags = ctypes.c_int.from_buffer(buf, cls._FLAGS_OFFSET).value
    return buf.raw, handler, flags

  @classmethod
  def _write_action(cls, raw: bytes) -> None:
    import ctypes  # pylint: disable=import-outside-toplevel
    buf = ctypes.create_string_buffer(raw, cls._SIGACTION_SIZE)
    ctypes.CDLL(None).sigaction(signal.SIGTERM, buf, None)

  @staticmethod
  def _say(line: str) -> None:
    # From a signal handler: one unbuffered write (the stderr stream or a logging handler may be
    # in the middle of a write of their own on this thread).
    try:
      os.write(2, f'{line}\n'.encode())
    except OSError:
      pass

  def __enter__(self):
    try:
      found = self._read_action()
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. a notebook worker): rely on JAX's sync point.
      self._chained = None
      return self
    self._installed = True
    chained = self._decide_chain(found)
    self._chained = chained
    missed, self._missed = self._missed, 0
    for _ in range(missed if chained is not None else 0):
      chained(signal.SIGTERM, None)
    return self

  def _decide_chain(self, found):
    """The handler to call after ours, from what __enter__ found (sets `_found` where the exit
    must restore a C-level action that Python's table does not know)."""
    previous = self._previous
    python_live = callable(previous) and not self._is_process_handler(previous)
    if found is None:  # Off Linux: chain a Python handler only.
      return previous if python_live else None
    raw, handler, flags = found
    if handler == self._read_action()[1]:  # Python's C trampoline: a Python handler was live.
      return previous if python_live else None
    if handler in (0, 1):  # SIG_DFL, SIG_IGN: our semantics (record, then stop after a save).
      if previous != (signal.SIG_DFL, signal.SIG_IGN)[handler]:
        self._found = raw  # Python's table says otherwise: the exit restores the C action.
      return None
    self._found = raw  # A C handler, which Python's table does not know: restored at exit.
    import ctypes  # pylint: disable=import-outside-toplevel
    if flags & self._SA_SIGINFO:
      function = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(handler)
      return lambda signum, frame: function(signum, None, None)
    function = ctypes.CFUNCTYPE(None, ctypes.c_int)(handler)
    return lambda signum, frame: function(signum)

  def _handle(self, signum, frame):
    if self.requested:
      self._say('SIGTERM again: ignored; the checkpoint under way is written first, then the '
                f'run exits with status {PREEMPTED_EXIT_CODE}.')
    self.requested = True
    if self._chained is self._UNDECIDED:
      self._missed += 1
    elif self._chained is not None:
      self._chained(signum, frame)

  @staticmethod
  def _is_process_handler(handler) -> bool:
    return getattr(handler, '__func__', handler) is PreemptionFlag._process_handler.__func__

  @classmethod
  def _process_handler(cls, signum, frame):
    del signum, frame
    if cls._stopping:
      cls._say('SIGTERM again: ignored; already stopping.')
      return
    cls._stopping = True
    cls._say(f'SIGTERM outside training (no checkpoint was being written): exiting with status '
             f'{PREEMPTED_EXIT_CODE}; rerun the same command to resume.')
    raise SystemExit(PREEMPTED_EXIT_CODE)

  @classmethod
  def install_process_handler(cls) -> None:
    """For a command's whole life (main thread): SIGTERM outside a `PreemptionFlag` block exits
    with status 143 (`SystemExit`, so `finally` blocks run) instead of killing the process, and
    any later SIGTERM is absorbed, up to the interpreter's very end (where it is ignored)."""
    import atexit  # pylint: disable=import-outside-toplevel
    signal.signal(signal.SIGTERM, cls._process_handler)
    # Registered first, so run last: Python resets its handlers to SIG_DFL when it finalises,
    # and a SIGTERM then would kill a process that has already decided its exit status.
    atexit.register(signal.signal, signal.SIGTERM, signal.SIG_IGN)

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
    if not self._installed:
      return False
    if self._found is None:
      signal.signal(signal.SIGTERM, self._previous)  # A Python handler (or none) was found.
    else:
      # A C handler, SIG_DFL or SIG_IGN: put back exactly what was there, in one call.
      self._write_action(self._found)
    return False
