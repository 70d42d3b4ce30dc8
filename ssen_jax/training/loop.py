"""`train_and_evaluate(config, workdir)`: the training loop shared by every config.

Resumes from the latest checkpoint in `workdir` by itself; the input pipeline is indexed by step,
so a resumed run sees exactly the batches an uninterrupted run would have, and (on CPU) ends with
bitwise-identical parameters. Metrics go to TensorBoard and the log through clu's writers.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from clu import periodic_actions

from ssen_jax.core import checkpointing
from ssen_jax.core import sharding
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


class NonFiniteLossError(RuntimeError):
  """The loss, gradients or parameters became NaN or inf; training stopped without saving."""


def resolve_data_paths(config: ml_collections.ConfigDict) -> Dict[str, str]:
  """Training file pattern and evaluation folder, building the demo data when asked for."""
  if config.data.demo:
    from ssen_jax.data import demo_data  # Built on first use from scikit-image's files; no download.
    root = config.data.demo_dir or os.path.join(
        os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'ssen_jax')
    demo = demo_data.build_demo_data(root)
    return {'train_pattern': demo.train_pattern, 'eval_dir': str(demo.eval_dir)}
  if not config.data.train_pattern:
    raise ValueError('config.data.train_pattern is empty: point it at the TFRecords written by '
                     'data_prep (or use the :demo config)')
  return {'train_pattern': config.data.train_pattern, 'eval_dir': config.data.eval_dir}


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


def _initial_state(trainer: steps.Trainer, config: ml_collections.ConfigDict, manager):
  """The latest checkpoint's state, else a fresh one (GAN stage: generator from init_workdir)."""
  if manager.latest_step() is not None:
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
  changes = checkpointing.check_resume_config(workdir, config, allow_change=allow_config_change)
  checkpointing.workdir_path(workdir).mkdir(parents=True, exist_ok=True)
  if changes:
    checkpointing.record_config_change(workdir, changes,
                                       checkpointing.checkpoint_steps(workdir)[-1])
  checkpointing.write_config(workdir, config)
  mesh = sharding.create_mesh()
  trainer = steps.Trainer(config, mesh)
  if config.batch_size % jax.device_count():
    raise ValueError(f'batch_size {config.batch_size} is not divisible by the '
                     f'{jax.device_count()} devices')
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  paths = resolve_data_paths(config)
  eval_examples = load_eval_examples(config, paths.get('eval_dir', ''))
  sr_jit = restore.make_sr_fn(trainer.model, trainer.uses_ref)

  def run_eval(state, step, preemption=None):
    logging.info('Step %d: evaluating %d examples.', step, len(eval_examples))
    sr_fn = sr_jit
    if preemption is not None:  # Checked before every image: SIGTERM cuts the evaluation short.
      def sr_fn(*args):
        if preemption.any_host_requested():
          raise _EvalInterrupted()
        return sr_jit(*args)
    results = protocol.evaluate_model(eval_examples, sr_fn, state['params'],
                                      scale=config.model.scale, uses_ref=trainer.uses_ref)
    writer.write_scalars(step, tables.scalar_summary(results))
    if config.num_image_summaries:
      writer.write_images(step, protocol.summary_images(
          eval_examples, sr_fn, state['params'], scale=config.model.scale,
          uses_ref=trainer.uses_ref, count=config.num_image_summaries))
    logging.info('Step %d eval: %s', step, tables.describe(results))
    return results

  from ssen_jax.data import input_pipeline  # TensorFlow is imported by the input pipeline only.

  checkpointing.set_aside_unreadable_latest(workdir)
  manager = checkpointing.create_manager(workdir, save_every=config.checkpoint_every_steps,
                                         keep=config.keep_checkpoints)
  state = _initial_state(trainer, config, manager)
  start = int(sharding.local_value(state['step']))
  total = config.num_train_steps
  last_results: Dict[str, Any] = {}
  if start >= total:
    logging.info('Nothing to train: the checkpoint is at step %d of %d.', start, total)
    if eval_examples:
      last_results = run_eval(state, start)
    manager.close()
    writer.close()
    return last_results

  train_iter = input_pipeline.create_train_iterator(
      file_pattern=paths['train_pattern'], kind=config.data.kind, hr_patch=config.data.hr_patch,
      scale=config.model.scale, local_batch_size=config.batch_size // jax.process_count(),
      seed=config.seed, start_step=start, process_index=jax.process_index(),
      process_count=jax.process_count(), ref_augment=config.data.ref_augment,
      independent_prob=config.data.ref_independent_prob,
      ref_mix=input_pipeline.RefMix(**config.data.ref_mix.to_dict()))
  progress = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                             every_steps=config.log_every_steps)
  pending: Optional[tuple] = None  # (step, metrics) checked while the next step runs.
  preempted_at: Optional[int] = None
  window: List[Dict[str, Any]] = []
  try:
    with checkpointing.PreemptionFlag() as preemption:
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
        do_eval = bool(eval_examples) and (step % config.eval_every_steps == 0 or is_last)
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
    # An asynchronous save of an earlier (good) step may still be in flight.
    manager.wait_until_finished()
    manager.close()
    writer.flush()
    writer.close()
  if preempted_at is not None:
    logging.warning('Preemption: step %d saved.', preempted_at)
    raise Preempted(preempted_at)
  return last_results
