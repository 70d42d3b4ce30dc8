"""Image files in and out, and the reference rule shared by training, evaluation and inference.

Reading (`read_image`, the one reader of the package): any Pillow-readable file becomes an
`ImageFile`: RGB float32 in [0, 1] (grayscale replicated), the alpha channel if any, whether the
file is single-channel, and its bit depth. Evaluation takes `.uint8()` and `.gray` (the metrics
score single-channel files on their own values: docs/conventions.md, "Evaluation protocol");
inference keeps alpha and bit depth to write its result back alike (`to_pil`). 16-bit grayscale
PNGs are read at 16 bits; Pillow decodes 16-bit *colour* PNGs to 8 bits per channel, so those carry
a note saying so.

References (`fit_reference`, `prepare_reference`): a reference of another size than `scale` x the
LR image is cropped (top-left window kept) or padded at the bottom/right by symmetric reflection,
never rescaled, so that its textures stay at HR scale. Without a reference, the LR image upscaled by
MATLAB bicubic is the reference (`self_reference`).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
from typing import Optional

import numpy as np
from PIL import Image

from ssen_jax.data import imresize as imresize_lib

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_GRAY16_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')
# PIL modes of single-channel files (with or without alpha): MATLAB's imread gives them one
# channel, so the published protocol scores them on their own values, not on BT.601 Y.
_GRAY_MODES = frozenset({'1', 'L', 'LA', 'La', 'F'} | set(_GRAY16_MODES))
_ALPHA_MODES = ('RGBA', 'LA', 'PA', 'La', 'RGBa')


class DatasetError(ValueError):
  """Bad input data (missing file or folder, wrong layout, unreadable image); the message says which."""


@dataclasses.dataclass
class ImageFile:
  """An image file's pixels as the network sees them, plus what is needed to write a result alike.

  Attributes:
    rgb: (H, W, 3) float32 in [0, 1] (grayscale replicated).
    alpha: (H, W) float32 in [0, 1], or None.
    gray: the file has a single channel (with or without alpha); outputs are written as grayscale.
    bits: 8 or 16, the bit depth of the output.
    notes: remarks for the user (e.g. precision lost on reading).
  """
  rgb: np.ndarray
  alpha: Optional[np.ndarray]
  gray: bool
  bits: int
  notes: list[str] = dataclasses.field(default_factory=list)

  def uint8(self) -> np.ndarray:
    """(H, W, 3) uint8 (16-bit values rounded to the nearest of the 256 levels)."""
    return np.floor(self.rgb.astype(np.float64) * 255 + 0.5).astype(np.uint8)


def _png_header(head: bytes) -> tuple[int, int]:
  """(bit depth, colour type) from a PNG file's first 26 bytes, or (0, -1) for other files."""
  if len(head) == 26 and head.startswith(_PNG_SIGNATURE) and head[12:16] == b'IHDR':
    return head[24], head[25]
  return 0, -1


def from_pil(img: Image.Image, name: str = 'image', png_header: bytes = b'') -> ImageFile:
  """A loaded Pillow image as an `ImageFile` (`png_header`: the file's first 26 bytes, if PNG)."""
  mode = img.mode
  if mode in _GRAY16_MODES:
    arr = np.clip(np.asarray(img, np.float64), 0, 65535) / 65535.0
    return ImageFile(np.repeat(arr.astype(np.float32)[..., None], 3, axis=-1), None, gray=True,
                     bits=16)
  has_alpha = mode in _ALPHA_MODES or 'transparency' in img.info
  rgba = np.asarray(img.convert('RGBA'), np.float32) / 255.0
  notes = []
  depth, colour_type = _png_header(png_header)
  if depth == 16 and colour_type in (2, 4, 6):
    notes.append(f'{name} is a 16-bit colour PNG: Pillow reads it at 8 bits per channel, '
                 'so the output is 8-bit')
  return ImageFile(np.ascontiguousarray(rgba[..., :3]), rgba[..., 3] if has_alpha else None,
                   gray=mode in _GRAY_MODES, bits=8, notes=notes)


def read_image(path: str | os.PathLike) -> ImageFile:
  """Reads an image file (PNG, JPEG, BMP, TIFF, ...).

  Raises:
    DatasetError: missing file, a folder, or a truncated/unreadable image.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise DatasetError(f'{path} does not exist')
  if path.is_dir():
    raise DatasetError(f'{path} is a folder, not an image file')
  try:
    with open(path, 'rb') as f:
      head = f.read(26)
    with Image.open(path) as img:
      img.load()
      return from_pil(img, path.name, head)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise DatasetError(f'cannot read image {path}: {e}') from None


def to_pil(sr: np.ndarray, like: ImageFile, alpha: Optional[np.ndarray] = None) -> Image.Image:
  """The SR result (sH, sW, 3) float in [0, 1] as a Pillow image of the input's kind.

  Grayscale inputs give L (8-bit) or I;16 (16-bit) images, the mean of the three channels; colour
  gives RGB; `alpha` (sH, sW) in [0, 1] adds an alpha channel (LA / RGBA, 8-bit).
  """
  x = np.clip(np.asarray(sr, np.float64), 0.0, 1.0)
  if like.gray:
    x = x.mean(axis=-1)
  if like.bits == 16 and like.gray and alpha is None:
    return Image.fromarray(np.floor(x * 65535 + 0.5).astype(np.uint16))
  out = np.floor(x * 255 + 0.5).astype(np.uint8)  # Round half up, as metrics.to_uint8.
  if alpha is not None:
    a = np.floor(np.clip(alpha, 0, 1) * 255 + 0.5).astype(np.uint8)
    out = np.concatenate([out.reshape(out.shape[:2] + (-1,)), a[..., None]], axis=-1)
    return Image.fromarray(out, 'LA' if like.gray else 'RGBA')
  return Image.fromarray(out, 'L' if like.gray else 'RGB')


def check_output(out: str | os.PathLike, overwrite: bool) -> pathlib.Path:
  """Validates an output PNG path before any work is done.

  Raises:
    ValueError: not a .png name, a folder, a missing parent folder, or an existing file without
      `overwrite`.
  """
  path = pathlib.Path(out)
  if path.suffix.lower() != '.png':
    raise ValueError(f'--out {path} must be a .png file (output is always PNG)')
  if path.is_dir():
    raise ValueError(f'--out {path} is a folder')
  if not path.parent.is_dir():
    raise ValueError(f'folder {path.parent} of --out does not exist')
  if path.exists() and not overwrite:
    raise ValueError(f'{path} exists; pass --overwrite to replace it')
  return path


def save_png_atomic(image: Image.Image, path: str | os.PathLike) -> None:
  """Writes a PNG to a temporary file beside `path`, then renames it over `path`."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
  try:
    with os.fdopen(fd, 'wb') as f:
      image.save(f, format='PNG')
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would otherwise survive the rename.
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


# ---------------------------------------------------------------------------------------------
# References.


def fit_reference(ref: np.ndarray, height: int, width: int) -> np.ndarray:
  """Deterministic reference fitting: crop/pad (h, w, C) to (height, width, C).

  The training pipeline's rule without its randomness: keep the top-left
  min(h, height) x min(w, width) window, then pad at the bottom/right by symmetric reflection
  (edge repeated, numpy's 'symmetric'; any amount of padding works).
  """
  ref = ref[:height, :width]
  pad = ((0, height - ref.shape[0]), (0, width - ref.shape[1])) + ((0, 0),) * (ref.ndim - 2)
  return np.pad(ref, pad, mode='symmetric') if any(p[1] for p in pad) else ref


def self_reference(lr: np.ndarray, scale: int) -> np.ndarray:
  """(H, W, 3) in [0, 1] -> its MATLAB bicubic x`scale` upscaling (sH, sW, 3) float32 in [0, 1]."""
  return np.clip(imresize_lib.imresize(lr.astype(np.float64), scale), 0, 1).astype(np.float32)


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
  """(H, W) alpha -> (sH, sW) by MATLAB bicubic, clipped to [0, 1]."""
  return np.clip(imresize_lib.imresize(alpha.astype(np.float64), scale), 0, 1)


def prepare_reference(ref: Optional[np.ndarray], lr: np.ndarray, scale: int) -> np.ndarray:
  """The reference the network gets: `ref` fitted to (sH, sW) or the self-reference.

  Args:
    ref: (h, w, 3) float in [0, 1] of any size, or None.
    lr: (H, W, 3) float in [0, 1].
    scale: SR factor.

  Returns:
    (scale*H, scale*W, 3) float32.
  """
  if ref is None:
    return self_reference(lr, scale)
  h, w = lr.shape[:2]
  return np.ascontiguousarray(fit_reference(ref, scale * h, scale * w), np.float32)
