r"""Trains and evaluates SSEN: `python -m ssen_jax.main --config configs/refsr.py --workdir DIR`.

Config fields are overridden on the command line (`--config.batch_size=16`); variants are chosen
after a colon (`--config configs/refsr.py:demo`). Rerunning the same command resumes from the
latest checkpoint in the workdir. On several hosts (TPU pod slices, SLURM GPU clusters) every host
runs the same command; `jax.distributed.initialize()` finds its peers from the environment.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and summaries.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
_MULTIHOST = flags.DEFINE_enum(
    'multihost', 'auto', ['auto', 'on', 'off'],
    'Call jax.distributed.initialize(): auto = when a cluster environment is detected '
    '(TPU pod slice, SLURM with several tasks, or JAX_COORDINATOR_ADDRESS set).')


def _cluster_detected() -> bool:
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return True
  if int(env.get('SLURM_NTASKS', '1')) > 1:
    return True
  # Multi-worker TPU VMs list their workers here.
  return len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  import jax  # Imported after flag parsing so that --help stays fast.

  if _MULTIHOST.value == 'on' or (_MULTIHOST.value == 'auto' and _cluster_detected()):
    jax.distributed.initialize()
  from ssen_jax import train
  logging.info('JAX process %d/%d, %d local / %d global devices (%s).', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.default_backend())
  try:
    train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)
  except (train.NonFiniteLossError, ValueError, FileNotFoundError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
