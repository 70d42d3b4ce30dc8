"""Training end to end: real `train_and_evaluate` steps on tiny configs and the embedded demo data,
sharding equivalence, multi-process training, kill-and-resume, the NaN guard, no recompilation."""
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ssen_jax.core import checkpointing
from ssen_jax.core import sharding
from ssen_jax.data import demo_data
from ssen_jax.inference import restore
from ssen_jax.training import loop as train
from ssen_jax.training import steps

from conftest import compilation_cache_env, config_module

refsr = config_module('refsr')
refsr_gan = config_module('refsr_gan')
selfsim = config_module('selfsim')

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
  from ssen_jax.data import demo_data
  root = tmp_path_factory.mktemp('demo')
  demo_data.build_demo_data(root)
  return str(root)


def tiny_config(demo_dir, arg='tiny', module=refsr):
  config = module.get_config(arg)
  config.data.demo = True
  config.data.demo_dir = demo_dir
  config.data.eval_max_images = 2
  return config


def final_params(workdir):
  gen = restore.load_generator(workdir)
  return jax.tree.map(np.asarray, gen.params), gen.step


def assert_all_finite(params):
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    assert np.all(np.isfinite(leaf)), jax.tree_util.keystr(path)


@pytest.fixture(scope='module')
def refsr_run(demo_dir, tmp_path_factory):
  """The tiny RefSR config trained from scratch in this process, 2 steps (checkpoints 1 and 2,
  evaluated at 2): (config, workdir, results). Trained once for the module; the tests that go on
  training from it work on a copy (`copy_run`), so the workdir stays as the run left it."""
  config = tiny_config(demo_dir)
  workdir = tmp_path_factory.mktemp('refsr_run') / 'rec'
  results = train.train_and_evaluate(config, str(workdir))
  return config, workdir, results


def copy_run(refsr_run, dest):
  """A copy of the module's trained workdir at `dest`, and a fresh copy of its config."""
  config, workdir, _ = refsr_run
  shutil.copytree(workdir, dest)
  return config.copy_and_resolve_references(), dest


def test_refsr_then_gan_stage(refsr_run, demo_dir, tmp_path):
  config, rec, results = refsr_run
  assert set(results['levels']) == {'XH', 'H', 'M', 'L', 'XL'}
  assert np.isfinite(results['psnr']) and 0 < results['ssim'] <= 1
  params, step = final_params(rec)
  assert step == config.num_train_steps
  assert_all_finite(params)
  assert list(rec.glob('events.out.tfevents.*'))

  # The trained workdir evaluates from the command line: Table 3 per-level rows and JSON.
  out_json = tmp_path / 'eval.json'
  evaluated = subprocess.run(
      [sys.executable, '-m', 'ssen_jax.evaluate', f'--workdir={rec}',
       '--layout=cufed5', f'--dataset_dir={pathlib.Path(demo_dir) / demo_data.DEMO_NAME / "eval"}',
       f'--out={out_json}'], env=_env(), cwd=REPO, capture_output=True, text=True)
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  assert '| method | XH | H | M | L | XL | mean | oracle | unrelated | ref_gain |' in evaluated.stdout
  assert '| Bicubic |' in evaluated.stdout and f'| ssen (step {step}) |' in evaluated.stdout
  report = json.loads(out_json.read_text())
  assert set(report['levels']) == {'XH', 'H', 'M', 'L', 'XL'} and report['step'] == step
  assert set(report['controls']) == {'oracle', 'unrelated'}
  assert report['ref_gain'] == report['levels']['XH']['psnr'] - report['controls']['unrelated']['psnr']
  assert np.isclose(report['psnr'], np.mean([v['psnr'] for v in report['levels'].values()]))

  gan = tiny_config(demo_dir, module=refsr_gan)
  gan.gan.init_workdir = str(rec)
  gan.num_train_steps = 1
  train.train_and_evaluate(gan, str(tmp_path / 'gan'))
  gan_params, _ = final_params(tmp_path / 'gan')
  assert_all_finite(gan_params)
  # The generator started from the reconstruction run, not from a fresh initialisation: one small
  # Adam step moves each weight by at most about the learning rate.
  moved = max(float(np.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(gan_params), jax.tree.leaves(params)))
  assert moved < 10 * gan.optim.learning_rate


def test_selfsim_on_benchmark_folder(demo_dir, tmp_path, set5_dir, caplog):
  caplog.set_level('INFO')
  config = tiny_config(demo_dir, module=selfsim)
  config.data.demo = False
  from ssen_jax.data_prep import tfds_build
  config.data.tfds_name, config.data.tfds_data_dir, _ = tfds_build.prepare_demo(demo_dir)
  # A benchmark folder holding Set5's smallest image (butterfly, 256x256): the first in Set5's
  # order, baby, is 512x512, four times the pixels for the network to attend over at evaluation.
  eval_dir = tmp_path / 'set5'
  eval_dir.mkdir()
  shutil.copyfile(set5_dir / 'butterfly.png', eval_dir / 'butterfly.png')
  config.data.eval_dir = str(eval_dir)
  config.data.eval_max_images = 1
  results = train.train_and_evaluate(config, str(tmp_path / 'selfsim'))
  assert results['levels'] == {} and np.isfinite(results['psnr'])
  # Evaluation progress (i/N per image) and its wall time are logged.
  assert re.search(r'Step \d+ eval \[1/1\] \w+: PSNR', caplog.text), caplog.text[-2000:]
  assert re.search(r'Step \d+ eval: .*\(\d+\.\d s\)', caplog.text), caplog.text[-2000:]
  params, _ = final_params(tmp_path / 'selfsim')
  assert 'ssen' in params and 'groups_0' in params
  assert_all_finite(params)


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  p, s, b = config.data.hr_patch, config.model.scale, config.batch_size
  return {'lr': rng.uniform(size=(b, p // s, p // s, 3)).astype(np.float32),
          'hr': rng.uniform(size=(b, p, p, 3)).astype(np.float32),
          'ref': rng.uniform(size=(b, p, p, 3)).astype(np.float32)}


def test_eight_devices_match_one_and_never_recompile():
  assert jax.device_count() == 8, 'conftest sets 8 simulated CPU devices'
  config = refsr.get_config('tiny')
  results = {}
  for n in (1, 8):
    mesh = sharding.create_mesh(jax.devices()[:n])
    trainer = steps.Trainer(config, mesh)
    state = trainer.init_state(0)
    for i in range(3):
      state, metrics = trainer.train_step(state, sharding.global_batch(_batch(config, i), mesh))
    assert trainer.train_step._cache_size() == 1  # One trace, one compilation, for all steps.
    results[n] = jax.tree.map(np.asarray, (state['params'], metrics))
  for a, b in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[8])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert any(s.data.shape[0] == 1 for s in
             sharding.global_batch(_batch(config), sharding.create_mesh())['lr'].addressable_shards)


def _main_cmd(workdir, *overrides, config='configs/refsr.py:tiny'):
  return [sys.executable, '-m', 'ssen_jax.main', f'--config={config}', f'--workdir={workdir}',
          *overrides]


def _env(devices=1):
  """The trainer's environment: `devices` CPU devices, the session's compilation cache (runs of
  the same config and device count compile once)."""
  return dict(os.environ, PYTHONPATH=str(REPO),
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              **compilation_cache_env())


def test_kill_and_resume_is_bitwise_identical(demo_dir, tmp_path):
  # The tiny config's learning rate cycles every 2 steps: a resume at the wrong step would show.
  # Two devices, like test_sigterm_on_one_host_saves_and_exits_143: the same compiled programs.
  common = ['--config.data.demo=True', f'--config.data.demo_dir={demo_dir}',
            '--config.num_train_steps=6',
            '--config.eval_every_steps=1000', '--config.data.eval_max_images=1',
            '--config.num_image_summaries=0', '--config.log_every_steps=2']
  subprocess.run(_main_cmd(tmp_path / 'straight', *common), env=_env(2), cwd=REPO, check=True,
                 capture_output=True)
  killed = tmp_path / 'killed'
  proc = subprocess.Popen(_main_cmd(killed, *common), env=_env(2), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (killed / 'checkpoints' / '3').is_dir():
    assert proc.poll() is None, 'training ended before it could be killed'
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL, 'the run must have been killed, not have finished'
  assert not (killed / 'checkpoints' / '6').exists(), 'the kill must land before the last step'
  resumed = subprocess.run(_main_cmd(killed, *common), env=_env(2), cwd=REPO,
                           capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  resumed_from = int(re.search(r'Resumed from step (\d+)', resumed.stderr).group(1))
  assert 3 <= resumed_from < 6
  a, step_a = final_params(tmp_path / 'straight')
  b, step_b = final_params(killed)
  assert step_a == step_b == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_nan_loss_stops_with_message_and_keeps_checkpoint(demo_dir, tmp_path):
  result = subprocess.run(
      _main_cmd(tmp_path, '--config.data.demo=True', f'--config.data.demo_dir={demo_dir}',
                '--config.num_train_steps=20', '--config.optim.learning_rate=1e30',
                '--config.optim.cycle_steps=20', '--config.log_every_steps=10'),
      env=_env(), cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert re.match(r'error: loss became (nan|inf|-inf) at step \d+; training stopped', last), last
  kept = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert kept, 'the checkpoints before the NaN must stay'
  params, _ = final_params(tmp_path)
  assert_all_finite(params)


def test_non_finite_parameters_with_finite_loss_are_never_saved(demo_dir, tmp_path):
  # An infinite learning rate: step 1's loss and gradients are finite (computed before the
  # update), its new parameters are not. The old guard looked at the loss only and saved them.
  config = tiny_config(demo_dir)
  config.optim.learning_rate = 1e39
  config.eval_every_steps = 1000
  with pytest.raises(train.NonFiniteLossError,
                     match=r'^parameters or optimiser state became non-finite at step 1;'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not [p for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()]


def _demo_tfds_flags(demo_dir):
  """Flags that train on the demo's TFDS dataset (prepared once under demo_dir)."""
  from ssen_jax.data_prep import tfds_build  # pylint: disable=g-import-not-at-top
  name, data_dir, _ = tfds_build.prepare_demo(demo_dir)
  return [f'--config.data.tfds_name={name}', f'--config.data.tfds_data_dir={data_dir}']


def test_eval_image_too_small_to_score_stops_before_the_first_step(demo_dir, tmp_path):
  """An evaluation image smaller than shave + SSIM window: one line and exit 1 at start-up, not a
  traceback at the first evaluation after training steps."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  eval_dir = tmp_path / 'eval'
  eval_dir.mkdir()
  Image.fromarray(np.full((12, 12, 3), 128, np.uint8)).save(eval_dir / 'tiny.png')
  proc = subprocess.run(
      _main_cmd(tmp_path / 'w', *_demo_tfds_flags(demo_dir),
                f'--config.data.eval_dir={eval_dir}', '--config.data.eval_dataset=folder',
                '--config.log_every_steps=1', '--config.eval_every_steps=2'),
      env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr and 'train/' not in proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert errors == ['error: evaluation image tiny is 12x12 (HR, cropped to a multiple of 4); '
                    'scoring shaves 4 pixels per border and SSIM needs an 11x11 window, so every '
                    'image must be at least 19x19'], proc.stderr[-3000:]
  assert checkpointing.checkpoint_steps(tmp_path / 'w') == []


def test_resume_with_another_host_count_warns_and_records_it(refsr_run, tmp_path, caplog):
  """The data stream depends on the host count and the batch size: a resume that changes them says
  so in one warning and in config_history.json (here the first run is made to look like 2 hosts)."""
  config, workdir = copy_run(refsr_run, tmp_path / 'w')  # Trained 2 steps by one host.
  stream = json.loads((workdir / train.DATA_STREAM_FILE).read_text())
  assert stream == {'process_count': 1, 'batch_size': config.batch_size,
                    'local_batch_size': config.batch_size}
  (workdir / train.DATA_STREAM_FILE).write_text(json.dumps(
      dict(stream, process_count=2, local_batch_size=config.batch_size // 2)))
  config.update(num_train_steps=3, num_image_summaries=0)
  with caplog.at_level('WARNING'):
    train.train_and_evaluate(config, str(workdir))
  [warning] = [r.getMessage() for r in caplog.records if 'another data stream' in r.getMessage()]
  assert warning == (
      f'Resuming step 2 with another data stream: process_count 2 -> 1, local_batch_size '
      f'{config.batch_size // 2} -> {config.batch_size}; the batches from step 3 on differ from '
      'those of an uninterrupted run (recorded in config_history.json).')
  [entry] = [h for h in json.loads((workdir / 'config_history.json').read_text())
             if 'data_stream.process_count' in h['changes']]
  assert entry['effective_from_step'] == 3
  assert entry['changes']['data_stream.process_count'] == {'old': 2, 'new': 1}
  assert json.loads((workdir / train.DATA_STREAM_FILE).read_text()) == stream


def test_resume_refuses_a_changed_config_before_writing(refsr_run, demo_dir, tmp_path):
  _, workdir = copy_run(refsr_run, tmp_path / 'w')  # Trained 2 steps, seed 0, 8 features.
  stored = (workdir / 'config.json').read_bytes()

  wider = tiny_config(demo_dir)
  wider.model.features = 16
  with pytest.raises(checkpointing.ConfigChangeError, match=r'model\.features \(8 -> 16\)'):
    train.train_and_evaluate(wider, str(workdir), allow_config_change=True)
  reseeded = tiny_config(demo_dir)
  reseeded.update(seed=7, num_train_steps=3)
  with pytest.raises(checkpointing.ConfigChangeError,
                     match=r'seed \(0 -> 7\); pass --allow_config_change'):
    train.train_and_evaluate(reseeded, str(workdir))
  assert (workdir / 'config.json').read_bytes() == stored  # Refused runs write nothing.
  assert not (workdir / 'config_history.json').exists()

  train.train_and_evaluate(reseeded, str(workdir), allow_config_change=True)
  assert checkpointing.read_config(workdir).seed == 7
  history = json.loads((workdir / 'config_history.json').read_text())
  assert len(history) == 1 and history[0]['effective_from_step'] == 3
  assert history[0]['changes']['seed'] == {'old': 0, 'new': 7}
  assert history[0]['changes']['num_train_steps'] == {'old': 2, 'new': 3}


@pytest.mark.parametrize('damaged', ['all_files', 'array_data'])
def test_corrupt_latest_checkpoint_is_set_aside(refsr_run, tmp_path, caplog, damaged):
  config, workdir = copy_run(refsr_run, tmp_path / 'w')  # Checkpoints at steps 1 and 2.
  json_files = ('_CHECKPOINT_METADATA', '_METADATA', 'metrics')
  for f in (workdir / 'checkpoints' / '2').rglob('*'):  # A save cut short: files truncated.
    if f.is_file() and (damaged == 'all_files' or f.name not in json_files):
      f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 3])
  config.num_train_steps = 3
  with caplog.at_level('INFO'):
    train.train_and_evaluate(config, str(workdir))
  warning = [r.getMessage() for r in caplog.records if 'cannot be restored' in r.getMessage()]
  assert warning and 'resuming from step 1' in warning[0], warning
  assert any(r.getMessage() == 'Resumed from step 1.' for r in caplog.records)
  aside = list((workdir / 'checkpoints').glob('2.corrupt-*'))
  assert len(aside) == 1 and any(aside[0].rglob('*'))  # Renamed, not deleted.
  params, step = final_params(workdir)
  assert step == 3
  assert_all_finite(params)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _wait_for(paths, pattern, procs, timeout=400):
  """Waits until one of the log files matches `pattern` (regex); returns the match."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    for path in paths:
      m = re.search(pattern, pathlib.Path(path).read_text(errors='replace'))
      if m:
        return m
    for p, path in zip(procs, paths):
      assert p.poll() is None, f'ended early: {pathlib.Path(path).read_text()[-3000:]}'
    time.sleep(0.1)
  raise AssertionError(f'{pattern!r} not seen in {timeout} s')


def _launch(workdir, args, logs, processes):
  port = _free_port()
  multi = [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={processes}']
  procs = []
  for i, log in enumerate(logs):
    extra = multi + [f'--process_id={i}'] if processes > 1 else []
    procs.append(subprocess.Popen(_main_cmd(workdir, *args, *extra), env=_env(2), cwd=REPO,
                                  stdout=open(log, 'w'), stderr=subprocess.STDOUT))
  return procs


# The tiny config's optimiser, like the other runs of this module: runs with the same config and
# device count load each other's compiled programs from the session's cache.
_PREEMPT_ARGS = ['--config.num_train_steps=100000',
                 '--config.data.eval_max_images=0', '--config.num_image_summaries=0',
                 '--config.log_every_steps=1', '--config.checkpoint_every_steps=2']


def _preempted_steps(procs, logs, signalled_at):
  saved = []
  for p, log in zip(procs, logs):
    rc = p.wait(timeout=120)
    text = pathlib.Path(log).read_text()
    assert rc == checkpointing.PREEMPTED_EXIT_CODE, text[-3000:]
    saved.append(int(re.search(r'Preemption: step (\d+) saved', text).group(1)))
  assert time.time() - signalled_at < 120
  return saved


@pytest.fixture(scope='module')
def preempted_workdir(tmp_path_factory):
  """One workdir that the SIGTERM tests below preempt in turn: each run resumes the last one's
  save (and its compiled programs come from the session's cache)."""
  return tmp_path_factory.mktemp('preempted') / 'w'


def _preempt_twice(workdir, demo_dir, log, gap):
  """Trains `workdir` on, sends SIGTERM two steps after the start and again `gap` s after the run
  logs that it is saving; checks that the run saved the step it stopped at, completely, and
  exited 143. Returns (step, log)."""
  before = checkpointing.checkpoint_steps(workdir)
  start = before[-1] if before else 0
  args = ['--config.data.demo=True', f'--config.data.demo_dir={demo_dir}',
          '--config.eval_every_steps=100000', *_PREEMPT_ARGS]
  procs = _launch(workdir, args, [log], 1)
  _wait_for([log], rf'\[{start + 2}\] train/', procs)
  procs[0].send_signal(signal.SIGTERM)
  signalled_at = time.time()
  while 'Preemption: saving step' not in pathlib.Path(log).read_text(errors='replace'):
    assert procs[0].poll() is None and time.time() - signalled_at < 120, 'no save logged'
    time.sleep(0.005)
  time.sleep(gap)
  procs[0].send_signal(signal.SIGTERM)  # Nothing if the process has already exited.
  [step] = _preempted_steps(procs, [log], signalled_at)
  text = pathlib.Path(log).read_text()
  if before:
    assert f'Resumed from step {start}.' in text
  assert start + 2 <= step < 100000
  assert checkpointing.checkpoint_steps(workdir)[-1] == step
  leftovers = [p.name for p in (workdir / 'checkpoints').iterdir() if 'tmp' in p.name]
  assert not leftovers, (leftovers, text[-3000:])
  return step, text


@pytest.mark.parametrize('gap', [0.05, 0.5, 1.0])
def test_sigterm_twice_saves_the_step_completely_and_exits_143(demo_dir, preempted_workdir,
                                                               tmp_path, gap):
  """A second SIGTERM `gap` s after the save started (while it commits, or during the exit that
  follows) neither kills the process nor changes its status: 143 means the step named in the log
  is saved and complete."""
  _preempt_twice(preempted_workdir, demo_dir, tmp_path / 'log', gap)


def test_twice_preempted_run_resumes_bitwise_equal(demo_dir, preempted_workdir, tmp_path):
  """The runs above, resumed to one step past the last save, end with the parameters of a run
  that was never interrupted."""
  if not checkpointing.checkpoint_steps(preempted_workdir):  # Run on its own.
    _preempt_twice(preempted_workdir, demo_dir, tmp_path / 'log', 0.5)
  total = checkpointing.checkpoint_steps(preempted_workdir)[-1] + 1
  common = ['--config.data.demo=True', f'--config.data.demo_dir={demo_dir}',
            '--config.eval_every_steps=100000', *_PREEMPT_ARGS,
            f'--config.num_train_steps={total}']  # After _PREEMPT_ARGS: replaces its value.
  for workdir in (preempted_workdir, tmp_path / 'straight'):
    proc = subprocess.run(_main_cmd(workdir, *common), env=_env(2), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
  a, step_a = final_params(preempted_workdir)
  b, step_b = final_params(tmp_path / 'straight')
  assert step_a == step_b == total
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_sigterm_to_one_of_two_hosts_in_training_and_in_evaluation(demo_dir, tmp_path):
  """SIGTERM to process 1 only: both save the same step and exit 143; then, resumed, SIGTERM
  during an evaluation cuts it short on both hosts, which save the evaluation's step."""
  workdir, logs = tmp_path / 'w', [tmp_path / 'a0', tmp_path / 'a1']
  common = ['--config.data.demo=True', f'--config.data.demo_dir={demo_dir}', *_PREEMPT_ARGS]
  procs = _launch(workdir, [*common, '--config.eval_every_steps=100000'], logs, 2)
  _wait_for(logs, r'\[2\] train/', procs)
  procs[1].send_signal(signal.SIGTERM)
  saved = _preempted_steps(procs, logs, time.time())
  assert saved[0] == saved[1] >= 2
  assert checkpointing.checkpoint_steps(workdir)[-1] == saved[0]

  eval_step = saved[0] + 2
  logs = [tmp_path / 'b0', tmp_path / 'b1']
  procs = _launch(workdir, [*common, f'--config.eval_every_steps={eval_step}'], logs, 2)
  _wait_for(logs, rf'Step {eval_step}: evaluating', procs)
  procs[1].send_signal(signal.SIGTERM)
  saved = _preempted_steps(procs, logs, time.time())
  assert saved == [eval_step, eval_step]
  for log in logs:
    text = pathlib.Path(log).read_text()
    assert f'Resumed from step {eval_step - 2}' in text
    assert f'SIGTERM during the evaluation of step {eval_step}' in text
    assert f'Step {eval_step} eval:' not in text  # Cut short, not finished.
  assert checkpointing.checkpoint_steps(workdir)[-1] == eval_step


def test_two_processes_train_together_and_evaluate_on_process_0_only(demo_dir, tmp_path):
  """Two hosts compute the same global steps. Only process 0 opens eval_dir: process 1 is given a
  folder that does not exist. Both save the same best metric (process 0's PSNR, handed to
  process 1)."""
  port = _free_port()
  demo = pathlib.Path(demo_dir) / demo_data.DEMO_NAME
  common = [*_demo_tfds_flags(demo_dir), '--config.num_train_steps=2', '--config.eval_every_steps=1000',
            '--config.data.eval_max_images=1', '--config.num_image_summaries=0',
            f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2']
  eval_dirs = [demo / 'eval', tmp_path / 'not_on_this_host']
  procs = [subprocess.Popen(_main_cmd(tmp_path / 'w', *common, f'--process_id={i}',
                                      f'--config.data.eval_dir={eval_dirs[i]}'),
                            env=_env(2), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert 'JAX process 0/2, 2 local / 4 global devices' in outs[0]
  assert 'JAX process 1/2, 2 local / 4 global devices' in outs[1]
  losses = []
  for out in outs:
    line = [l for l in out.splitlines() if '[2] train/' in l][0]
    losses.append(line[line.index('train/'):])
  assert losses[0] == losses[1]  # Both hosts computed the same global step.
  assert 'Step 2: evaluating 1 examples.' in outs[0] and 'evaluating' not in outs[1]
  params, step = final_params(tmp_path / 'w')
  assert step == 2
  assert_all_finite(params)
  with checkpointing.create_manager(tmp_path / 'w', save_every=1, keep=1,
                                    read_only=True) as manager:
    assert manager.best_step() == 2
