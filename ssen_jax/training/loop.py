"""`train_and_evaluate(config, workdir)`: the training loop shared by every config.

Resumes from the latest checkpoint in `workdir` by itself; the input pipeline is indexed by step,
so a resumed run sees exactly the batches an uninterrupted run would have, and (on CPU) ends with
bitwise-identical parameters. Metrics go to TensorBoard and the log through clu's writers.
"""
from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from ssen_jax.data import tf_env  # noqa: F401  (first: TensorFlow's defaults)
from clu import metric_writers
from clu import periodic_actions

from ssen_jax.core import checkpointing
from ssen_jax.core import sharding
from ssen_jax.data import datasets
from ssen_jax.eval import protocol
from ssen_jax.eval import tables
from ssen_jax.inference import restore
from ssen_jax.training import steps


class Preempted(Exception):
  """SIGTERM: the state of `step` was saved (on every host) and training stopped.

  `main` exits with `checkpointing.PREEMPTED_EXIT_CODE`; rerunning the command resumes."""

  def __init__(self, step: int):
    super().__init__(f'preempted: saved step {step}; rerun the same command to resume')
    self.step = step


class _EvalInterrupted(Exception):
  """Raised between evaluation images when a host received SIGTERM."""


class FailedElsewhere(RuntimeError):
  """On a host that reached a collective: another host raised before it (its log has why)."""


class EvalFailedElsewhere(FailedElsewhere):
  """On a host that waited for process 0's evaluation: that evaluation raised (its log has why)."""


class NonFiniteLossError(RuntimeError):
  """The loss, gradients or parameters became NaN or inf; training stopped without saving."""


def resolve_data_paths(config: ml_collections.ConfigDict) -> Dict[str, str]:
  """Training data (TFDS name, folder and split) and evaluation folder.

  The demo data is built on first use from scikit-image's files (no download) and prepared as the
  TFDS dataset 'ssen_demo' under `config.data.demo_dir`. A config that still sets
  `data.train_pattern` (TFRecord shards, no longer read; a config file written before TFDS was the
  one format) is refused in one line that says how to convert.
  """
  d = config.data
  retired = datasets.RETIRED_TRAIN_PATTERN.split('.')[-1]
  if retired in d and d[retired]:
    raise ValueError(datasets.retired_train_pattern(d[retired]))
  if d.demo:
    from ssen_jax.data_prep import tfds_build  # pylint: disable=g-import-not-at-top
    from ssen_jax.data import demo_data  # pylint: disable=g-import-not-at-top
    name, data_dir, demo = tfds_build.prepare_demo(demo_data.default_root(d.demo_dir))
    return {'tfds_name': name, 'tfds_data_dir': data_dir, 'tfds_split': 'train',
            'eval_dir': str(demo.eval_dir)}
  if not d.tfds_name:
    raise ValueError('no training data: set config.data.tfds_name (a dataset prepared by '
                     'python -m ssen_jax.data_prep.tfds_build), or use the :demo config')
  return {'tfds_name': d.tfds_name, 'tfds_data_dir': d.tfds_data_dir, 'tfds_split': d.tfds_split,
          'eval_dir': d.eval_dir}


def check_trained_on_shards(workdir: str, config: ml_collections.ConfigDict,
                            allow_change: bool) -> None:
  """A workdir trained on TFRecord shards (its config.json sets data.train_pattern) resumes only
  on a TFDS dataset (`config.data.tfds_name`) with `allow_change`: the change of data is recorded
  in config_history.json like any other. Otherwise a ValueError (one line) says how to convert.

  Its checkpoints themselves are unaffected: `evaluate`, `infer` and the GAN stage's
  `init_workdir` read only the model fields of its config.json."""
  path = checkpointing.workdir_path(workdir) / checkpointing.CONFIG_FILE
  if not checkpointing.checkpoint_steps(workdir) or not path.exists():
    return
  section, field = datasets.RETIRED_TRAIN_PATTERN.split('.')
  old = json.loads(path.read_text()).get(section, {}).get(field, '')
  if not old or (allow_change and config.data.tfds_name):
    return
  raise ValueError(
      f'{workdir} was trained on TFRecord shards ({datasets.RETIRED_TRAIN_PATTERN}={old!r} in its '
      f'{checkpointing.CONFIG_FILE}), which are no longer read: {datasets.CONVERT_TO_TFDS}, then '
      'resume with --config.data.tfds_name=ssen_cufed --config.data.tfds_data_dir=DIR '
      f'--allow_config_change (recorded in {checkpointing.CONFIG_HISTORY_FILE})')


def load_eval_examples(config: ml_collections.ConfigDict, eval_dir: str) -> List[dict]:
  """The evaluation examples (the first `eval_max_images`), their sizes checked before training
  starts: an image too small to score is a one-line error now, not after the first steps."""
  if not eval_dir:
    return []
  examples = protocol.load_dataset(config.data.eval_dataset, eval_dir, config.model.scale,
                                   check=False)
  if config.data.eval_max_images:
    examples = examples[:config.data.eval_max_images]
  protocol.check_sizes(examples, config.model.scale)
  return examples


def _allgather(values) -> np.ndarray:
  """(process_count, len(values)) float64: every host's `values` (a collective: call on all)."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.float64)),
                    np.float64).reshape(jax.process_count(), -1)


def _hand_over(what: str, failed: bool, value: float = 0.0) -> np.ndarray:
  """Every host's `value` ((process_count,) float64), and whether a host failed `what` (a
  collective: call it on all hosts, also from the `except` of a host whose part raised, with
  `failed=True`, before re-raising). A host that did not fail raises FailedElsewhere naming the
  one that did, at once, instead of waiting in the next collective until the coordination service
  gives up."""
  if jax.process_count() == 1:
    return np.asarray([value], np.float64)
  rows = _allgather([float(failed), value])
  bad = np.flatnonzero(rows[:, 0])
  if bad.size and not failed:
    raise FailedElsewhere(f'process {", ".join(map(str, bad))} failed {what} (its log says why); '
                          'this host stops too')
  return rows[:, 1]


def _min_over_hosts(count: int) -> int:
  """The smallest of every host's `count` (each host's epoch uses that many examples)."""
  if jax.process_count() == 1:
    return count
  counts = _hand_over('reading its training data', False, count).astype(int)
  if counts.min() < count:
    logging.info('Hosts read %s examples: each uses %d per epoch.', counts.tolist(), counts.min())
  return int(counts.min())


DATA_STREAM_FIELDS = ('process_count', 'batch_size', 'local_batch_size')


def check_data_stream(workdir: str, config: ml_collections.ConfigDict, step: int) -> None:
  """Warns (one line) and records in `config_history.json` when a resumed run reads another data
  stream than the run it resumes: another host count gives each host another range of examples,
  and it or another global batch size gives other example positions from step `step + 1` on.
  Writes `data_stream.json` (what this run reads) for the next resume. Process 0 only."""
  if jax.process_index() != 0:
    return
  now = {'process_count': jax.process_count(), 'batch_size': int(config.batch_size),
         'local_batch_size': int(config.batch_size) // jax.process_count()}
  path = checkpointing.workdir_path(workdir) / DATA_STREAM_FILE
  if step > 0 and path.exists():
    before = json.loads(path.read_text())
    changes = {f'data_stream.{k}': (before.get(k), now[k]) for k in DATA_STREAM_FIELDS
               if before.get(k) != now[k]}
    if changes:
      logging.warning(
          'Resuming step %d with another data stream: %s; the batches from step %d on differ '
          'from those of an uninterrupted run (recorded in %s).', step,
          ', '.join(f'{k.split(".")[1]} {a} -> {b}' for k, (a, b) in changes.items()), step + 1,
          checkpointing.CONFIG_HISTORY_FILE)
      checkpointing.record_config_change(workdir, changes, step)
  tmp = checkpointing.workdir_path(workdir) / (DATA_STREAM_FILE + '.tmp')
  tmp.write_text(json.dumps(now, indent=2))
  tmp.replace(path)


DATA_STREAM_FILE = 'data_stream.json'


class _EvalSync:
  """Evaluation during training runs on process 0 alone (only it opens eval_dir); the other hosts
  wait for it in a loop of small collectives that also carries SIGTERM: before each image process
  0 and the waiting hosts exchange (SIGTERM seen, done, PSNR, failed), so a signal on any host cuts
  the evaluation short on all of them at the same image, the final exchange hands every host the
  PSNR that its checkpoint save ranks by, and an exception on process 0 (an XLA error, a full disk
  for its summaries) is handed over in place of the next exchange: the waiting hosts stop with
  `EvalFailedElsewhere` at once instead of waiting in a collective until the coordination service
  gives up on process 0."""

  def __init__(self, preemption):
    self.preemption = preemption

  def _exchange(self, done: bool, psnr: float = float('nan'), failed: bool = False) -> np.ndarray:
    requested = bool(self.preemption is not None and self.preemption.requested)
    return _allgather([float(requested), float(done), psnr, float(failed)])

  def check(self) -> None:
    """Process 0, before each image."""
    if jax.process_count() == 1:
      if self.preemption is not None and self.preemption.requested:
        raise _EvalInterrupted()
      return
    if self._exchange(False)[:, 0].any():
      raise _EvalInterrupted()

  def finish(self, psnr: float) -> None:
    """Process 0, after the evaluation."""
    if jax.process_count() > 1:
      self._exchange(True, psnr)

  def fail(self) -> None:
    """Process 0, when its evaluation raised before `finish`: the waiting hosts stop too."""
    if jax.process_count() > 1:
      self._exchange(True, failed=True)

  def wait(self) -> float:
    """The other hosts: the PSNR of process 0's evaluation, or _EvalInterrupted, or
    EvalFailedElsewhere."""
    while True:
      rows = self._exchange(False)
      if rows[0, 3]:
        raise EvalFailedElsewhere(
            'the evaluation on process 0 failed (its log says why); this host stops too')
      if rows[0, 1]:
        return float(rows[0, 2])
      if rows[:, 0].any():
        raise _EvalInterrupted()


def check_config(config: ml_collections.ConfigDict) -> None:
  """ValueError (one line) for a value the loop cannot run with, before anything is written."""
  for field in ('keep_checkpoints', 'checkpoint_every_steps', 'eval_every_steps',
                'log_every_steps'):
    if int(config[field]) < 1:
      raise ValueError(f'config.{field} must be at least 1, got {config[field]}'
                       + (' (the number of latest checkpoints kept besides the best one)'
                          if field == 'keep_checkpoints' else ''))


def _first_writes(workdir: str, config: ml_collections.ConfigDict, changes: Dict[str, tuple],
                  start: int) -> None:
  """The workdir, its config change record (effective after the restored step) and config.json."""
  checkpointing.workdir_path(workdir).mkdir(parents=True, exist_ok=True)
  if changes:
    checkpointing.record_config_change(workdir, changes, start)
  checkpointing.write_config(workdir, config)


def _initial_state(trainer: steps.Trainer, config: ml_collections.ConfigDict, manager):
  """The latest checkpoint's state (`manager` None: a workdir without checkpoints), else a fresh
  one (GAN stage: generator from init_workdir)."""
  if manager is not None and manager.latest_step() is not None:
    state = checkpointing.restore_latest_good(manager, trainer.abstract_state())
    logging.info('Resumed from step %d.', int(state['step']))
    return state
  if not config.gan.init_workdir:
    return trainer.init_state(config.seed)
  # The best evaluated checkpoint, else (the run saved no evaluation) the latest.
  source = restore.load_generator(config.gan.init_workdir, best_or_latest=True,
                                  sharding=sharding.replicated(trainer.mesh))
  logging.info('Generator initialised from %s (step %d).', config.gan.init_workdir, source.step)
  return trainer.init_state(config.seed, params=source.params)


def _check_finite(step: int, metrics: Dict[str, Any], manager) -> None:
  """Raises NonFiniteLossError if step `step` made the loss, the gradients or the new state
  (parameters and optimiser state, `params_finite` computed inside the step) non-finite."""
  value = lambda k: float(sharding.local_value(metrics[k]))
  bad = None
  for key, what in (('loss', 'loss'), ('disc_loss', 'discriminator loss'),
                    ('grad_norm', 'gradient norm')):
    if key in metrics and not np.isfinite(value(key)):
      bad = f'{what} became {value(key)}'
      break
  if bad is None and 'params_finite' in metrics and not value('params_finite'):
    bad = 'parameters or optimiser state became non-finite'
  if bad is not None:
    raise NonFiniteLossError(
        f'{bad} at step {step}; training stopped without saving it. The last good checkpoint '
        f'(step {manager.latest_step()}) is intact.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints) and evaluates it.

  A resumed run's config is compared with the workdir's `config.json` before anything is written
  (`checkpointing.check_resume_config`): shape changes are refused, other changes need
  `allow_config_change` and are recorded in `config_history.json`.

  Returns:
    The last evaluation's results (`protocol.evaluate_model`), or {} without an eval set.

  Raises:
    checkpointing.ConfigChangeError: see above.
  """
  # Everything that can refuse the run is checked before its first write (config.json,
  # config_history.json, data_stream.json, the events file, the checkpoint folder): the config,
  # the batch, the data paths, the evaluation data, the checkpoint to resume from and the training
  # data. A refused run leaves the workdir as it found it.
  check_config(config)
  check_trained_on_shards(workdir, config, allow_config_change)
  changes = checkpointing.check_resume_config(workdir, config, allow_change=allow_config_change)
  if config.batch_size % jax.device_count():
    raise ValueError(f'batch_size {config.batch_size} is not divisible by the '
                     f'{jax.device_count()} devices')
  paths = resolve_data_paths(config)
  mesh = sharding.create_mesh()
  trainer = steps.Trainer(config, mesh)
  # Only process 0 opens eval_dir (the other hosts need not have it); its sizes are checked here,
  # before the first step, and an error stops every host.
  what = 'loading the evaluation data'
  try:
    eval_examples = (load_eval_examples(config, paths.get('eval_dir', ''))
                     if jax.process_index() == 0 else [])
  except BaseException:  # A bad image, an unreadable folder (OSError): every host stops.
    _hand_over(what, True)
    raise
  has_eval = _hand_over(what, False, len(eval_examples))[0] > 0
  sr_jit = restore.make_sr_fn(trainer.model, trainer.uses_ref)

  def run_eval(state, step, preemption=None):
    """Process 0 evaluates on its own copy of the parameters; the others wait for its PSNR."""
    sync = _EvalSync(preemption)
    if jax.process_index() > 0:
      return {'psnr': sync.wait()}
    logging.info('Step %d: evaluating %d examples.', step, len(eval_examples))
    eval_start = time.perf_counter()
    params = jax.tree.map(
        lambda x: x if x.is_fully_addressable else x.addressable_shards[0].data, state['params'])

    def sr_fn(*args):  # Checked before every image: SIGTERM cuts the evaluation short.
      sync.check()
      return sr_jit(*args)

    try:
      results = protocol.evaluate_model(
          eval_examples, sr_fn, params, scale=config.model.scale, uses_ref=trainer.uses_ref,
          log_fn=lambda line: logging.info('Step %d eval %s', step, line))
      writer.write_scalars(step, tables.scalar_summary(results))
      if config.num_image_summaries:
        writer.write_images(step, protocol.summary_images(
            eval_examples, sr_jit, params, scale=config.model.scale,
            uses_ref=trainer.uses_ref, count=config.num_image_summaries))
    except _EvalInterrupted:
      raise  # Every host saw the signal at the same exchange.
    except BaseException:
      sync.fail()
      raise
    sync.finish(results['psnr'])
    logging.info('Step %d eval: %s (%.1f s)', step, tables.describe(results),
                 time.perf_counter() - eval_start)
    return results

  from ssen_jax.data import input_pipeline  # TensorFlow is imported by the input pipeline only.

  new_manager = lambda: checkpointing.create_manager(
      workdir, save_every=config.checkpoint_every_steps, keep=config.keep_checkpoints)
  manager = None  # A new run's checkpoint folder is made after the checks.
  if checkpointing.has_checkpoints(workdir):
    checkpointing.set_aside_unreadable_latest(workdir)  # Renames only a damaged checkpoint.
    manager = new_manager()
  state = _initial_state(trainer, config, manager)
  start = int(sharding.local_value(state['step']))
  total = config.num_train_steps
  last_results: Dict[str, Any] = {}
  if start >= total:
    logging.info('Nothing to train: the checkpoint is at step %d of %d.', start, total)
    _first_writes(workdir, config, changes, start)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if has_eval:
      last_results = run_eval(state, start)
      # The last evaluation of the run was cut short (SIGTERM): its checkpoint gets this PSNR.
      if checkpointing.record_psnr(workdir, start, last_results['psnr']):
        logging.info('Step %d: eval PSNR %.4f recorded for --checkpoint best.', start,
                     last_results['psnr'])
    if manager is not None:
      manager.close()
    writer.close()
    return last_results

  # This host's part before the first collective (`_min_over_hosts`, inside): a bad record in its
  # share of the data raises here; the other hosts are told there.
  exchanged = []
  try:
    train_iter = input_pipeline.create_train_iterator(
      tfds_name=paths['tfds_name'], tfds_data_dir=paths['tfds_data_dir'] or None,
      tfds_split=paths['tfds_split'],
      kind=config.data.kind, hr_patch=config.data.hr_patch,
      scale=config.model.scale, local_batch_size=config.batch_size // jax.process_count(),
      seed=config.seed, start_step=start, process_index=jax.process_index(),
      process_count=jax.process_count(), ref_augment=config.data.ref_augment,
      independent_prob=config.data.ref_independent_prob,
      ref_mix=input_pipeline.RefMix(**config.data.ref_mix.to_dict()),
      examples_per_host=lambda count: exchanged.append(count) or _min_over_hosts(count))
  except BaseException:
    if not exchanged:
      _hand_over('reading its training data', True)
    raise
  # Every check passed: the first writes.
  try:
    _first_writes(workdir, config, changes, start)
    check_data_stream(workdir, config, start)
  except BaseException:  # Process 0's files (a full disk): every host stops.
    _hand_over('writing the workdir', True)
    raise
  _hand_over('writing the workdir', False)
  manager = manager or new_manager()
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                             every_steps=config.log_every_steps)
  pending: Optional[tuple] = None  # (step, metrics) checked while the next step runs.
  preempted_at: Optional[int] = None
  window: List[Dict[str, Any]] = []
  # The block ends after the last save has been waited for: a SIGTERM while it commits (a second
  # one after the preemption that asked for it) is recorded and absorbed, never fatal.
  with checkpointing.PreemptionFlag() as preemption:
    try:
      for step in range(start + 1, total + 1):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          batch = sharding.global_batch(next(train_iter), mesh)
          state, metrics = trainer.train_step(state, batch)
        if pending is not None:
          _check_finite(*pending, manager)
        pending = (step, metrics)
        window.append(metrics)
        progress(step)
        is_last = step == total
        preempted = preemption.reached(manager, step)
        do_eval = has_eval and (step % config.eval_every_steps == 0 or is_last)
        if step % config.log_every_steps == 0 or is_last:
          _check_finite(step, metrics, manager)
          scalars = jax.tree.map(lambda *xs: float(np.mean([sharding.local_value(x) for x in xs])),
                                 *window)
          writer.write_scalars(step, {f'train/{k}': v for k, v in scalars.items()})
          window = []
        save_metrics = None
        if do_eval and not preempted:
          _check_finite(step, metrics, manager)
          try:
            last_results = run_eval(state, step, preemption)
            save_metrics = {checkpointing.BEST_METRIC: last_results['psnr']}
          except _EvalInterrupted:
            logging.warning('SIGTERM during the evaluation of step %d: evaluation abandoned.',
                            step)
            preempted = True
        if save_metrics or is_last or preempted or manager.should_save(step):
          _check_finite(step, metrics, manager)
          checkpointing.save(manager, step, state, metrics=save_metrics,
                             force=bool(save_metrics) or is_last or preempted)
        if preempted:
          preempted_at = step
          logging.warning('Preemption: saving step %d, then exiting with status %d.', step,
                          checkpointing.PREEMPTED_EXIT_CODE)
          break
    finally:
      # The preemption's save, or an asynchronous save of an earlier (good) step, may still be
      # in flight.
      manager.wait_until_finished()
      manager.close()
      writer.flush()
      writer.close()
  if preempted_at is not None:
    logging.warning('Preemption: step %d saved.', preempted_at)
    raise Preempted(preempted_at)
  return last_results
