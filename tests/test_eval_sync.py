"""One host's error on several hosts: the real training loop (`training.loop.train_and_evaluate`)
in two local processes over gloo collectives, with an error planted on one of them, before,
between and during the collectives the other host waits in; and the workdir probe that hosts
sharing a workdir run at the same time."""
import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

from ssen_jax import main as trainer_main

from conftest import compilation_cache_env

REPO = pathlib.Path(__file__).resolve().parents[1]

# Each process runs the real loop three times, an error planted each time on one host: an
# OSError while process 0 loads the evaluation data, a bad record in process 1's share of the
# training data, an out-of-memory at process 0's second evaluation image (the evaluation during
# training, which the other host waits for). A host that hangs is ended by the watchdog.
_SCRIPT = r'''
import faulthandler, pathlib, sys, time
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from ssen_jax.core import config as config_lib
from ssen_jax.data import input_pipeline
from ssen_jax.eval import protocol
from ssen_jax.training import loop

demo_dir, workdirs = sys.argv[3], pathlib.Path(sys.argv[4])
config = config_lib.load_module(pathlib.Path('configs/refsr.py')).get_config('tiny')
config.data.demo, config.data.demo_dir = True, demo_dir
config.num_train_steps, config.eval_every_steps = 1, 1
config.data.eval_max_images, config.num_image_summaries = 2, 0
me = jax.process_index()


def fail(error):
  def raise_it(*args, **kwargs):
    raise error
  return raise_it


real_evaluate = protocol.evaluate_model


def evaluate_then_fail(examples, sr_fn, *args, **kwargs):
  calls = []
  def sr(*a):
    calls.append(1)
    if len(calls) == 2:
      raise MemoryError('out of memory at image 2')
    return sr_fn(*a)
  return real_evaluate(examples, sr, *args, **kwargs)


real = (loop.load_eval_examples, input_pipeline.load_tfds_records, protocol.evaluate_model)
scenarios = {
    'eval_data': (0, lambda: setattr(loop, 'load_eval_examples',
                                     fail(OSError(5, 'Input/output error', 'eval/x.png')))),
    'train_data': (1, lambda: setattr(input_pipeline, 'load_tfds_records', fail(ValueError(
        "record 'x' in shard 1 has a 8x8 HR image, smaller than hr_patch 32")))),
    'evaluation': (0, lambda: setattr(protocol, 'evaluate_model', evaluate_then_fail)),
}
for name, (failing, plant) in scenarios.items():
  faulthandler.dump_traceback_later(float(sys.argv[5]), exit=True)
  loop.load_eval_examples, input_pipeline.load_tfds_records, protocol.evaluate_model = real
  if me == failing:
    plant()
  try:
    loop.train_and_evaluate(config, str(workdirs / name))
    print(f'{name}: process {me} finished', flush=True)
  except Exception as e:  # pylint: disable=broad-except
    print(f'{name}: process {me} {type(e).__name__} at {time.time():.2f}: {e}', flush=True)
faulthandler.cancel_dump_traceback_later()
'''


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
  from ssen_jax.data import demo_data  # pylint: disable=g-import-not-at-top
  from ssen_jax.data_prep import tfds_build  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('demo')
  tfds_build.prepare_demo(demo_data.default_root(str(root)))  # Once, not by both hosts at once.
  return str(root)


def test_one_hosts_error_stops_the_other_host_at_once(demo_dir, tmp_path):
  address = f'127.0.0.1:{_free_port()}'
  env = dict(os.environ, PYTHONPATH=str(REPO), **compilation_cache_env(),
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  procs = [subprocess.Popen([sys.executable, '-c', _SCRIPT, address, str(i), demo_dir,
                             str(tmp_path), '240'], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  reports = {}
  for out in outs:
    for m in re.finditer(r'^(\w+): process (\d) (\w+) at ([\d.]+): (.*)$', out, re.M):
      reports[m.group(1), int(m.group(2))] = (m.group(3), float(m.group(4)), m.group(5))
  log = '\n'.join(o[-3000:] for o in outs)
  expected = {
      'eval_data': (0, 'OSError', 'failed loading the evaluation data'),
      'train_data': (1, 'ValueError', 'failed reading its training data'),
      'evaluation': (0, 'MemoryError', 'the evaluation on process 0 failed'),
  }
  for name, (failing, error, told) in expected.items():
    waiting = 1 - failing
    assert (name, failing) in reports and (name, waiting) in reports, (name, log)
    assert reports[name, failing][0] == error, (name, log)
    kind, at, message = reports[name, waiting]
    assert kind in ('FailedElsewhere', 'EvalFailedElsewhere') and told in message, (name, log)
    # At once: not after the coordination service's heartbeat timeout (minutes).
    assert at - reports[name, failing][1] < 30, (name, log)
    print(f'\n[{name}] process {waiting}: {message} ({at - reports[name, failing][1]:.1f} s)')


def test_workdir_probe_names_differ_between_hosts_with_the_same_pid(tmp_path, monkeypatch):
  """Two hosts (containers, both PID 7) probe a shared workdir at the same time: the second
  host's whole probe runs between the first one's create and remove. Neither may report 'not a
  writable folder'."""
  monkeypatch.setattr(os, 'getpid', lambda: 7)
  real_remove = os.remove

  def other_host_probes_first(path):
    monkeypatch.setattr(os, 'remove', real_remove)
    trainer_main.check_workdir(str(tmp_path))  # The other host: same PID, same folder.
    real_remove(path)

  monkeypatch.setattr(os, 'remove', other_host_probes_first)
  trainer_main.check_workdir(str(tmp_path))  # Exits 1 with "not a writable folder" on a clash.
  assert list(tmp_path.iterdir()) == []
