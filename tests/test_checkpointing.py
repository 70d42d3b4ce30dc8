"""Checkpoint reliability: the best checkpoint by eval PSNR (kept across restarts, used by --best
and the GAN stage), corrupt checkpoints set aside, config changes on resume."""
import jax
import numpy as np
import pytest

from ssen_jax.core import checkpointing
from ssen_jax.core import sharding
from ssen_jax.inference import restore
from ssen_jax.training import loop
from ssen_jax.training import steps

from conftest import config_module

refsr = config_module('refsr')
refsr_gan = config_module('refsr_gan')


def _trainer(config):
  return steps.Trainer(config, sharding.create_mesh(jax.devices()[:1]))


def _save_run(workdir, config, psnrs, *, keep=1):
  """Saves one state per entry of `psnrs` (None: no metrics), in one manager session per call,
  each with parameters from its own seed. Returns {step: params}."""
  trainer = _trainer(config)
  checkpointing.workdir_path(workdir).mkdir(parents=True, exist_ok=True)
  checkpointing.write_config(workdir, config)
  saved = {}
  with checkpointing.create_manager(workdir, save_every=1000, keep=keep) as manager:
    start = manager.latest_step() or 0
    for i, psnr in enumerate(psnrs):
      step = start + i + 1
      state = dict(trainer.init_state(step), step=jax.numpy.asarray(step, jax.numpy.int32))
      metrics = None if psnr is None else {checkpointing.BEST_METRIC: psnr}
      checkpointing.save(manager, step, state, metrics=metrics, force=True)
      saved[step] = jax.tree.map(np.asarray, state['params'])
    manager.wait_until_finished()
  return saved


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_best_is_highest_psnr_across_restarts_and_used_everywhere(tmp_path):
  config = refsr.get_config('tiny')
  saved = _save_run(tmp_path, config, [20.0, 30.0, None])
  saved.update(_save_run(tmp_path, config, [25.0, None]))  # A restart: a new manager.
  kept = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert kept == [2, 5], 'the latest (5) and the best (2, 30 dB) survive the restart'

  gen = restore.load_generator(tmp_path, best=True)  # infer / evaluate / visualize_offsets.
  assert gen.step == 2
  _assert_same(gen.params, saved[2])
  assert restore.load_generator(tmp_path).step == 5

  gan = refsr_gan.get_config('tiny')
  gan.gan.init_workdir = str(tmp_path)
  trainer = _trainer(gan)
  with checkpointing.create_manager(tmp_path / 'gan', save_every=1, keep=1) as manager:
    state = loop._initial_state(trainer, gan, manager)  # pylint: disable=protected-access
  _assert_same(state['params'], saved[2])


def test_best_without_any_evaluation(tmp_path):
  config = refsr.get_config('tiny')
  saved = _save_run(tmp_path, config, [None, None])
  with pytest.raises(FileNotFoundError, match='carries a finite eval PSNR'):
    restore.load_generator(tmp_path, best=True)
  # The GAN stage falls back to the latest when the reconstruction run had no evaluation.
  params, step = checkpointing.restore_params(tmp_path, restore.abstract_params(config),
                                              best_or_latest=True)
  assert step == 2
  _assert_same(params, saved[2])


def test_config_json_from_before_the_tfds_fields_resumes_unchanged():
  """Old workdirs' config.json lack data.tfds_*; their neutral values are not a change."""
  new = {'data': {'tfds_name': '', 'tfds_data_dir': '', 'tfds_split': 'train', 'demo': True}}
  old = {'data': {'demo': True}}
  assert checkpointing.config_changes(old, new) == {}
  new['data']['tfds_name'] = 'ssen_cufed'
  assert checkpointing.config_changes(old, new) == {'data.tfds_name': (None, 'ssen_cufed')}
