r"""Speed and memory figures of ssen_jax, optionally against the PyTorch reference.

  python -m ssen_jax.benchmark --what op --compare torch      # deform_conv2d vs torchvision, conv
  python -m ssen_jax.benchmark --what infer --compare torch   # full `ssen`, 80x137 LR -> 320x548
  python -m ssen_jax.benchmark --what train --compare torch   # train step, batch 4, 160x160 HR
  python -m ssen_jax.benchmark --what memory                  # 1024x1024 and 512x512 LR, peak RSS
  python -m ssen_jax.benchmark --what compile --config configs/selfsim.py  # published size: FLOPs,
      # XLA memory, compile time, 2 steps here, accelerator estimates (--repeats 0: compile only)
  python -m ssen_jax.benchmark --what op --repeats 1 --tiny --json /tmp/op.json   # smoke test
  launch/gpu_benchmark.sh --out DIR   # on a GPU: op, infer, train at batch 32; torch on the GPU too

`--infer_lr HxW` and `--train_batch N` change the sizes; `--torch_device` (default: the chip JAX
runs on) says where the PyTorch peers run, which are synchronised before each timing stops.

Speed is quoted as ratios measured in one run on one machine, since absolute times drift: every
case is run once per repetition, the cases interleaved, and the median of the repetitions is
reported (with the minimum). Every figure is float32. The model is `--config`'s (default
`configs/refsr.py`, relative to the working directory like every --config; `--tiny`: its `tiny`
variant and small sizes) with random weights of realistic scale. With `--compare torch` the same
weights are copied into the PyTorch reference network and its output is checked against ours.
The benchmarks live in `ssen_jax.benchmarks` (harness, op, model_speed, memory); the measured
figures and their commands are in docs/performance.md.

`--json FILE` is checked before anything is measured (its folder must take files; an existing FILE
is refused unless --overwrite) and written atomically (a temporary file in the same folder, then a
rename), so a failed or interrupted run never leaves a truncated or half-replaced file.

torch is optional (the `test` extra) and imported only with `--compare torch`.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags

from ssen_jax.data import files

FLAGS = flags.FLAGS
WHAT = ('op', 'infer', 'train', 'memory', 'compile')


def define_flags() -> None:
  """Command-line flags, defined only when run as a script (importers keep their own flags)."""
  flags.DEFINE_enum('what', 'op', list(WHAT), 'Which figures to measure.')
  flags.DEFINE_enum('compare', None, ['torch'], 'Also run the PyTorch peers (needs torch).')
  flags.DEFINE_string('config', 'configs/refsr.py', 'Config FILE[:variants] of the model '
                      '(infer, train, memory).')
  flags.DEFINE_string('json', None, 'Optional path for the results as JSON (checked before '
                      'any measurement; written atomically).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --json file.')
  flags.DEFINE_integer('repeats', None, 'Interleaved repetitions per case (default per --what).')
  flags.DEFINE_bool('tiny', False, 'Shrink every size (tests; the ratios mean nothing then).')
  flags.DEFINE_float('pause', 0.05, 'Seconds between two timed calls (see `harness.interleaved`).')
  flags.DEFINE_integer('torch_threads', None, 'torch threads (default: the CPUs this process may '
                       'use, as XLA does).')
  flags.DEFINE_enum('torch_device', 'auto', ['auto', 'cpu', 'cuda'], 'Where the PyTorch peers '
                    'run; auto: cuda when JAX runs on a GPU (the same chip for both), else cpu.')
  flags.DEFINE_string('infer_lr', None, '--what infer: LR size HxW (default 80x137).')
  flags.DEFINE_integer('train_batch', None, '--what train: batch (default 4); --what compile: '
                       'batch (default: the config\'s).')
  flags.DEFINE_string('infer_once', None, 'Internal (memory child): run one inference of an HxW '
                      'LR input and print its timings as JSON.')


def _benchmarks():
  """--what -> (function, default repeats); imported here so that --help stays fast."""
  # pylint: disable=import-outside-toplevel
  from ssen_jax.benchmarks import full_size, memory, model_speed, op
  return {'op': (op.bench_op, 20), 'infer': (model_speed.bench_infer, 7),
          'train': (model_speed.bench_train, 5), 'memory': (memory.bench_memory, 1),
          'compile': (full_size.bench_compile, 2)}


def check_json(path: str, overwrite: bool) -> None:
  """Exits with one line, before any measurement, if --json could not be written at the end: a
  folder, a missing or read-only parent folder, or an existing file without `overwrite`."""
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    sys.exit(f'error: --json {path} is a folder.')
  if os.path.exists(path) and not overwrite:
    sys.exit(f'error: --json {path} exists; pass --overwrite to replace it.')
  if not os.path.isdir(folder):
    sys.exit(f'error: folder {folder} of --json does not exist.')
  try:
    with tempfile.NamedTemporaryFile(dir=folder, prefix='.probe-'):
      pass
  except OSError as e:
    sys.exit(f'error: cannot write in {folder} (--json): {e.strerror or e}.')


def write_json(path: str, result: Any) -> None:
  """Writes `result` as JSON to a temporary file beside `path`, then renames it over `path`: an
  existing file is replaced whole or not at all.

  Raises:
    OSError, TypeError, ValueError: the write failed (nothing is left behind).
  """
  files.write_json_atomic(path, result)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.json and not FLAGS.infer_once:
    check_json(FLAGS.json, FLAGS.overwrite)
  from ssen_jax.benchmarks import harness, torch_peers  # pylint: disable=import-outside-toplevel
  from ssen_jax.core import config as config_lib  # pylint: disable=import-outside-toplevel
  try:
    if FLAGS.infer_once:
      from ssen_jax.benchmarks import model_speed  # pylint: disable=import-outside-toplevel
      print(json.dumps(model_speed.infer_once(FLAGS.infer_once, FLAGS.tiny, FLAGS.config)))
      return
    lr_size = None
    if FLAGS.infer_lr:
      match = re.fullmatch(r'(\d+)x(\d+)', FLAGS.infer_lr)
      if not match or min(int(v) for v in match.groups()) < 1:
        sys.exit(f'error: --infer_lr must look like 80x137, got {FLAGS.infer_lr!r}.')
      lr_size = tuple(int(v) for v in match.groups())
    if FLAGS.train_batch is not None and FLAGS.train_batch < 1:
      sys.exit(f'error: --train_batch must be at least 1, got {FLAGS.train_batch}.')
    torch = torch_peers.import_torch(FLAGS.torch_threads) if FLAGS.compare == 'torch' else None
    torch_device = torch_peers.resolve_torch_device(torch, FLAGS.torch_device) if torch else 'cpu'
    fn, default_repeats = _benchmarks()[FLAGS.what]
    repeats = default_repeats if FLAGS.repeats is None else FLAGS.repeats
    if repeats < (0 if FLAGS.what == 'compile' else 1):
      sys.exit(f'error: --repeats must be at least {0 if FLAGS.what == "compile" else 1}, '
               f'got {repeats}.')
    result = dict(what=FLAGS.what, tiny=FLAGS.tiny, repeats=repeats,
                  compare=FLAGS.compare, machine=harness.machine_info(torch, torch_device),
                  pause_s=FLAGS.pause, **fn(repeats, FLAGS.tiny, torch, FLAGS.pause,
                                            torch_device=torch_device, lr_size=lr_size,
                                            batch=FLAGS.train_batch, config_spec=FLAGS.config))
  except config_lib.ConfigError as e:
    sys.exit(f'error: {e} (run from the repository root, or pass --config FILE)')
  result['load_average_after'] = round(os.getloadavg()[0], 2)
  print(harness.to_markdown(result))
  if FLAGS.json:
    try:
      write_json(FLAGS.json, result)
    except OSError as e:
      sys.exit(f'error: cannot write {FLAGS.json}: {e}')


def run() -> None:
  """The console command `ssen-benchmark` (the same as `python -m ssen_jax.benchmark`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
