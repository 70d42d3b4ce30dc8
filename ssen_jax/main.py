r"""Trains and evaluates SSEN: `python -m ssen_jax.main --config configs/refsr.py --workdir DIR`.

Exit status: 0 when the run finished, 1 with a one-line error, 143
(`checkpointing.PREEMPTED_EXIT_CODE`) when SIGTERM on any host made every host save the same step
and stop (also during an evaluation): rerun the same command to resume.

Config fields are overridden on the command line (`--config.batch_size=16`); variants are chosen
after a colon (`--config configs/refsr.py:demo`). Rerunning the same command resumes from the
latest checkpoint in the workdir. On several hosts (TPU pod slices, SLURM GPU clusters) every host
runs the same command; `jax.distributed.initialize()` finds its peers from the environment.
"""
import os
import socket
import sys
import uuid

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ssen_jax.core import cli

USAGE = """Trains and evaluates SSEN; rerunning the same command resumes from the latest checkpoint.

  python -m ssen_jax.main --config configs/refsr.py[:variant] --workdir DIR \\
      [--config.batch_size=16 --config.model.num_dcn_layers=2 ...]
  (also the console command ssen-train)"""
EXIT_STATUSES = ('exit status: 0 finished; 1 an error or a usage error (one line on stderr); 143 '
                 'stopped by SIGTERM with every checkpoint complete: rerun to resume '
                 '(docs/exit_statuses.md).')

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and summaries.')
config_flags.DEFINE_config_file('config', None, 'Config FILE[:variants]; override a field with '
                                '--config.a.b=V.', lock_config=True)
_MULTIHOST = flags.DEFINE_enum(
    'multihost', 'auto', ['auto', 'on', 'off'],
    'Call jax.distributed.initialize(): auto = when a cluster environment is detected '
    '(TPU pod slice, SLURM with several tasks, or JAX_COORDINATOR_ADDRESS set).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, where the environment does not tell '
    'JAX (e.g. several processes on one machine); implies --multihost=on.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'With --coordinator_address.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'With --coordinator_address.')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume a workdir with a config that differs from its '
    'config.json in fields that keep the shapes (seed, learning rate, data, ...); the change is '
    'recorded in config_history.json. Shape changes (model.*, ...) are always refused.')


def _cluster_detected() -> bool:
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return True
  if int(env.get('SLURM_NTASKS', '1')) > 1:
    return True
  # Multi-worker TPU VMs list their workers here.
  return len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1


class _LibraryInfoFilter(logging.logging.Filter):
  """Drops INFO records from Orbax and JAX internals so that training progress stays readable."""
  NOISY = ('/orbax/', '/jax/_src/', '/tensorstore/')
  # Orbax warns at every save without metrics once best_fn is set; saves between evaluations
  # carry none by design (ssen_jax.core.checkpointing.create_manager).
  EXPECTED = ('Requested `tracked_metric`; did not provide metrics.',)

  def filter(self, record):
    if record.getMessage() in self.EXPECTED:
      return False
    return record.levelno > logging.logging.INFO or not any(
        part in record.pathname for part in self.NOISY)


def quiet_library_logs() -> None:
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def _refuse_retired_override(argv) -> None:
  """A failed override of a field the configs no longer have (the TFRecord shards'
  `--config.data.train_pattern`): the line that says what replaced it."""
  from ssen_jax.data import datasets  # pylint: disable=g-import-not-at-top
  flag = f'--config.{datasets.RETIRED_TRAIN_PATTERN}'
  for i, arg in enumerate(argv):
    name, equals, value = arg.partition('=')
    if name == flag:
      if not equals:  # `--config.data.train_pattern GLOB`
        value = argv[i + 1] if i + 1 < len(argv) else ''
      _fail(datasets.retired_train_pattern(value))


def parse_flags(argv):
  """absl's parsing, with a bad config override (`--config.batch_sise=16`, a wrong type) as one
  line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    _refuse_retired_override(argv)
    text = str(e).strip('\'"').replace('\\n', '\n').replace("\\'", "'")
    _fail('bad --config override: ' + '; '.join(l.strip('\'" ') for l in text.splitlines()))


def check_workdir(workdir: str) -> None:
  """Checks that the workdir takes files (or can be created), before anything is computed.

  Creates nothing: the training creates the workdir once every check has passed, so a refused
  run leaves it as it was (absent or untouched). A missing workdir is probed at its nearest
  existing ancestor."""
  if '://' in workdir:  # Buckets: Orbax reports access problems itself.
    return
  folder = os.path.abspath(workdir)
  while not os.path.lexists(folder) and os.path.dirname(folder) != folder:
    folder = os.path.dirname(folder)
  try:
    if not os.path.isdir(folder):
      raise NotADirectoryError(20, 'Not a directory')
    # A name no other host can choose, even one with the same PID (containers): hosts that share
    # the workdir probe it at the same time.
    probe = os.path.join(folder, f'.write_test-{socket.gethostname()}-{os.getpid()}-'
                                  f'{uuid.uuid4().hex}')
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as e:
    _fail(f'--workdir {workdir} is not a writable folder: {e.strerror or e}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from ssen_jax.core import checkpointing  # Imports JAX: after flag parsing, --help stays fast.
  # From here to the end, SIGTERM exits with status 143 (training saves first); never -15.
  checkpointing.PreemptionFlag.install_process_handler()
  check_workdir(_WORKDIR.value)
  import jax  # Imported after flag parsing so that --help stays fast.

  explicit = _COORDINATOR.value is not None
  if explicit or _MULTIHOST.value == 'on' or (_MULTIHOST.value == 'auto' and _cluster_detected()):
    # CPU processes exchange collectives through gloo; accelerators ignore this setting.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from ssen_jax.training import loop
  quiet_library_logs()
  logging.info('JAX process %d/%d, %d local / %d global devices (%s).', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.default_backend())
  try:
    loop.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value,
                            allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except loop.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(checkpointing.PREEMPTED_EXIT_CODE)
  except (loop.NonFiniteLossError, loop.FailedElsewhere, ValueError, OSError,
          checkpointing.CorruptCheckpointError, checkpointing.CheckpointReadError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def run() -> None:
  """The console command `ssen-train` (the same as `python -m ssen_jax.main`)."""
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main, USAGE, exit_statuses=EXIT_STATUSES, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
