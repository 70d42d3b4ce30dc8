"""SIGTERM handling: `checkpointing.PreemptionFlag` in this process, and the trainer's exit status
for a SIGTERM outside its protected block. The SIGTERMs during and after a save (a second one
while it commits) are tested end to end in test_train.py."""
import ctypes
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from ssen_jax.core import checkpointing

REPO = pathlib.Path(__file__).resolve().parents[1]


_LIBC = ctypes.CDLL(None)


def _c_action() -> bytes:
  """SIGTERM's C-level `struct sigaction`, read without changing it (glibc: 152 bytes)."""
  buf = ctypes.create_string_buffer(256)
  assert _LIBC.sigaction(signal.SIGTERM, None, buf) == 0
  return buf.raw


def _c_handler() -> int:
  """SIGTERM's C-level handler: 0 SIG_DFL, 1 SIG_IGN, else an address."""
  return ctypes.c_void_p.from_buffer_copy(_c_action()[:8]).value or 0


@pytest.fixture
def restore_sigterm():
  """Puts this process's SIGTERM action back as it was (C level included) after the test."""
  found = _c_action()
  previous = signal.getsignal(signal.SIGTERM)
  yield
  signal.signal(signal.SIGTERM, previous)
  _LIBC.sigaction(signal.SIGTERM, ctypes.create_string_buffer(found, 256), None)


def test_every_sigterm_reaches_the_handler_found_while_blocks_come_and_go(restore_sigterm):
  """A handler installed before the flag's is called for every SIGTERM, inside the blocks
  (chained), between them, and while they are entered and left: no instant at which SIGTERM is
  ignored (a signal arriving then would be lost) or not passed on."""
  seen = []
  signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
  lost, done = [], threading.Event()

  def send():
    for i in range(150):
      count = len(seen)
      os.kill(os.getpid(), signal.SIGTERM)
      deadline = time.time() + 1.0
      while len(seen) == count and time.time() < deadline:
        time.sleep(0.0002)
      if len(seen) == count:
        lost.append(i)
        if len(lost) >= 3:
          break
    done.set()

  sender = threading.Thread(target=send)
  sender.start()
  blocks = 0
  while not done.is_set():
    with checkpointing.PreemptionFlag() as flag:
      blocks += 1
    assert flag.requested in (True, False)
  sender.join()
  assert not lost, f'SIGTERMs {lost} never reached the handler found ({blocks} blocks)'
  assert blocks > 10


def test_a_python_handler_found_is_called_after_the_signal_is_recorded(restore_sigterm):
  calls = []
  flag = checkpointing.PreemptionFlag()
  previous = lambda signum, frame: calls.append(flag.requested)
  signal.signal(signal.SIGTERM, previous)
  with flag:
    os.kill(os.getpid(), signal.SIGTERM)
  assert calls == [True]
  assert signal.getsignal(signal.SIGTERM) is previous


def test_a_c_level_handler_found_is_chained_and_restored(restore_sigterm):
  """JAX's preemption notifier is a C handler (Python's table does not know it): the flag
  records the signal, calls it, and puts it back at exit."""
  calls = []
  handler = ctypes.CFUNCTYPE(None, ctypes.c_int)(calls.append)
  libc = ctypes.CDLL(None)
  libc.signal.restype = ctypes.c_void_p
  libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
  libc.signal(signal.SIGTERM, ctypes.cast(handler, ctypes.c_void_p))
  address = ctypes.cast(handler, ctypes.c_void_p).value
  with checkpointing.PreemptionFlag() as flag:
    assert _c_handler() != address  # Ours is installed.
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # The second one is absorbed the same way.
  assert flag.requested and calls == [signal.SIGTERM, signal.SIGTERM]
  assert _c_handler() == address


def test_default_and_ignore_are_not_chained(restore_sigterm):
  """Found SIG_DFL or SIG_IGN: inside the block SIGTERM is recorded (the process is not killed,
  the signal not ignored), and the found action is back afterwards."""
  for found in (signal.SIG_DFL, signal.SIG_IGN):
    signal.signal(signal.SIGTERM, found)
    with checkpointing.PreemptionFlag() as flag:
      os.kill(os.getpid(), signal.SIGTERM)
    assert flag.requested
    assert signal.getsignal(signal.SIGTERM) == found
    assert _c_handler() == int(found)


def _env():
  return dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS='--xla_force_host_platform_device_count=1')


def test_sigterm_before_training_starts_exits_143_not_by_the_signal(tmp_path):
  """Outside the block that writes checkpoints (here: the start-up, before any data is read),
  SIGTERM ends the trainer with status 143 and one line, not with a death by signal (-15): every
  checkpoint in the workdir is complete, and rerunning resumes. A second SIGTERM while it stops
  changes nothing."""
  # The signal is sent as soon as the handler is in place (the "JAX process" line), while the
  # trainer builds its model and prepares the demo data (seconds, in a folder of its own).
  proc = subprocess.Popen(
      [sys.executable, '-m', 'ssen_jax.main', '--config=configs/refsr.py:tiny',
       f'--workdir={tmp_path / "w"}', '--config.data.demo=True',
       f'--config.data.demo_dir={tmp_path / "demo"}'],
      env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if 'JAX process 0/1' in line:
      break
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  lines += proc.stderr.read().splitlines(keepends=True)
  assert proc.wait(timeout=120) == checkpointing.PREEMPTED_EXIT_CODE, ''.join(lines)[-3000:]
  text = ''.join(lines)
  assert 'Traceback' not in text
  assert re.search(r'SIGTERM outside training .*exiting with status 143', text), text[-3000:]
  assert checkpointing.checkpoint_steps(tmp_path / 'w') == []


# --- Exit statuses: docs/exit_statuses.md ------------------------------------------------------

def _documented_statuses() -> dict:
  """{module: {column: cell}} from the table of docs/exit_statuses.md."""
  lines = (REPO / 'docs' / 'exit_statuses.md').read_text().splitlines()
  header = next(l for l in lines if l.startswith('| Command |'))
  columns = [c.strip() for c in header.strip('|').split('|')]
  rows = {}
  for line in lines:
    m = re.match(r'\| `python -m ssen_jax\.([\w.]+)` \|', line)
    if m:
      rows[m.group(1)] = dict(zip(columns, (c.strip() for c in line.strip('|').split('|'))))
  return rows


def _commands() -> set:
  """Every `python -m` command: test_layering's COMMANDS and the data_prep modules with a main."""
  from test_layering import COMMANDS  # pylint: disable=g-import-not-at-top
  data_prep = {f'data_prep.{p.stem}' for p in (REPO / 'ssen_jax' / 'data_prep').glob('*.py')
               if "if __name__ == '__main__':" in p.read_text()}
  return set(COMMANDS) | data_prep


def test_the_exit_status_table_lists_every_command():
  table = _documented_statuses()
  assert set(table) == _commands()
  for module, row in table.items():
    assert (row['Finished'], row['Error']) == ('0', '1'), module
  assert table['main']['SIGTERM'].startswith(str(checkpointing.PREEMPTED_EXIT_CODE))


def test_every_command_exits_with_its_documented_usage_status(tmp_path):
  """An unknown flag, for every command at once; and convert_torch without its .pth argument."""
  table = _documented_statuses()
  env = dict(os.environ, PYTHONPATH=str(REPO))
  runs = {m: subprocess.Popen([sys.executable, '-m', f'ssen_jax.{m}', '--no_such_flag'], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for m in table}
  runs['convert_torch (no IN.pth)'] = subprocess.Popen(
      [sys.executable, '-m', 'ssen_jax.convert_torch', '--config=x',
       f'--out_dir={tmp_path / "o"}'],
      env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for name, proc in runs.items():
    _, err = proc.communicate(timeout=300)
    expected = int(table[name.split()[0]]['Usage error'])
    assert proc.returncode == expected, (name, err[-2000:])
    assert 'Traceback' not in err, (name, err[-2000:])
    assert re.search(r'^(FATAL Flags parsing error: |error: )', err, re.M), (name, err[-2000:])
