r"""Imports a PyTorch checkpoint (.pth) of an SSEN network as a workdir that `infer`, `evaluate`
and `visualize_offsets` accept.

  python -m ssen_jax.convert_torch IN.pth --config configs/refsr.py[:variant] --out_dir DIR \
      [--overwrite]

The architecture comes from the config (its `model` section); the state_dict keys map onto the
flax parameters by `ssen_jax.interop.convert`'s naming rule. If the .pth does not fit the
architecture, one error lists every missing, unexpected and mis-shaped parameter and nothing is
written.

DIR receives `config.json` and an Orbax checkpoint at step 0 holding the converted parameters and
a fresh optimiser state (so DIR can also start a fine-tuning run; `ssen_jax.training.workdir`). A
non-empty DIR is refused without --overwrite, which replaces DIR/config.json and DIR/checkpoints
and keeps DIR's other files; a training workdir is always refused. The new DIR is built complete
in a folder beside it and swapped in as one folder (`ssen_jax.data_prep.folder_swap`): DIR is
all-old or all-new; a run killed between the swap's two renames leaves the old DIR whole in
.DIR.old, and the next convert_torch puts it back before anything else.

The old spelling --out (now --out_dir) is accepted for one release with a warning line.
"""
from __future__ import annotations

import sys
from typing import Sequence

from absl import flags
from absl import logging

from ssen_jax.core import cli

FLAGS = flags.FLAGS
USAGE = """Imports a PyTorch checkpoint (.pth) of an SSEN network as a workdir (infer, evaluate).

  python -m ssen_jax.convert_torch IN.pth --config configs/refsr.py[:variant] --out_dir DIR \\
      [--overwrite]
  (also the console command ssen-convert-torch)"""


def define_flags() -> None:
  """Command-line flags, defined only when run as a script."""
  flags.DEFINE_string('config', None, 'Config giving the architecture: FILE[:variant].')
  flags.DEFINE_string('out_dir', None, 'Output folder: a workdir with config.json and the '
                      'converted step 0.')
  flags.DEFINE_bool('overwrite', False,
                    'Replace config.json and checkpoints/ in a non-empty --out_dir.')
  cli.deprecated_alias('out', 'out_dir')
  flags.mark_flags_as_required(['config', 'out_dir'])


def main(argv: Sequence[str]) -> None:
  logging.set_verbosity(logging.ERROR)  # Orbax's INFO lines would bury the result.
  if len(argv) != 2:
    print('error: usage: python -m ssen_jax.convert_torch IN.pth --config FILE[:variant] '
          '--out_dir DIR [--overwrite]', file=sys.stderr)
    sys.exit(1)  # Like absl's usage errors in every command (docs/exit_statuses.md).
  from ssen_jax.training import workdir  # pylint: disable=import-outside-toplevel
  try:
    print(workdir.import_pth(argv[1], FLAGS.config, FLAGS.out_dir, overwrite=FLAGS.overwrite))
  except (ValueError, ImportError) as e:  # ConversionError, ConfigError: one-line messages.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def run() -> None:
  """The console command `ssen-convert-torch` (the same as `python -m ssen_jax.convert_torch`)."""
  define_flags()
  cli.run(main, USAGE)


if __name__ == '__main__':
  run()
