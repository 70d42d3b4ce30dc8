"""Small raw folders in the layouts of the paper's datasets, cut from real photos, so that the
published configs can be run end to end (prepare with `data_prep.tfds_build`, train with
`ssen_jax.main`) where CUFED and DIV2K are not at hand (docs/performance.md, "The published
configurations at full size").

  python -c "from ssen_jax.benchmarks import full_size_data as f; f.write_folders('OUT', 'Set5')"

writes, from Set5's five photos and scikit-image's (no download):
  OUT/CUFED/input/NAME.png, ref/NAME.png   6 training pairs of 160x160 (CUFED's size); the
                                           reference is the same photo, 16-40 px away
  OUT/CUFED5/XXX_0.png .. XXX_5.png        2 groups, HR 332x500 (a CUFED5 size); references
                                           from the same photo shifted by 8, 24 and 60+ px
                                           (XH, H, M), turned upside down (L), another photo (XL)
  OUT/DIV2K/DIV2K_train_HR/0001.png ..     3 photos of 427x640 to 872x1000 (12 tiles of up to
                                           480x480 once prepared), for the 192x192 crops of
                                           configs/selfsim.py
The similarity levels are only nominal: these folders exist to measure the cost of the published
configs (compile, memory, step time, evaluation), not their quality.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image

from ssen_jax.data.images import read_image

CUFED_PAIR = 160  # CUFED's training pairs are 160x160.
CUFED5_HR = (332, 500)  # A CUFED5 HR size, divisible by the scale 4.
SET5 = ('baby', 'bird', 'butterfly', 'head', 'woman')


def _skimage(name: str) -> np.ndarray:
  """An RGB uint8 photo from scikit-image's installed data folder (files only, no network)."""
  import skimage  # pylint: disable=g-import-not-at-top
  return read_image(pathlib.Path(skimage.__file__).parent / 'data' / name).uint8()


def _save(img: np.ndarray, path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.ascontiguousarray(img)).save(path)


def _crop(img: np.ndarray, top: int, left: int, size: tuple[int, int]) -> np.ndarray:
  out = img[top:top + size[0], left:left + size[1]]
  if out.shape[:2] != size:
    raise ValueError(f'a {size} crop at ({top}, {left}) leaves a {img.shape[:2]} image')
  return out


def write_folders(out_dir: str | os.PathLike, set5_dir: str | os.PathLike) -> dict[str, str]:
  """Writes OUT/CUFED, OUT/CUFED5 and OUT/DIV2K (module docstring) from Set5 in `set5_dir`.

  Returns:
    {'cufed': path, 'cufed5': path, 'div2k': path}: the raw folders (`--dataset_dir` of
    `tfds_build` for ssen_cufed and ssen_div2k; `config.data.eval_dir` for CUFED5).
  """
  out = pathlib.Path(out_dir)
  photos = [read_image(pathlib.Path(set5_dir) / f'{n}.png').uint8() for n in SET5]
  photos.append(_skimage('astronaut.png'))
  pair = (CUFED_PAIR, CUFED_PAIR)
  for i, img in enumerate(photos):
    dy, dx = 16 + 4 * i, 40 - 4 * i  # Woman (228x344) is the smallest: 160 + 36 rows fit.
    _save(_crop(img, 0, 0, pair), out / 'CUFED' / 'input' / f'{i:06d}.png')
    _save(_crop(img, dy, dx, pair), out / 'CUFED' / 'ref' / f'{i:06d}.png')
  unrelated = _skimage('astronaut.png')
  for g, name in enumerate(('coffee.png', 'rocket.jpg')):
    img = _skimage(name)
    group = [_crop(img, 0, 0, CUFED5_HR), _crop(img, 8, 8, CUFED5_HR),
             _crop(img, 24, 48, CUFED5_HR), _crop(img, 60, 96 - 8 * g, CUFED5_HR),
             _crop(img[::-1], 0, 0, CUFED5_HR), _crop(unrelated, 0, 0, (332, 500 - 12))]
    for k, member in enumerate(group):
      _save(member, out / 'CUFED5' / f'{g:03d}_{k}.png')
  for i, name in enumerate(('hubble_deep_field.jpg', 'astronaut.png', 'rocket.jpg')):
    _save(_skimage(name), out / 'DIV2K' / 'DIV2K_train_HR' / f'{i + 1:04d}.png')
  return {'cufed': str(out / 'CUFED'), 'cufed5': str(out / 'CUFED5'), 'div2k': str(out / 'DIV2K')}
