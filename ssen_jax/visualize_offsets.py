r"""Where SSEN looks: the sampling locations of the stacked deformable layers (paper Fig. 7).

  python -m ssen_jax.visualize_offsets --workdir DIR --lr LR.png --ref REF.png \
      --points "y,x;y,x" --out FIG.png [--checkpoint STEP|best|PATH] [--overwrite]

For each chosen LR pixel, every sampling location of the L stacked deformable convolutions (9^L
per pixel, (9G)^L with G offset groups) is drawn on the reference, one colour per point, beside the
input with the points marked (`ssen_jax.inference.offsets` computes and draws them). Same model
selection (`ssen_jax.inference.restore.generator_from_flags`), reference rule and bad-input
behaviour as `ssen_jax.infer`. The model runs untiled, so LR inputs over
`ssen_jax.inference.offsets.MAX_LR_PIXELS` (512 x 512) are refused with one line naming the limit.
The old spelling --best (now --checkpoint best) is accepted for one release with a warning line.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from absl import flags
from absl import logging

from ssen_jax.core import cli
from ssen_jax.data import images

FLAGS = flags.FLAGS
USAGE = """Where SSEN looks: the sampling locations of its deformable layers (paper Fig. 7).

  python -m ssen_jax.visualize_offsets --workdir W --lr LR.png --ref REF.png \\
      --points "y,x;y,x" --out FIG.png [--checkpoint STEP|best|PATH]
  (also the console command ssen-visualize-offsets)"""


def define_flags() -> None:
  """Command-line flags, defined only when run as a script."""
  flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints/).')
  flags.DEFINE_string('lr', None, 'Low-resolution input image.')
  flags.DEFINE_string('ref', None, 'Reference image (default: the bicubic-upscaled input).')
  flags.DEFINE_string('points', None, 'LR pixels "y,x;y,x" whose sampling locations to draw.')
  flags.DEFINE_string('out', None, 'Output figure (PNG).')
  cli.define_checkpoint_flag()
  flags.DEFINE_string('config', None, 'FILE[:variant] giving the architecture of a .pth.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --out file.')
  flags.DEFINE_bool('allow_large_images', False, 'Read images over Pillow\'s decompression-bomb '
                    'limit (the LR input is still limited to offsets.MAX_LR_PIXELS).')
  flags.mark_flags_as_required(['lr', 'points', 'out'])


def parse_points(text: str, height: int, width: int) -> list[tuple[int, int]]:
  """'y,x;y,x' -> [(y, x), ...], integer LR pixels inside an (height, width) image.

  Raises:
    ValueError: malformed text or a point outside the image.
  """
  points = []
  for part in filter(None, (p.strip() for p in text.split(';'))):
    fields = [f.strip() for f in part.split(',')]
    if len(fields) != 2 or not all(f.lstrip('-').isdigit() for f in fields):
      raise ValueError(f'bad point {part!r} in --points: write integer LR pixel coordinates '
                       'as "y,x;y,x"')
    points.append((int(fields[0]), int(fields[1])))
  if not points:
    raise ValueError('--points is empty: write LR pixel coordinates as "y,x;y,x"')
  for i, (y, x) in enumerate(points):
    if not (0 <= y < height and 0 <= x < width):
      raise ValueError(f'point {i + 1} ({y},{x}) is outside the LR image ({height}x{width}): '
                       f'need 0 <= y < {height} and 0 <= x < {width}')
  return points


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def main(argv: Sequence[str]) -> None:
  logging.set_verbosity(logging.ERROR)  # Orbax / XLA start-up logs would bury the result.
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    out = images.check_output(FLAGS.out, FLAGS.overwrite)
    lr_img = images.read_image(FLAGS.lr, allow_large=FLAGS.allow_large_images)
    ref_img = (images.read_image(FLAGS.ref, allow_large=FLAGS.allow_large_images)
               if FLAGS.ref else None)
    h, w = lr_img.rgb.shape[:2]
    points = parse_points(FLAGS.points, h, w)
    from ssen_jax.inference import offsets  # pylint: disable=import-outside-toplevel  # JAX.
    from ssen_jax.inference import restore  # pylint: disable=import-outside-toplevel
    from ssen_jax.core import compilation_cache  # pylint: disable=import-outside-toplevel
    offsets.check_size(h, w)
    compilation_cache.enable()
    checkpoint, best = cli.checkpoint_choice(FLAGS.checkpoint)
    gen = restore.generator_from_flags(FLAGS.workdir, checkpoint, FLAGS.config, best)
  except (FileNotFoundError, ValueError, ImportError) as e:  # ValueError: DatasetError etc.
    _fail(str(e))
  m = gen.config.model
  if m.variant not in ('ssen', 'selfsim') or m.num_dcn_layers == 0:
    _fail(f'model has no deformable layers ({m.variant}, num_dcn_layers={m.num_dcn_layers})')
  if ref_img is not None and not gen.uses_ref:
    print(f'note: the {m.variant} model is its own reference; --ref is ignored', file=sys.stderr)
  fig, samples = offsets.sampling_figure(gen, lr_img.rgb, ref_img.rgb if ref_img else None, points)
  for i, (p, (pos, weight)) in enumerate(zip(points, samples)):
    live = weight > 0
    dist = np.hypot(*(pos[live] - np.asarray(p)).T) * gen.scale if live.any() else np.zeros(1)
    print(f'point {i + 1} {p}: {len(weight)} samples, {int(live.sum())} inside the map; '
          f'distance from the pixel (HR px) median {np.median(dist):.1f}, max {dist.max():.1f}',
          file=sys.stderr)
  try:
    images.save_png_atomic(fig, out)
  except OSError as e:
    _fail(f'cannot write {out}: {e}')
  print(f'wrote {out}', file=sys.stderr)


def run() -> None:
  """The console command `ssen-visualize-offsets` (the same as `python -m ssen_jax.visualize_offsets`)."""
  define_flags()
  cli.run(main, USAGE)


if __name__ == '__main__':
  run()
