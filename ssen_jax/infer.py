r"""Super-resolves one image, or every image of a folder, with a trained model.

  python -m ssen_jax.infer --workdir DIR --lr LR.png [--ref REF.png] --out SR.png \
      [--checkpoint STEP|best|PATH] [--max_memory_gb G | --tile N] [--overlap N] \
      [--overwrite] [--allow_large_images]
  python -m ssen_jax.infer --workdir DIR --lr_dir IN --out_dir OUT [--ref REF | --ref_dir REFS]

Model: the latest checkpoint of --workdir (or --checkpoint STEP, or --checkpoint best; the old
spelling --best is accepted for one release with a warning line). --checkpoint may
instead name a PyTorch .pth file (architecture from --config FILE[:variant], else from the
workdir's config.json) or a folder written by `ssen_jax.convert_torch`. The command runs the Python
API's model (`ssen_jax.inference.api.Model`, `ssen_jax.load_model`).

Reference: --ref is fitted to scale x the LR size (crop top-left, reflect-pad; see
`ssen_jax.data.images.fit_reference`). Without --ref the LR image upscaled by MATLAB bicubic is the
reference (self-reference). Models without a reference input (baseline, rcan, selfsim) ignore --ref.

Folders: --lr_dir IN --out_dir OUT writes OUT/<stem>.png per image of IN (bitwise what the one-image
command writes; OUT must not be IN, and inputs whose names differ only in their suffix, such as
a.png and a.jpg, are refused before any work), restoring the model once and compiling once per
distinct input size; --ref_dir REFS takes each image's reference from the file with the same stem in
REFS. One progress line per image (with ETA) on stderr; an unreadable image, one without a
reference, or one whose run fails for lack of memory (MemoryError, an XLA out-of-memory) is named
and skipped, the rest still run, and the command then exits with status 1 after a one-line summary;
existing outputs are kept unless --overwrite (counted as kept, not written).

Input/output: any LR size from 1x1 up; PNG/JPEG/...; grayscale in, grayscale out; alpha is kept
(bicubic-upscaled); 16-bit grayscale PNG in, 16-bit out. The output is a PNG written atomically
(temporary file + rename), never over an existing file without --overwrite. Images over Pillow's
decompression-bomb limit (about 89.5 million pixels) are refused unless --allow_large_images.

Memory and time: the plan takes, of one call on the whole image and balanced overlapping tiles
(feathered seams) of 1024 down to 128 LR pixels a side, the one of least predicted time (the
model's operations, loops counted, times the calls: the non-local attention grows with the square
of a call's size, so large inputs run faster in tiles) whose call fits --max_memory_gb by XLA's
memory analysis (default: 90% of the accelerator memory, or on CPU half the host memory: the RAM or
the container's / SLURM job's cgroup memory limit, whichever is smaller; on CPU the budget also
covers the full-size host arrays, 656 B per LR pixel at x4, and the decoded reference). --tile N
forces tiles of at most N x N LR pixels. See `ssen_jax.inference.tiling` and docs/performance.md
("Tiled inference"). Timing, the plan and one line per tile go to stderr.

Compilation cache: JAX's persistent cache is on, in ~/.cache/ssen_jax/jax_cache (or
$SSEN_JAX_CACHE_DIR, or --compilation_cache_dir); --nocompilation_cache turns it off.
"""
from __future__ import annotations

import os
import pathlib
import sys
import time
from collections.abc import Sequence

from absl import flags
from absl import logging

from ssen_jax.core import cli
from ssen_jax.core import progress
from ssen_jax.data import images
from ssen_jax.inference import tiling

FLAGS = flags.FLAGS
USAGE = """Super-resolves one image, or every image of a folder, with a trained model.

  python -m ssen_jax.infer --workdir W --lr LR.png [--ref REF.png] --out SR.png
  python -m ssen_jax.infer --workdir W --lr_dir IN --out_dir OUT [--ref REF | --ref_dir REFS]
  (also the console command ssen-infer)"""
EXIT_STATUSES = ('exit status: 0 done; 1 an error or a usage error (one line on stderr), or with '
                 '--lr_dir some image failed (named; the rest are written); SIGTERM kills it '
                 '(docs/exit_statuses.md).')


def define_flags() -> None:
  """Command-line flags, defined only when run as a script."""
  flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints/).')
  flags.DEFINE_string('lr', None, 'Low-resolution input image.')
  flags.DEFINE_string('ref', None, 'Reference image (default: the bicubic-upscaled input).')
  flags.DEFINE_string('out', None, 'Output PNG.')
  flags.DEFINE_string('lr_dir', None, 'Folder of LR images (instead of --lr).')
  flags.DEFINE_string('out_dir', None, 'Output folder for --lr_dir: OUT/<stem>.png per image.')
  flags.DEFINE_string('ref_dir', None, 'Folder of references for --lr_dir, matched by stem.')
  cli.define_checkpoint_flag()
  flags.DEFINE_string('config', None, 'FILE[:variant] giving the architecture of a .pth.')
  flags.DEFINE_float('max_memory_gb', None, 'Memory budget (GB) of one model call (on CPU plus the '
                     'host arrays); larger images run in tiles. Default: 90% of the accelerator, '
                     'or half the RAM (or cgroup limit).')
  flags.DEFINE_integer('tile', None, 'Force tiles of at most this many LR pixels per side.')
  flags.DEFINE_integer('overlap', tiling.DEFAULT_OVERLAP, 'LR pixels shared by neighbouring '
                       'tiles (3/8 of it discarded at each cut edge, the rest feathered).')
  flags.DEFINE_bool('overwrite', False, 'Replace existing output files.')
  flags.DEFINE_bool('allow_large_images', False, 'Read images over Pillow\'s decompression-bomb '
                    'limit (~89.5 million pixels).')
  flags.DEFINE_bool('compilation_cache', True, 'Use JAX\'s persistent compilation cache.')
  flags.DEFINE_string('compilation_cache_dir', None, 'Its folder (default $SSEN_JAX_CACHE_DIR, '
                      'else ~/.cache/ssen_jax/jax_cache).')


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def _check_flags() -> None:
  if FLAGS.tile is not None and FLAGS.tile < 1:
    _fail(f'--tile must be positive, got {FLAGS.tile}')
  if FLAGS.overlap < 0:
    _fail(f'--overlap must be >= 0, got {FLAGS.overlap}')
  if FLAGS.max_memory_gb is not None and not FLAGS.max_memory_gb > 0:
    _fail(f'--max_memory_gb must be positive, got {FLAGS.max_memory_gb}')
  if bool(FLAGS.lr) == bool(FLAGS.lr_dir):
    _fail('give either --lr (one image, with --out) or --lr_dir (a folder, with --out_dir)')
  if FLAGS.lr and (not FLAGS.out or FLAGS.out_dir or FLAGS.ref_dir):
    _fail('--lr takes --out (not --out_dir / --ref_dir)')
  if FLAGS.lr_dir and (not FLAGS.out_dir or FLAGS.out):
    _fail('--lr_dir takes --out_dir (not --out)')
  if FLAGS.ref and FLAGS.ref_dir:
    _fail('give --ref (one reference for all) or --ref_dir (one per image), not both')


def _check_out_dir(path: str) -> pathlib.Path:
  """Creates --out_dir if needed and checks that it takes files (before any compute)."""
  out = pathlib.Path(path)
  try:
    images.check_writable_folder(out, create=True)
  except OSError as e:
    _fail(f'cannot write in --out_dir {out}: {e.strerror or e}')
  return out


def _load_model():
  from ssen_jax.core import compilation_cache  # pylint: disable=import-outside-toplevel  # JAX.
  from ssen_jax.inference import api  # pylint: disable=import-outside-toplevel
  from ssen_jax.inference import restore  # pylint: disable=import-outside-toplevel
  if FLAGS.compilation_cache:
    _, note = compilation_cache.enable(FLAGS.compilation_cache_dir)
    if 'off' in note:
      _log(f'note: {note}')
  checkpoint, best = cli.checkpoint_choice(FLAGS.checkpoint)
  gen = restore.generator_from_flags(FLAGS.workdir, checkpoint, FLAGS.config, best)
  return api.Model(gen, max_memory_gb=FLAGS.max_memory_gb, tile=FLAGS.tile,
                   overlap=FLAGS.overlap, log=_log)


def main(argv: Sequence[str]) -> None:
  start = time.perf_counter()
  # Library INFO/WARNING logs (Orbax, XLA start-up) would bury the few lines this tool prints.
  logging.set_verbosity(logging.ERROR)
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  _check_flags()
  if FLAGS.lr_dir:
    run_folder(start)
    return
  large = FLAGS.allow_large_images
  try:
    out = images.check_output(FLAGS.out, FLAGS.overwrite)
    lr_img = images.read_image(FLAGS.lr, allow_large=large)
    ref_img = images.read_image(FLAGS.ref, allow_large=large) if FLAGS.ref else None
    if FLAGS.tile is not None:  # A forced tile size is checked before the model is loaded.
      for length in lr_img.rgb.shape[:2]:
        tiling.axis_tiles(length, FLAGS.tile, FLAGS.overlap)
    model = _load_model()
  except (FileNotFoundError, ValueError, ImportError) as e:  # ValueError: DatasetError etc.
    _fail(str(e))
  for note in lr_img.notes + (ref_img.notes if ref_img else []):
    _log(f'note: {note}')
  scale, (h, w) = model.scale, lr_img.rgb.shape[:2]
  if model.uses_ref and ref_img is None:
    _log('note: no --ref: the bicubic-upscaled input is the reference (self-reference)')
  elif not model.uses_ref and ref_img is not None:
    _log(f'note: the {model.variant} model takes no reference; --ref is ignored')
  loaded = time.perf_counter()
  try:
    plan = model.plan(h, w, ref_img)
  except ValueError as e:
    _fail(str(e))
  if plan is None:
    _log(f'untiled: LR {h}x{w}')
  else:
    _log(f'tiled: {plan.count} tiles ({len(plan.ys)}x{len(plan.xs)}) of LR {plan.size[0]}x'
         f'{plan.size[1]}, overlap {plan.overlap}')
  run_start = time.perf_counter()
  tiles = progress.Progress(plan.count if plan else 1, _log)
  image = model.upscale_file(lr_img, ref_img, progress=lambda done, count: tiles.step(
      f'tile of LR {plan.size[0]}x{plan.size[1]} done'))
  run_end = time.perf_counter()
  try:
    images.save_png_atomic(image, out)
  except OSError as e:
    _fail(f'cannot write {out}: {e}')
  _log(f'wrote {out} ({scale * h}x{scale * w}, {model.variant} step {model.step}); '
       f'time: load {loaded - start:.2f} s, plan+compile {run_start - loaded:.2f} s, '
       f'run {run_end - run_start:.2f} s, total {time.perf_counter() - start:.2f} s')


def run_folder(start: float) -> None:
  """--lr_dir: every image of the folder, one model restore (`inference.folder`)."""
  from ssen_jax.inference import folder  # pylint: disable=import-outside-toplevel
  lr_dir = pathlib.Path(FLAGS.lr_dir)
  if not lr_dir.is_dir():
    _fail(f'--lr_dir {lr_dir} is not a folder')
  if FLAGS.ref_dir and not os.path.isdir(FLAGS.ref_dir):
    _fail(f'--ref_dir {FLAGS.ref_dir} is not a folder')
  files = folder.list_images(lr_dir)
  if not files:
    _fail(f'--lr_dir {lr_dir} holds no image files ({", ".join(folder.IMAGE_SUFFIXES)})')
  clash = folder.colliding_stems(files)
  if clash:  # Before any work: their outputs would overwrite each other.
    stem, names = next(iter(clash.items()))
    _fail(f'--lr_dir {lr_dir} holds {len(clash)} name(s) whose outputs would collide '
          f'({" and ".join(names)} -> {stem}.png); rename them or move one to another folder')
  if os.path.realpath(FLAGS.out_dir) == os.path.realpath(lr_dir):
    _fail(f'--out_dir {FLAGS.out_dir} is the input folder; choose another folder (the inputs '
          'would be overwritten or mixed with the results)')
  out_dir = _check_out_dir(FLAGS.out_dir)
  try:
    ref_img = (images.read_image(FLAGS.ref, allow_large=FLAGS.allow_large_images)
               if FLAGS.ref else None)
    model = _load_model()
  except (FileNotFoundError, ValueError, ImportError) as e:
    _fail(str(e))
  if model.uses_ref and not (FLAGS.ref or FLAGS.ref_dir):
    _log('note: no --ref / --ref_dir: each input is its own reference (self-reference)')
  elif not model.uses_ref and (FLAGS.ref or FLAGS.ref_dir):
    _log(f'note: the {model.variant} model takes no reference; the references are ignored')
  _log(f'{len(files)} images in {lr_dir} -> {out_dir} ({model.variant} step {model.step})')
  result = folder.upscale_folder(
      model, files, out_dir, ref=ref_img,
      ref_dir=pathlib.Path(FLAGS.ref_dir) if FLAGS.ref_dir else None,
      overwrite=FLAGS.overwrite, allow_large=FLAGS.allow_large_images, log=_log)
  _log(('error: ' if result.failed else 'done: ')
       + result.summary(time.perf_counter() - start))
  if result.failed:
    sys.exit(1)


def run() -> None:
  """The console command `ssen-infer` (the same as `python -m ssen_jax.infer`)."""
  define_flags()
  cli.run(main, USAGE, exit_statuses=EXIT_STATUSES)


if __name__ == '__main__':
  run()
