r"""Turns a folder of HR photos into a CUFED5-style RefSR evaluation set of synthetic views.

  python -m ssen_jax.data_prep.reference_views --hr_dir HR_FOLDER --out_dir /tmp/views
  python -m ssen_jax.evaluate --workdir W --layout cufed5 --dataset_dir /tmp/views

Checks whether a trained model uses references on photos it never saw. The views are of the same
photo, not other photos of the same event as CUFED5's references are: an easier test than CUFED5,
and the one where alignment alone decides. Group i (`XXX_0.png` ..
`XXX_5.png`) holds a centre crop of photo i (`--size`, default 192, a multiple of 4) and five
references, from most to least similar:
  XH: a view of the same photo moved by (3, -2) HR pixels and zoomed 2 % (a shifted, slightly
      rescaled view of the same scene);
  H:  rotated 2 degrees, zoomed out 3 %, moved by (-6, 5);
  M:  rotated 5 degrees, zoomed out 10 %, moved by (12, -10);
  L:  rotated -5 degrees, moved by half the crop on both axes (a quarter of the content shared);
  XL: the centre crop of the next photo (nothing shared).
Views are bicubic samples of the whole photo (`demo_data.affine_view`), so a view that reaches past
the crop shows the photo's real surroundings; photos need `--size` + 2 * 16 pixels on each side.
`evaluate` adds its controls (oracle: the HR itself; unrelated: the next group's XH).
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np
from absl import flags

from ssen_jax.core import cli
from ssen_jax.data import datasets
from ssen_jax.data.images import read_image, save_png_atomic

FLAGS = flags.FLAGS
USAGE = """Turns a folder of HR photos into a CUFED5-style set of synthetic reference views.

  python -m ssen_jax.data_prep.reference_views --hr_dir PHOTOS --out_dir /tmp/views
  python -m ssen_jax.evaluate --workdir W --layout cufed5 --dataset_dir /tmp/views
  (also the console command ssen-reference-views)"""
MARGIN = 16
# (name, angle in degrees, zoom, shift (rows, cols) in HR pixels or None for half the crop).
VIEWS = (('XH', 0.0, 1.02, (3.0, -2.0)), ('H', 2.0, 0.97, (-6.0, 5.0)),
         ('M', 5.0, 0.9, (12.0, -10.0)), ('L', -5.0, 1.0, None))
# `--views subpixel`: references as real ones are, moved by fractions of an LR pixel (x4: 1-3 HR
# pixels) and zoomed by 3-5 %; L and XL as above.
SUBPIXEL_VIEWS = (('XH', 0.0, 1.03, (1.0, 2.0)), ('H', 0.0, 0.96, (-2.0, 3.0)),
                  ('M', 1.0, 1.05, (3.0, -1.0)), ('L', -5.0, 1.0, None))
PRESETS = {'default': VIEWS, 'subpixel': SUBPIXEL_VIEWS}


def define_flags() -> None:
  """Command-line flags, defined only when run as a script."""
  flags.DEFINE_string('hr_dir', None, 'Folder of HR photos (PNG/JPEG/...).')
  flags.DEFINE_string('out_dir', None, 'Output folder (CUFED5 layout); must be new or empty.')
  flags.DEFINE_integer('size', 192, 'HR crop side in pixels (a multiple of 4).')
  flags.DEFINE_bool('overwrite', False, 'Write into a non-empty --out_dir.')
  flags.DEFINE_enum('views', 'default', sorted(PRESETS), 'default: XH moved (3, -2) px and '
                    'zoomed 2 %, H..M turned and zoomed more; subpixel: XH, H, M moved by 1-3 HR '
                    'px and zoomed 3-5 %.')


def make_groups(photos: Sequence[np.ndarray], size: int,
                views: Sequence[tuple] = VIEWS) -> list[list[np.ndarray]]:
  """[[HR, XH, H, M, L, XL]] per photo, all (size, size, 3) uint8 (see the module docstring)."""
  from ssen_jax.data.demo_data import affine_view  # pylint: disable=g-import-not-at-top
  if size % 4 or size < 32:
    raise ValueError(f'--size must be a multiple of 4 and at least 32, got {size}')
  if len(photos) < 2:
    raise ValueError('need at least two photos (XL is the next photo)')
  crops, centres = [], []
  for i, img in enumerate(photos):
    h, w = img.shape[:2]
    if min(h, w) < size + 2 * MARGIN:
      raise ValueError(f'photo {i} is {h}x{w}; --size {size} needs at least '
                       f'{size + 2 * MARGIN} pixels on each side')
    top, left = (h - size) // 2, (w - size) // 2
    crops.append(np.ascontiguousarray(img[top:top + size, left:left + size]))
    centres.append((top + (size - 1) / 2, left + (size - 1) / 2))
  groups = []
  for i, (img, crop, centre) in enumerate(zip(photos, crops, centres)):
    refs = [affine_view(img, centre, size, angle=angle, zoom=zoom,
                        shift=shift if shift is not None else (size / 2, size / 2))
            for _, angle, zoom, shift in views]
    groups.append([crop] + refs + [crops[(i + 1) % len(crops)]])
  return groups


def write(hr_dir: str | os.PathLike, out_dir: str | os.PathLike, size: int = 192, *,
          overwrite: bool = False, views: str = 'default') -> int:
  """Builds the set from every image in hr_dir (sorted by name); returns the group count."""
  out = pathlib.Path(out_dir)
  if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
    raise ValueError(f'{out} exists and is not an empty folder; pass --overwrite to write into it')
  paths = datasets.list_images(hr_dir)
  photos = [read_image(p).uint8() for p in paths]  # (H, W, 3): gray replicated, alpha dropped.
  groups = make_groups(photos, size, PRESETS[views])
  out.mkdir(parents=True, exist_ok=True)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for g, images in enumerate(groups):
    for level, img in enumerate(images):
      save_png_atomic(Image.fromarray(img, 'RGB'), out / f'{g:03d}_{level}.png')
  (out / 'views.json').write_text(json.dumps({
      'sources': [p.name for p in paths], 'size': size, 'views': views,
      'levels': {name: {'angle': a, 'zoom': z, 'shift': s if s is not None else 'half the crop'}
                 for name, a, z, s in PRESETS[views]} | {'XL': 'centre crop of the next photo'}},
      indent=2) + '\n')
  return len(groups)


def main(argv: Sequence[str]) -> None:
  del argv
  if not FLAGS.hr_dir or not FLAGS.out_dir:
    sys.exit('error: --hr_dir and --out_dir are required')
  try:
    count = write(FLAGS.hr_dir, FLAGS.out_dir, FLAGS.size, overwrite=FLAGS.overwrite,
                  views=FLAGS.views)
  except (ValueError, OSError) as e:
    sys.exit(f'error: {e}')
  print(f'{count} groups written to {FLAGS.out_dir}')


def run() -> None:
  """The console command `ssen-reference-views` (the same as `python -m ssen_jax.data_prep.reference_views`)."""
  define_flags()
  cli.run(main, USAGE)


if __name__ == '__main__':
  run()
