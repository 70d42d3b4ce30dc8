"""Checkpoints kept through a glitch (issue 21, section 2): keep_checkpoints refused below 1, only
proven damage sets a checkpoint aside and every host follows process 0, --best among finite
PSNRs only, a run refused by its checks writes nothing."""
import errno
import json
import math
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssen_jax.core import checkpointing
from ssen_jax.core import sharding
from ssen_jax.eval import protocol
from ssen_jax.inference import restore
from ssen_jax.training import loop
from ssen_jax.training import steps

from conftest import REPO_ROOT, compilation_cache_env, config_module

refsr = config_module('refsr')


def _state(seed):
  return {'params': {'w': jnp.full((4,), float(seed))}, 'step': jnp.asarray(seed, jnp.int32)}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _save(workdir, psnrs):
  """Steps 1..len(psnrs), step i holding _state(i) and eval PSNR psnrs[i-1] (None: no metrics)."""
  with checkpointing.create_manager(workdir, save_every=1000, keep=10) as manager:
    for step, psnr in enumerate(psnrs, 1):
      metrics = None if psnr is None else {checkpointing.BEST_METRIC: psnr}
      checkpointing.save(manager, step, _state(step), metrics=metrics, force=True)
    manager.wait_until_finished()


def _listing(root):
  return sorted(str(p.relative_to(root)) for p in pathlib.Path(root).rglob('*'))


def _restore_latest_good(workdir):
  with checkpointing.create_manager(workdir, save_every=1000, keep=10) as manager:
    state = checkpointing.restore_latest_good(manager, _abstract(_state(0)))
  return int(state['step']), float(state['params']['w'][0])


# keep_checkpoints ---------------------------------------------------------------------------------

def test_keep_checkpoints_below_one_is_refused_before_anything_is_written(tmp_path):
  config = refsr.get_config('tiny')
  config.keep_checkpoints = 0
  config.data.tfds_name, config.data.tfds_data_dir = 'ssen_cufed', str(tmp_path / 'data')
  with pytest.raises(ValueError, match=r'^config\.keep_checkpoints must be at least 1, got 0 '
                                       r'\(the number of latest checkpoints kept'):
    loop.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()
  with pytest.raises(ValueError, match=r'keep \(0\) and save_every \(1\) must be at least 1'):
    checkpointing.create_manager(tmp_path / 'm', save_every=1, keep=0)
  assert not (tmp_path / 'm').exists()


# What counts as damage ---------------------------------------------------------------------------

def test_damaged_latest_is_set_aside_and_the_previous_one_restored(tmp_path):
  _save(tmp_path, [None, None])
  for f in (tmp_path / 'checkpoints' / '2').rglob('*'):  # The arrays' files truncated.
    if f.is_file() and f.name not in ('_CHECKPOINT_METADATA', '_METADATA', 'metrics'):
      f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 3])
  assert _restore_latest_good(tmp_path) == (1, 1.0)
  assert checkpointing.checkpoint_steps(tmp_path) == [1]
  assert len(list((tmp_path / 'checkpoints').glob('2.corrupt-*'))) == 1


@pytest.mark.parametrize('error', [
    OSError(errno.EIO, 'Input/output error'), PermissionError(errno.EACCES, 'Permission denied'),
    MemoryError(), ValueError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate'),
    ValueError('PERMISSION_DENIED: Error opening file "manifest.ocdbt"'),
    ValueError('Requested shape (8,) does not match the stored (4,)')],
    ids=['eio', 'permission', 'memory', 'ts_resource', 'ts_permission', 'structure'])
def test_an_error_that_proves_no_damage_sets_nothing_aside(tmp_path, monkeypatch, error):
  _save(tmp_path, [None, None])
  before = _listing(tmp_path)
  real = checkpointing.restore
  failures = []

  def restore_once_failing(manager, abstract_state, step=None):
    if not failures:
      failures.append(step)
      raise error
    return real(manager, abstract_state, step)

  monkeypatch.setattr(checkpointing, 'restore', restore_once_failing)
  with pytest.raises(checkpointing.CheckpointReadError) as e:
    _restore_latest_good(tmp_path)
  assert failures == [2]
  message = str(e.value)
  assert len(message.splitlines()) == 1 and 'every checkpoint was left as it is' in message
  assert _listing(tmp_path) == before
  assert _restore_latest_good(tmp_path) == (2, 2.0)  # The glitch has passed: step 2 resumes.


def test_proof_of_damage_is_decided_by_type_and_status_code():
  proof = [json.JSONDecodeError('Expecting value', '{', 1), FileNotFoundError(2, 'gone'),
           ValueError('DATA_LOSS: Error decoding manifest'), ValueError('NOT_FOUND: Metadata at '
                                                                        '"a/.zarray" does not exist'),
           ValueError('OUT_OF_RANGE: read past the end')]
  not_proof = [OSError(errno.EIO, 'EIO'), MemoryError(), RuntimeError('RESOURCE_EXHAUSTED: oom'),
               ValueError('UNAVAILABLE: try again'), ValueError('shapes differ'), KeyError('w')]
  assert [checkpointing.is_damage(e) for e in proof] == [True] * len(proof)
  assert [checkpointing.is_damage(e) for e in not_proof] == [False] * len(not_proof)


# Several hosts: process 0 decides ------------------------------------------------------------------

def test_every_host_follows_process_0(tmp_path, monkeypatch):
  """With fake collectives: this host (process 0 here) lists steps 1-3, but the steps broadcast by
  process 0 are (2, 1); the other host's outcome decides with this one's."""
  _save(tmp_path, [None, None, None])
  monkeypatch.setattr(checkpointing, '_broadcast_from_0', lambda values: [2, 1])
  other = {'outcome': 0}
  gathered = []
  monkeypatch.setattr(checkpointing, '_gather',
                      lambda value: gathered.append(value) or [value, other['outcome']])
  assert _restore_latest_good(tmp_path) == (2, 2.0)  # Process 0's step, not this listing's 3.
  assert gathered == [0]

  other['outcome'] = 2  # The other host failed to read step 2 (an I/O error there).
  before = _listing(tmp_path)
  with pytest.raises(checkpointing.CheckpointReadError, match='on another host'):
    _restore_latest_good(tmp_path)
  assert _listing(tmp_path) == before

  other['outcome'] = 1  # The other host read damage in step 2: every host resumes from step 1.
  gathered.clear()

  def gather(value):
    gathered.append(value)
    return [value, 1 if len(gathered) == 1 else 0]  # Then step 1 restores on both.

  monkeypatch.setattr(checkpointing, '_gather', gather)
  assert _restore_latest_good(tmp_path) == (1, 1.0)
  assert gathered == [0, 0]
  assert checkpointing.checkpoint_steps(tmp_path) == [1, 3]  # 2 set aside by process 0.
  assert len(list((tmp_path / 'checkpoints').glob('2.corrupt-*'))) == 1


# --best ------------------------------------------------------------------------------------------

NAN, INF = float('nan'), float('inf')


@pytest.mark.parametrize('psnrs, best', [
    ([NAN, NAN], None), ([30.0, INF, None], 1), ([NAN, 25.0, -INF], 2), ([INF, -INF], None),
    ([20.0, 20.0, None], 2)])
def test_best_is_the_highest_finite_psnr(tmp_path, psnrs, best):
  _save(tmp_path, psnrs)
  abstract = _abstract(_state(0))['params']
  if best is None:
    with pytest.raises(checkpointing.NoBestCheckpointError) as e:
      checkpointing.restore_params(tmp_path, abstract, best=True)
    assert len(str(e.value).splitlines()) == 1 and 'finite eval PSNR' in str(e.value)
    # The GAN stage's choice falls back to the latest.
    _, step = checkpointing.restore_params(tmp_path, abstract, best_or_latest=True)
    assert step == len(psnrs)
    return
  params, step = checkpointing.restore_params(tmp_path, abstract, best=True)
  assert step == best and float(params['w'][0]) == best


# Check everything first, write after --------------------------------------------------------------

def _resumable_workdir(workdir, config):
  """config.json, a config history and a checkpoint of the whole training state at step 2."""
  trainer = steps.Trainer(config, sharding.create_mesh(jax.devices()[:1]))
  state = dict(trainer.init_state(0), step=jnp.asarray(2, jnp.int32))
  workdir.mkdir(parents=True)
  checkpointing.write_config(workdir, config)
  (workdir / checkpointing.CONFIG_HISTORY_FILE).write_text('[]\n')
  with checkpointing.create_manager(workdir, save_every=1000, keep=2) as manager:
    checkpointing.save(manager, 2, state, force=True)
    manager.wait_until_finished()


def _files(root):
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def _trained_tiny_workdir(tmp_path):
  """(config, workdir, its files' bytes) of a resumable tiny workdir reading a TFDS dataset."""
  config = refsr.get_config('tiny')
  config.data.tfds_name, config.data.tfds_data_dir = 'ssen_cufed', str(tmp_path / 'data')
  workdir = tmp_path / 'w'
  _resumable_workdir(workdir, config)
  return config, workdir, _files(workdir)


def test_a_resumed_run_refused_for_its_data_changes_no_file(tmp_path):
  config, workdir, before = _trained_tiny_workdir(tmp_path)
  changed = config.copy_and_resolve_references()
  changed.update(seed=7, num_train_steps=3)
  changed.data.tfds_data_dir = str(tmp_path / 'moved')
  with pytest.raises(ValueError, match="TFDS dataset 'ssen_cufed' (is )?not (found|prepared) in"):
    loop.train_and_evaluate(changed, str(workdir), allow_config_change=True)
  assert _files(workdir) == before  # config.json, config_history.json: byte for byte.


def _main(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **compilation_cache_env())
  return subprocess.Popen([sys.executable, '-m', 'ssen_jax.main', *args], env=env, cwd=REPO_ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_mission_command_without_a_dataset_leaves_the_workdir_as_it_was(tmp_path):
  absent, empty = tmp_path / 'absent' / 'w', tmp_path / 'empty'
  empty.mkdir()
  procs = [_main('--config', 'configs/refsr.py', '--workdir', str(w)) for w in (absent, empty)]
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    [line] = [l for l in err.splitlines() if l.startswith('error:')]  # After absl's log lines.
    assert line.startswith('error: no training data: set config.data.tfds_name'), err[-3000:]
    assert 'Traceback' not in err
  assert not (tmp_path / 'absent').exists()
  assert list(empty.iterdir()) == []


def test_a_read_glitch_at_resume_exits_with_one_line_and_touches_nothing(tmp_path):
  config, workdir, before = _trained_tiny_workdir(tmp_path)
  # main, with the first restore failing as a flaky network disk would.
  script = (
      'import errno, sys\n'
      'from absl import app\n'
      'from ssen_jax.core import checkpointing\n'
      'def glitch(*args, **kwargs):\n'
      '  raise OSError(errno.EIO, "Input/output error")\n'
      'checkpointing.restore = glitch\n'
      'from ssen_jax import main\n'
      'main.flags.mark_flags_as_required(["config", "workdir"])\n'
      'app.run(main.main, flags_parser=main.parse_flags)\n')
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **compilation_cache_env())
  proc = subprocess.run(
      [sys.executable, '-c', script, '--config=configs/refsr.py:tiny', f'--workdir={workdir}',
       f'--config.data.tfds_name={config.data.tfds_name}',
       f'--config.data.tfds_data_dir={config.data.tfds_data_dir}'],
      env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  [line] = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert 'Traceback' not in proc.stderr
  assert line.startswith(f'error: checkpoint {workdir}/checkpoints/2 could not be read (OSError: '
                         '[Errno 5] Input/output error); this is no proof that it is damaged'), line
  assert _files(workdir) == before


# PSNRs that a cut-short evaluation and a re-evaluation record -------------------------------------

def test_an_evaluation_cut_short_records_no_psnr_and_the_rerun_records_it(tmp_path, monkeypatch):
  """SIGTERM during the last step's evaluation: that step is saved without a PSNR (a part of the
  images is no score), so --best cannot choose it; rerunning the finished run evaluates it again
  and records the PSNR, which --best then uses."""
  from ssen_jax.data import demo_data  # pylint: disable=import-outside-toplevel
  demo_data.build_demo_data(tmp_path / 'demo')
  config = refsr.get_config('tiny')  # Steps 1 and 2, evaluated at 2.
  config.data.demo = True
  config.data.demo_dir = str(tmp_path / 'demo')
  config.data.eval_max_images = 1
  config.num_image_summaries = 0
  workdir = tmp_path / 'w'
  real = protocol.evaluate_model

  def evaluate_then_sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # The scheduler's signal, while the evaluation runs.
    return real(*args, **kwargs)

  monkeypatch.setattr(protocol, 'evaluate_model', evaluate_then_sigterm)
  with pytest.raises(loop.Preempted):
    loop.train_and_evaluate(config, str(workdir))
  monkeypatch.undo()
  assert checkpointing.checkpoint_steps(workdir) == [1, 2]
  metrics = workdir / 'checkpoints' / '2' / 'metrics' / 'metrics'
  assert not metrics.exists()
  with pytest.raises(checkpointing.NoBestCheckpointError):
    restore.load_generator(workdir, best=True)

  results = loop.train_and_evaluate(config, str(workdir))  # Nothing to train: evaluates step 2.
  assert math.isfinite(results['psnr'])
  assert json.loads(metrics.read_text()) == {checkpointing.BEST_METRIC: results['psnr']}
  assert restore.load_generator(workdir, best=True).step == 2
  stored = metrics.read_bytes()
  loop.train_and_evaluate(config, str(workdir))  # A recorded PSNR is kept as it is.
  assert metrics.read_bytes() == stored
  np.testing.assert_array_equal(checkpointing.checkpoint_steps(workdir), [1, 2])
