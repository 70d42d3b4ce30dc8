r"""`python -m ssen_jax.benchmark` (console command `ssen-benchmark`): speed, memory and
PyTorch-parity figures, as Markdown and JSON. The figures live in `ssen_jax.benchmarks`, whose
docstring says how each is taken; the measured ones are in docs/performance.md.
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

from ssen_jax.core import cli
from ssen_jax.data import files

FLAGS = flags.FLAGS
USAGE = """Speed, memory and PyTorch-parity figures of ssen_jax, as Markdown and JSON.

  python -m ssen_jax.benchmark --what WHAT [--compare torch] [--tiny] [--out FILE [--overwrite]]
  launch/gpu_benchmark.sh --out_dir DIR   # every figure on one GPU, JAX against PyTorch, < 8 min
  (also the console command ssen-benchmark)

WHAT: op, infer, latency (the paper's 322x550), train, memory, compile (full-size step), tiles
(the tile plan against every tiling, --infer_lr HxW), op_parity and model_parity (need torch),
summary (of gpu_benchmark.sh's tables beside --out); each is
described in ssen_jax/benchmarks/__init__.py, results in docs/performance.md."""
WHAT = ('op', 'infer', 'latency', 'train', 'memory', 'compile', 'tiles', 'op_parity',
        'model_parity', 'summary')
NEED_TORCH = ('op_parity', 'model_parity')


def define_flags() -> None:
  """Command-line flags, defined only when run as a script (importers keep their own flags)."""
  flags.DEFINE_enum('what', 'op', list(WHAT), 'Which figures to measure.')
  flags.DEFINE_enum('compare', None, ['torch'], 'Also run the PyTorch peers (needs torch; '
                    'implied by the parity figures).')
  flags.DEFINE_string('config', 'configs/refsr.py', 'Config FILE[:variants] of the model.')
  flags.DEFINE_string('out', None, 'Also write the results to this JSON file (checked first).')
  cli.deprecated_alias('json', 'out')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --out file.')
  flags.DEFINE_integer('repeats', None, 'Interleaved repetitions per case (default per --what).')
  flags.DEFINE_bool('tiny', False, 'Shrink every size (tests; the ratios mean nothing then).')
  flags.DEFINE_float('pause', 0.05, 'Seconds between two timed calls.')
  flags.DEFINE_integer('torch_threads', None, 'torch threads (default: the usable CPUs).')
  flags.DEFINE_enum('torch_device', 'auto', ['auto', 'cpu', 'cuda'], 'Where the PyTorch peers '
                    'run; auto: the chip JAX runs on.')
  flags.DEFINE_string('infer_lr', None, 'LR size HxW (infer: 80x137; model_parity: 40x40; '
                      'tiles: 1024x1024).')
  flags.DEFINE_integer('train_batch', None, 'Batch (train: 4; compile: the config\'s; '
                       'model_parity: 2).')
  # The memory figure's child process; kept out of --help (absl's --helpfull lists it).
  flags.DEFINE_string('infer_once', None, 'Internal: one inference of an HxW LR input, timings '
                      'as JSON.', module_name='ssen_jax.benchmarks.memory')


def _benchmarks():
  """--what -> (function, default repeats); imported here so that --help stays fast."""
  # pylint: disable=import-outside-toplevel
  from ssen_jax.benchmarks import full_size, memory, model_speed, op, parity, tiles
  return {'op': (op.bench_op, 20), 'infer': (model_speed.bench_infer, 7),
          'tiles': (tiles.bench_tiles, 2),
          'latency': (model_speed.bench_latency, 7), 'train': (model_speed.bench_train, 5),
          'memory': (memory.bench_memory, 1), 'compile': (full_size.bench_compile, 2),
          'op_parity': (parity.bench_op_parity, 1), 'model_parity': (parity.bench_model_parity, 1)}


def check_json(path: str, overwrite: bool) -> None:
  """Exits with one line, before any measurement, if --out could not be written at the end: a
  folder, a missing or read-only parent folder, or an existing file without `overwrite`."""
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    sys.exit(f'error: --out {path} is a folder.')
  if os.path.exists(path) and not overwrite:
    sys.exit(f'error: --out {path} exists; pass --overwrite to replace it.')
  if not os.path.isdir(folder):
    sys.exit(f'error: folder {folder} of --out does not exist.')
  try:
    with tempfile.NamedTemporaryFile(dir=folder, prefix='.probe-'):
      pass
  except OSError as e:
    sys.exit(f'error: cannot write in {folder} (--out): {e.strerror or e}.')


def write_json(path: str, result: Any) -> None:
  """Writes `result` as JSON to a temporary file beside `path`, then renames it over `path`: an
  existing file is replaced whole or not at all.

  Raises:
    OSError, TypeError, ValueError: the write failed (nothing is left behind).
  """
  files.write_json_atomic(path, result)


def _write(path: str, result: Any) -> None:
  try:
    write_json(path, result)
  except OSError as e:
    sys.exit(f'error: cannot write {path}: {e}')


def summarize(path: str) -> None:
  """--what summary: prints the summary of launch/gpu_benchmark.sh's tables in the folder of
  `path` and writes it to `path`."""
  from ssen_jax.benchmarks import summary  # pylint: disable=import-outside-toplevel
  try:
    result = summary.summarize(os.path.dirname(os.path.abspath(path)))
  except (OSError, ValueError) as e:
    sys.exit(f'error: no gpu_benchmark.sh tables beside {path}: {e}')
  print(summary.to_markdown(result), end='')
  _write(path, result)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.out and not FLAGS.infer_once:
    check_json(FLAGS.out, FLAGS.overwrite)
  if FLAGS.what == 'summary':
    if not FLAGS.out:
      sys.exit('error: --what summary needs --out DIR/summary.json (DIR: gpu_benchmark.sh\'s '
               '--out_dir).')
    summarize(FLAGS.out)
    return
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
    compare = 'torch' if FLAGS.what in NEED_TORCH else FLAGS.compare
    torch = torch_peers.import_torch(FLAGS.torch_threads) if compare == 'torch' else None
    torch_device = torch_peers.resolve_torch_device(torch, FLAGS.torch_device) if torch else 'cpu'
    fn, default_repeats = _benchmarks()[FLAGS.what]
    repeats = default_repeats if FLAGS.repeats is None else FLAGS.repeats
    if repeats < (0 if FLAGS.what == 'compile' else 1):
      sys.exit(f'error: --repeats must be at least {0 if FLAGS.what == "compile" else 1}, '
               f'got {repeats}.')
    result = dict(what=FLAGS.what, tiny=FLAGS.tiny, repeats=repeats,
                  compare=compare, machine=harness.machine_info(torch, torch_device),
                  pause_s=FLAGS.pause, **fn(repeats, FLAGS.tiny, torch, FLAGS.pause,
                                            torch_device=torch_device, lr_size=lr_size,
                                            batch=FLAGS.train_batch, config_spec=FLAGS.config))
  except config_lib.ConfigError as e:
    sys.exit(f'error: {e} (run from the repository root, or pass --config FILE)')
  result['device_memory'] = harness.device_memory(torch, torch_device)
  result['load_average_after'] = round(os.getloadavg()[0], 2)
  print(harness.to_markdown(result))
  if FLAGS.out:
    _write(FLAGS.out, result)


def run() -> None:
  """The console command `ssen-benchmark` (the same as `python -m ssen_jax.benchmark`)."""
  define_flags()
  cli.run(main, USAGE)


if __name__ == '__main__':
  run()
