"""Raw dataset layouts: finding the examples (`LAYOUTS`) and turning one into examples (`process_job`).

Discovery runs in the main process and checks the layout up front, so a wrong folder fails in a
second with one line saying what was expected. `process_job` runs in worker processes: it never
raises for a bad image but returns the path and reason, so the caller decides (stop or skip).
"""
import dataclasses
import io
import pathlib

import numpy as np
from PIL import Image

from ssen_jax.data import datasets
from ssen_jax.data import images

PAIR, CUFED5, SINGLE = 'pair', 'cufed5', 'single'
FEATURES = {
    PAIR: [datasets.FEATURE_NAME, datasets.FEATURE_HR, datasets.FEATURE_REF],
    CUFED5: [datasets.FEATURE_NAME, datasets.FEATURE_HR, datasets.FEATURE_REFS],
    SINGLE: [datasets.FEATURE_NAME, datasets.FEATURE_HR],
}
DEFAULT_TILE_SIZE = {'div2k': 480}
_PNG_COMPRESS_LEVEL = 3  # Re-encoded images: ~3x faster than level 6 for ~5% more bytes.


@dataclasses.dataclass(frozen=True)
class Job:
  """One example to convert: `paths[0]` is the HR image, the rest its references in order."""
  kind: str
  name: str
  paths: tuple[pathlib.Path, ...]


def _layout_error(path: pathlib.Path, expected: str) -> datasets.DatasetError:
  return datasets.DatasetError(f'unexpected layout in {path}: expected {expected}')


def find_cufed(root: pathlib.Path) -> list[Job]:
  """CUFED training pairs: ROOT/input/NAME.png and ROOT/ref/NAME.png (SRNTT release)."""
  expected = 'ROOT/input/*.png and ROOT/ref/*.png with matching names (SRNTT CUFED release)'
  if not root.is_dir():
    raise datasets.DatasetError(f'input folder {root} does not exist')
  if not (root / 'input').is_dir() or not (root / 'ref').is_dir():
    raise _layout_error(root, expected)
  inputs = {p.name: p for p in datasets.list_images(root / 'input')}
  refs = {p.name: p for p in datasets.list_images(root / 'ref')}
  missing = sorted(set(inputs) - set(refs))
  if missing:
    raise datasets.DatasetError(
        f'{len(missing)} images in {root / "input"} have no reference of the same name in '
        f'{root / "ref"} (first: {missing[0]}); expected {expected}')
  return [Job(PAIR, pathlib.Path(n).stem, (inputs[n], refs[n])) for n in sorted(inputs)]


def find_cufed5(root: pathlib.Path) -> list[Job]:
  """CUFED5 groups: ROOT/XXX_0.png (HR), ROOT/XXX_1.png .. XXX_5.png (refs XH .. XL)."""
  return [Job(CUFED5, gid, tuple(members[i] for i in range(6)))
          for gid, members in datasets.cufed5_groups(root).items()]


def find_folder(root: pathlib.Path) -> list[Job]:
  """Any folder of HR images (directly inside ROOT)."""
  return [Job(SINGLE, p.stem, (p,)) for p in datasets.list_images(root)]


def find_div2k(root: pathlib.Path) -> list[Job]:
  """DIV2K: ROOT is DIV2K_train_HR/ (0001.png .. 0800.png) or DIV2K_valid_HR/ (0801 .. 0900)."""
  expected = 'the DIV2K_train_HR (or DIV2K_valid_HR) folder holding 0001.png, 0002.png, ...'
  if root.is_dir() and not any(p.suffix.lower() == '.png' for p in root.iterdir()):
    raise _layout_error(root, expected)
  jobs = find_folder(root)
  odd = [j.paths[0].name for j in jobs if not (j.name.isdigit() and len(j.name) == 4)]
  if odd:
    raise _layout_error(root, f'{expected}; found {odd[0]}')
  return jobs


LAYOUTS = {'cufed': find_cufed, 'cufed5': find_cufed5, 'div2k': find_div2k,
           'folder': find_folder}


def _load(path: pathlib.Path) -> tuple[np.ndarray, bytes | None]:
  """(RGB uint8 image, its file bytes if they are already an RGB 8-bit PNG else None).

  Raises:
    datasets.DatasetError: unreadable file, or one over Pillow's decompression-bomb limit
      (`images.open_image`, checked before decoding).
  """
  try:
    data = path.read_bytes()
    with images.open_image(io.BytesIO(data), path, flag=None) as img:
      img.load()
      keep = img.format == 'PNG' and img.mode == 'RGB'
      return images.from_pil(img).uint8(), (data if keep else None)
  except datasets.DatasetError:
    raise
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise datasets.DatasetError(f'cannot read image {path}: {e}') from None


def _png(img: np.ndarray, original: bytes | None) -> bytes:
  return original if original is not None else datasets.encode_png(img, _PNG_COMPRESS_LEVEL)


def pad_reference(ref: np.ndarray, height: int, width: int) -> np.ndarray:
  """Pads (h, w, 3) at the bottom/right by symmetric reflection to at least (height, width)."""
  pad_h, pad_w = max(0, height - ref.shape[0]), max(0, width - ref.shape[1])
  if not pad_h and not pad_w:
    return ref
  return np.pad(ref, ((0, pad_h), (0, pad_w), (0, 0)), mode='symmetric')


def tile_origins(length: int, tile: int) -> list[int]:
  """Tile starts covering [0, length): a regular grid, the last tile flush with the end."""
  if tile <= 0 or length <= tile:
    return [0]
  starts = list(range(0, length - tile + 1, tile))
  if starts[-1] + tile < length:
    starts.append(length - tile)
  return starts


Example = dict[str, str | bytes | list[bytes]]


def process_job(args: tuple[Job, int]) -> tuple[list[Example], str | None]:
  """Reads one example's images and encodes them (no TensorFlow: runs in worker processes).

  Args:
    args: (job, tile_size); tile_size applies to SINGLE jobs only (0: whole image).

  Returns:
    ([{'name': str, 'hr': PNG bytes[, 'ref': PNG bytes | 'refs': [5 x PNG bytes]]}, ...], None),
    or ([], 'PATH (reason)') for a bad image. Keys are `datasets.FEATURE_*`; `convert` serializes
    them as tf.train.Examples, the TFDS builders (`tfds_builders`) yield them as they are.
  """
  job, tile_size = args
  loaded = []
  for path in job.paths:
    try:
      loaded.append(_load(path))
    except datasets.DatasetError as e:
      reason = str(e).removeprefix(f'cannot read image {path}: ')
      return [], f'{path} ({reason})'
  hr, hr_png = loaded[0]
  if job.kind == PAIR:
    ref, ref_png = loaded[1]
    padded = pad_reference(ref, hr.shape[0], hr.shape[1])
    if padded is not ref:
      ref_png = None
    return [{datasets.FEATURE_NAME: job.name, datasets.FEATURE_HR: _png(hr, hr_png),
             datasets.FEATURE_REF: _png(padded, ref_png)}], None
  if job.kind == CUFED5:
    return [{datasets.FEATURE_NAME: job.name, datasets.FEATURE_HR: _png(hr, hr_png),
             datasets.FEATURE_REFS: [_png(img, png) for img, png in loaded[1:]]}], None
  rows, cols = tile_origins(hr.shape[0], tile_size), tile_origins(hr.shape[1], tile_size)
  if len(rows) == 1 and len(cols) == 1:
    return [{datasets.FEATURE_NAME: job.name, datasets.FEATURE_HR: _png(hr, hr_png)}], None
  examples = []
  for r, y in enumerate(rows):
    for c, x in enumerate(cols):
      tile = hr[y:y + tile_size, x:x + tile_size]
      examples.append({datasets.FEATURE_NAME: f'{job.name}_r{r}_c{c}',
                       datasets.FEATURE_HR: datasets.encode_png(tile, _PNG_COMPRESS_LEVEL)})
  return examples, None
