r"""Super-resolves one image with a trained model.

  python -m ssen_jax.infer --workdir DIR --lr LR.png [--ref REF.png] --out SR.png \
      [--checkpoint STEP_OR_PATH] [--best] [--max_memory_gb G | --tile N] [--overlap N] \
      [--overwrite]

Model: the latest checkpoint of --workdir (or --checkpoint STEP, or --best). --checkpoint may
instead name a PyTorch .pth file (architecture from --config FILE[:variant], else from the
workdir's config.json) or a folder written by `ssen_jax.convert_torch`.

Reference: --ref is fitted to scale x the LR size (crop top-left, reflect-pad; see
`ssen_jax.data.images.fit_reference`). Without --ref the LR image upscaled by MATLAB bicubic is the reference
(self-reference). Models without a reference input (baseline, rcan, selfsim) ignore --ref.

Input/output: any LR size from 1x1 up; PNG/JPEG/...; grayscale in, grayscale out; alpha is kept
(bicubic-upscaled); 16-bit grayscale PNG in, 16-bit out. The output is a PNG written atomically
(temporary file + rename), never over an existing file without --overwrite.

Memory: the whole image runs in one call when XLA's memory analysis of that call fits
--max_memory_gb (default: 90% of the accelerator memory, or half the host RAM on CPU); otherwise
in overlapping tiles with feathered seams (--tile N forces N x N LR tiles). See
`ssen_jax.inference.tiling` for the tiling and memory model. Timing and the tile count go to stderr.
Repeated runs on images of one size compile faster with a persistent JAX compilation cache:
`export JAX_COMPILATION_CACHE_DIR=~/.cache/jax`.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging

from ssen_jax.data import images
from ssen_jax.inference import tiling

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags, defined only when run as a script."""
  flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints/).')
  flags.DEFINE_string('lr', None, 'Low-resolution input image.')
  flags.DEFINE_string('ref', None, 'Reference image (default: the bicubic-upscaled input).')
  flags.DEFINE_string('out', None, 'Output PNG.')
  flags.DEFINE_string('checkpoint', None, 'A step of --workdir, a PyTorch .pth file, or a folder '
                      'written by ssen_jax.convert_torch.')
  flags.DEFINE_string('config', None, 'FILE[:variant] giving the architecture of a .pth.')
  flags.DEFINE_bool('best', False, 'Use the checkpoint with the best eval PSNR.')
  flags.DEFINE_float('max_memory_gb', None, 'Memory budget of one model call (GB); tiles when '
                     'the image does not fit. Default: 90%% of the accelerator, or half the RAM.')
  flags.DEFINE_integer('tile', None, 'Force tiles of this many LR pixels per side.')
  flags.DEFINE_integer('overlap', tiling.DEFAULT_OVERLAP, 'LR pixels shared by neighbouring '
                       'tiles (3/8 of it discarded at each cut edge, the rest feathered).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --out file.')
  flags.mark_flags_as_required(['lr', 'out'])


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def main(argv: Sequence[str]) -> None:
  start = time.perf_counter()
  # Library INFO/WARNING logs (Orbax, XLA start-up) would bury the few lines this tool prints.
  logging.set_verbosity(logging.ERROR)
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.tile is not None and FLAGS.tile < 1:
    _fail(f'--tile must be positive, got {FLAGS.tile}')
  if FLAGS.overlap < 0:
    _fail(f'--overlap must be >= 0, got {FLAGS.overlap}')
  if FLAGS.max_memory_gb is not None and not FLAGS.max_memory_gb > 0:
    _fail(f'--max_memory_gb must be positive, got {FLAGS.max_memory_gb}')
  try:
    out = images.check_output(FLAGS.out, FLAGS.overwrite)
    lr_img = images.read_image(FLAGS.lr)
    ref_img = images.read_image(FLAGS.ref) if FLAGS.ref else None
    if FLAGS.tile is not None:  # A forced tile size is checked before the model is loaded.
      for length in lr_img.rgb.shape[:2]:
        tiling.axis_tiles(length, FLAGS.tile, FLAGS.overlap)
    from ssen_jax.inference import restore  # pylint: disable=import-outside-toplevel  # JAX.
    gen = restore.load_model(FLAGS.workdir, FLAGS.checkpoint, FLAGS.config, FLAGS.best)
  except (FileNotFoundError, ValueError, ImportError) as e:  # ValueError: DatasetError etc.
    _fail(str(e))
  for note in lr_img.notes + (ref_img.notes if ref_img else []):
    _log(f'note: {note}')
  scale, (h, w) = gen.scale, lr_img.rgb.shape[:2]
  ref = None
  if gen.uses_ref:
    ref = images.prepare_reference(ref_img.rgb if ref_img else None, lr_img.rgb, scale)
    if ref_img is None:
      _log('note: no --ref: the bicubic-upscaled input is the reference (self-reference)')
  elif ref_img is not None:
    _log(f'note: the {gen.config.model.variant} model takes no reference; --ref is ignored')
  loaded = time.perf_counter()
  upscaler = tiling.Upscaler(gen, log=_log)
  max_bytes = None if FLAGS.max_memory_gb is None else int(FLAGS.max_memory_gb * 2**30)
  try:
    plan = upscaler.plan(h, w, tile=FLAGS.tile, max_bytes=max_bytes, overlap=FLAGS.overlap)
  except ValueError as e:
    _fail(str(e))
  upscaler.compiled(*((h, w) if plan is None else plan.size))
  if plan is None:
    _log(f'untiled: LR {h}x{w}')
  else:
    _log(f'tiled: {plan.count} tiles ({len(plan.ys)}x{len(plan.xs)}) of LR {plan.size[0]}x'
         f'{plan.size[1]}, overlap {plan.overlap}')
  run_start = time.perf_counter()
  sr = upscaler(lr_img.rgb, ref, plan)
  run_end = time.perf_counter()
  alpha = None if lr_img.alpha is None else images.upscale_alpha(lr_img.alpha, scale)
  try:
    images.save_png_atomic(images.to_pil(sr, lr_img, alpha), out)
  except OSError as e:
    _fail(f'cannot write {out}: {e}')
  _log(f'wrote {out} ({scale * h}x{scale * w}, {gen.config.model.variant} step {gen.step}); '
       f'time: load {loaded - start:.2f} s, plan+compile {run_start - loaded:.2f} s, '
       f'run {run_end - run_start:.2f} s, total {time.perf_counter() - start:.2f} s')


if __name__ == '__main__':
  define_flags()
  app.run(main)
