"""The hand-over between process 0's evaluation during training and the hosts that wait for it
(`training.loop._EvalSync`), over real gloo collectives between two local processes."""
import os
import socket
import subprocess
import sys
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]

# Process 0 evaluates two images, then raises as an evaluation can (an XLA error, a full disk);
# `run_eval` hands the failure over with `fail`. Process 1 waits as during training.
_SCRIPT = r'''
import sys, time
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from ssen_jax.training import loop
sync = loop._EvalSync(None)
start = time.time()
if jax.process_index() == 0:
  for _ in range(2):
    sync.check()
  try:
    raise MemoryError('out of memory at image 3')
  except BaseException:
    sync.fail()
  print('process 0 handed the failure over', flush=True)
else:
  try:
    sync.wait()
    print('process 1 got a PSNR', flush=True)
  except loop.EvalFailedElsewhere as e:
    print(f'process 1 stopped after {time.time() - start:.1f} s: {e}', flush=True)
'''


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_a_failure_of_process_0s_evaluation_stops_the_waiting_host_at_once():
  address = f'127.0.0.1:{_free_port()}'
  env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS='--xla_force_host_platform_device_count=1')
  procs = [subprocess.Popen([sys.executable, '-c', _SCRIPT, address, str(i)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  assert 'process 0 handed the failure over' in outs[0]
  line = [l for l in outs[1].splitlines() if l.startswith('process 1')][0]
  assert 'the evaluation on process 0 failed' in line, outs[1]
  # At once: not after the coordination service's heartbeat timeout (minutes).
  print(f'\n[eval sync] {line}')
  assert float(line.split('after ')[1].split(' s')[0]) < 30
