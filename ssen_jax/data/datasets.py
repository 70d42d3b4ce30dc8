"""Evaluation datasets (folders of images, CUFED5) and the training example format.

Evaluation examples are dicts
`{'name': str, 'hr': uint8 (H, W, 3), 'lr': uint8 (H/s, W/s, 3), 'refs': [uint8 (h, w, 3), ...]}`:
HR cropped (top-left kept) to a multiple of `scale`, LR = MATLAB bicubic `imresize(hr, 1/scale)`
rounded to uint8 (the published protocol), grayscale files replicated to three channels (the
metrics recognise them and use their own channel). CUFED5 refs are ordered XH, H, M, L, XL
(`XXX_1.png` ... `XXX_5.png`) and kept at their own size; folders have no refs.

Training examples (TFDS datasets of `ssen_jax.data_prep.tfds_builders`, the one training data
format; read by `ssen_jax.data.input_pipeline`) have these features, the images stored as encoded
PNG bytes:

  FEATURE_NAME 'name'  the example name (utf-8), e.g. '000123' or '0001_r0_c1'.
  FEATURE_HR   'hr'    PNG of the RGB uint8 HR image.
  FEATURE_REF  'ref'   PNG of the RGB uint8 reference (CUFED-style pairs only).
  FEATURE_REFS 'refs'  five PNGs, the CUFED5 references XH..XL (CUFED5 only).

They are written by TFDS in data_prep; this module needs neither TFDS nor TensorFlow.
"""
import io
import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ssen_jax.data import images
from ssen_jax.data import imresize as imresize_lib
from ssen_jax.data.images import DatasetError

FEATURE_NAME = 'name'
FEATURE_HR = 'hr'
FEATURE_REF = 'ref'
FEATURE_REFS = 'refs'
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
CUFED5_LEVELS = ('XH', 'H', 'M', 'L', 'XL')
_CUFED5_RE = re.compile(r'^(\d+)_([0-5])\.png$', re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Evaluation examples.


def crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
  """Crops (H, W, ...) to (H - H % scale, W - W % scale, ...), keeping the top-left corner."""
  h, w = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
  if h == 0 or w == 0:
    raise DatasetError(f'image of size {img.shape[0]}x{img.shape[1]} is smaller than scale {scale}')
  return img[:h, :w]


def make_example(name: str, hr: np.ndarray, scale: int, refs: Sequence[np.ndarray] = (),
                 gray: bool = False) -> dict:
  """An evaluation example: HR cropped to a multiple of `scale`, LR by MATLAB bicubic (uint8).

  `gray` records that the HR file has a single channel (scored on its own values, see
  `ssen_jax.eval.metrics`); the arrays are RGB either way.
  """
  hr = crop_to_multiple(hr, scale)
  return {'name': name, 'hr': hr, 'lr': imresize_lib.imresize(hr, 1.0 / scale), 'refs': list(refs),
          'gray': bool(gray)}


def _check_dir(directory: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(directory)
  if not path.exists():
    raise DatasetError(f'dataset folder {path} does not exist')
  if not path.is_dir():
    raise DatasetError(f'{path} is not a folder')
  return path


def list_images(directory: str | os.PathLike) -> list[pathlib.Path]:
  """Image files (by extension, case-insensitive) directly inside `directory`, sorted by name."""
  path = _check_dir(directory)
  files = sorted(p for p in path.iterdir()
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
  if not files:
    raise DatasetError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found in {path}')
  return files


def load_folder(directory: str | os.PathLike, scale: int) -> list[dict]:
  """A benchmark folder of HR images (Set5, Set14, B100, Urban100, Manga109, ...).

  Args:
    directory: folder holding the HR images directly.
    scale: SR factor.

  Returns:
    Examples `{name (file stem), hr, lr, refs=[], gray}` sorted by file name.

  Raises:
    DatasetError: missing/empty folder or an unreadable image.
  """
  examples = []
  for p in list_images(directory):
    img = images.read_image(p)
    examples.append(make_example(p.stem, img.uint8(), scale, gray=img.gray))
  return examples


def cufed5_groups(directory: str | os.PathLike) -> dict[str, dict[int, pathlib.Path]]:
  """Finds CUFED5 groups `XXX_0.png` (HR) .. `XXX_5.png` (refs XH..XL) in `directory`.

  Returns:
    {group id: {0: hr path, 1: XH path, ..., 5: XL path}} sorted by group id.

  Raises:
    DatasetError: no CUFED5 files, or a group lacks one of its six images.
  """
  path = _check_dir(directory)
  groups: dict[str, dict[int, pathlib.Path]] = {}
  for p in path.iterdir():
    m = _CUFED5_RE.match(p.name)
    if m and p.is_file():
      groups.setdefault(m.group(1), {})[int(m.group(2))] = p
  if not groups:
    raise DatasetError(f'no CUFED5 images in {path}: expected XXX_0.png (HR) and XXX_1.png .. '
                       'XXX_5.png (references XH..XL) for each group XXX')
  for gid, members in groups.items():
    missing = [f'{gid}_{i}.png' for i in range(6) if i not in members]
    if missing:
      raise DatasetError(f'CUFED5 group {gid} in {path} is incomplete: missing {", ".join(missing)}')
  return dict(sorted(groups.items()))


def load_cufed5(directory: str | os.PathLike, scale: int) -> list[dict]:
  """CUFED5 (126 groups in the release): `{name: 'XXX', hr, lr, refs: [XH, H, M, L, XL]}`.

  Raises:
    DatasetError: missing folder, wrong layout or an unreadable image.
  """
  examples = []
  for gid, members in cufed5_groups(directory).items():
    hr = images.read_image(members[0])
    refs = [images.read_image(members[i]).uint8() for i in range(1, 6)]
    examples.append(make_example(gid, hr.uint8(), scale, refs, gray=hr.gray))
  return examples


# ---------------------------------------------------------------------------------------------
# Stored images; the training data format that is no longer read.


def encode_png(img: np.ndarray, compress_level: int = 6) -> bytes:
  """(H, W, 3) uint8 -> PNG bytes."""
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(img, np.uint8)).save(buf, format='PNG',
                                                            compress_level=compress_level)
  return buf.getvalue()


# The config field of the hand-built TFRecord shards that training read before TFDS was its one
# format (`python -m ssen_jax.data_prep.convert` wrote them).
RETIRED_TRAIN_PATTERN = 'data.train_pattern'
CONVERT_TO_TFDS = ('prepare the TFDS dataset from the raw folder (python -m '
                   'ssen_jax.data_prep.tfds_build --tfds_name ssen_cufed --dataset_dir RAW '
                   '--tfds_data_dir DIR, or data_prep.convert with its old flags)')


def retired_train_pattern(value: str) -> str:
  """The one line that refuses training data given as TFRecord shards (`value`: their glob)."""
  return (f'config.{RETIRED_TRAIN_PATTERN}={value!r}: TFRecord shards are no longer read; '
          f'{CONVERT_TO_TFDS} and set config.data.tfds_name and config.data.tfds_data_dir instead')
