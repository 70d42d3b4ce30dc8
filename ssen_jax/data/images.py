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
import struct
import tempfile
from typing import IO, Optional

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from ssen_jax.data import files
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
  # uint8 first, float32 per plane: no full-size float32 RGBA copy (same values as rgba / 255).
  rgba8 = np.asarray(img.convert('RGBA'))
  rgb = np.asarray(rgba8[..., :3], np.float32) / np.float32(255.0)
  alpha = np.asarray(rgba8[..., 3], np.float32) / np.float32(255.0) if has_alpha else None
  del rgba8
  notes = []
  depth, colour_type = _png_header(png_header)
  if depth == 16 and colour_type in (2, 4, 6):
    notes.append(f'{name} is a 16-bit colour PNG: Pillow reads it at 8 bits per channel, '
                 'so the output is 8-bit')
  return ImageFile(rgb, alpha, gray=mode in _GRAY_MODES, bits=8, notes=notes)


def pixel_limit() -> Optional[int]:
  """Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`), or None when disabled."""
  return Image.MAX_IMAGE_PIXELS


def _open_unchecked(file: str | os.PathLike | IO[bytes]) -> Image.Image:
  """`PIL.Image.open` without its decompression-bomb check: the file is identified and its header
  read, nothing decoded.

  `Image.open` checks the size against the process-wide `Image.MAX_IMAGE_PIXELS` (a warning above
  it, an error above twice it) and offers no per-call limit; switching the global off around a
  read is not thread-safe (another thread may read unguarded, or restore None for good). So the
  plugins are tried here as `Image.open` tries them, and `open_image` checks the size itself.

  Raises:
    OSError (`PIL.UnidentifiedImageError`): no plugin accepts the file.
  """
  is_path = isinstance(file, (str, os.PathLike))
  if is_path:
    with open(file, 'rb') as f:
      prefix = f.read(16)
  else:
    file.seek(0)
    prefix = file.read(16)
  for loader in (Image.preinit, Image.init):  # Common plugins first, then all of them.
    loader()
    for fmt in tuple(Image.ID):
      factory, accept = Image.OPEN[fmt]
      verdict = accept(prefix) if accept else True
      if not verdict or isinstance(verdict, str):  # A str explains a refusal.
        continue
      if not is_path:
        file.seek(0)
      try:  # Given a path, the plugin opens (and on close closes) its own file.
        return factory(os.fspath(file), None) if is_path else factory(file, '')
      except (SyntaxError, IndexError, TypeError, struct.error):  # Not this format.
        continue
  raise UnidentifiedImageError(f'cannot identify image file {os.fspath(file) if is_path else ""}')


def open_image(file: str | os.PathLike | IO[bytes], name: str | os.PathLike | None = None, *,
               allow_large: bool = False, flag: Optional[str] = '--allow_large_images'
               ) -> Image.Image:
  """Opens an image file lazily (header only) and refuses it if it is over `pixel_limit()`.

  The size is checked here, before anything is decoded, without touching Pillow's process-wide
  `Image.MAX_IMAGE_PIXELS` (safe with threads; `_open_unchecked`). Some plugins check frame or tile
  sizes again while decoding (GIF, tiled TIFF, WebP, ICO, ...): with `allow_large` those formats
  are still refused by Pillow above twice its limit (reported by `read_image` as unreadable).

  Args:
    file: a path or a binary file object (read from its start).
    name: how the messages name the file (default: `file`).
    allow_large: skip the size check.
    flag: the command-line flag that sets `allow_large`, named in the refusal (None: no hint).

  Returns:
    The opened, not yet loaded, Pillow image; the caller closes it.

  Raises:
    DatasetError: unreadable file, or over the limit (one line naming both sizes).
  """
  name = file if name is None else name
  try:
    img = _open_unchecked(file)
  except (OSError, ValueError) as e:
    raise DatasetError(f'cannot read image {name}: {e}') from None
  w, h = img.size
  limit = pixel_limit()
  if limit and w * h > limit and not allow_large:
    img.close()
    hint = f'; pass {flag} if you trust the file' if flag else ''
    raise DatasetError(f'{name} is {w}x{h} = {w * h:,} pixels, over the {limit:,}-pixel limit on '
                       f'image size (Pillow\'s decompression-bomb guard){hint}')
  return img


def read_image(path: str | os.PathLike, *, allow_large: bool = False) -> ImageFile:
  """Reads an image file (PNG, JPEG, BMP, TIFF, ...).

  Images over Pillow's decompression-bomb limit (`pixel_limit()`, about 89.5 million pixels) are
  refused with one line naming the limit, unless `allow_large` (the tools' --allow_large_images).
  The size is read from the header, before anything is decoded, and Pillow's global limit is never
  changed (`open_image`).

  Raises:
    DatasetError: missing file, a folder, a truncated/unreadable image, or one over the limit.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise DatasetError(f'{path} does not exist')
  if path.is_dir():
    raise DatasetError(f'{path} is a folder, not an image file')
  try:
    with open(path, 'rb') as f:
      head = f.read(26)
  except OSError as e:
    raise DatasetError(f'cannot read image {path}: {e}') from None
  with open_image(path, allow_large=allow_large) as img:
    try:
      img.load()
      return from_pil(img, path.name, head)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
      raise DatasetError(f'cannot read image {path}: {e}') from None


ROW_BLOCK = 256  # Rows converted at a time: no full-size float64 copy of a large output.


def to_array(sr: np.ndarray, gray: bool, alpha: Optional[np.ndarray] = None,
             kind: str = 'uint8') -> np.ndarray:
  """The SR result (sH, sW, 3) float in [0, 1] as the output array of an input of its kind.

  Args:
    sr: (sH, sW, 3) float (clipped to [0, 1] here).
    gray: single-channel output: the mean of the three channels.
    alpha: (sH, sW) in [0, 1], appended as the last channel, or None.
    kind: 'uint8' / 'uint16' (round half up: floor(x * max + 0.5)) or 'float32'.

  Returns:
    (sH, sW) for gray without alpha, else (sH, sW, C) with C = 1 + alpha or 3 + alpha; `kind`.
    Converted ROW_BLOCK rows at a time in float64 (no full-size float64 copy).
  """
  dtype = np.dtype(kind)
  channels = (1 if gray else 3) + (alpha is not None)
  shape = sr.shape[:2] + (() if channels == 1 else (channels,))
  out = np.empty(shape, dtype)
  top = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}.get(dtype)

  def convert(x):
    x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
    return x.astype(dtype) if top is None else np.floor(x * top + 0.5).astype(dtype)

  for y in range(0, sr.shape[0], ROW_BLOCK):
    x = np.clip(np.asarray(sr[y:y + ROW_BLOCK], np.float64), 0.0, 1.0)
    if gray:
      x = x.mean(axis=-1, keepdims=True)
    block = convert(x)
    if alpha is not None:
      block = np.concatenate([block, convert(alpha[y:y + ROW_BLOCK])[..., None]], axis=-1)
    out[y:y + ROW_BLOCK] = block.reshape(out[y:y + ROW_BLOCK].shape)
  return out


def output_kind(like: ImageFile, alpha: Optional[np.ndarray] = None) -> str:
  """The output array type of a file: 16-bit grayscale without alpha stays 16-bit, else uint8."""
  return 'uint16' if like.bits == 16 and like.gray and alpha is None else 'uint8'


def to_pil(sr: np.ndarray, like: ImageFile, alpha: Optional[np.ndarray] = None) -> Image.Image:
  """The SR result (sH, sW, 3) float in [0, 1] as a Pillow image of the input's kind.

  Grayscale inputs give L (8-bit) or I;16 (16-bit) images, the mean of the three channels; colour
  gives RGB; `alpha` (sH, sW) in [0, 1] adds an alpha channel (LA / RGBA, 8-bit). Values:
  `to_array`.
  """
  out = to_array(sr, like.gray, alpha, output_kind(like, alpha))
  if out.dtype == np.uint16:
    return Image.fromarray(out)
  if alpha is not None:
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


def check_writable_folder(folder: str | os.PathLike, create: bool = False) -> pathlib.Path:
  """Checks, before any work is done, that `folder` takes files: writes and removes a probe file.

  With `create`, the folder (and its parents) is made first if missing.

  Raises:
    OSError: the folder is missing (without `create`), cannot be made, or refuses the probe.
  """
  path = pathlib.Path(folder)
  if create:
    path.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=path, prefix='.probe-'):
    pass
  return path


def save_png_atomic(image: Image.Image, path: str | os.PathLike) -> None:
  """Writes a PNG to a temporary file beside `path`, then renames it over `path`."""
  files.write_atomic(path, lambda f: image.save(f, format='PNG'), binary=True)


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


BLOCK_MIN_PIXELS = 512 * 512  # LR pixels above which the x`scale` resizes run in blocks.
_BLOCK, _MARGIN = 64, 8  # LR block side and the context around it (the kernel reaches 3 px).


def upscale_blocks(img: np.ndarray, scale: int) -> np.ndarray:
  """MATLAB bicubic x`scale` of (H, W[, C]) float in [0, 1] -> float32, clipped to [0, 1].

  Small images are resized whole (float64, as `imresize`); above BLOCK_MIN_PIXELS LR pixels the
  image is resized in 64 x 64 LR blocks with 8 px of context (the cubic kernel reaches 3 px), so no
  full-size float64 copy is made. Each block computes the same weights as the whole image; only
  the float64 summation order may differ (below float32 resolution).
  """
  h, w = img.shape[:2]
  if h * w <= BLOCK_MIN_PIXELS:
    return np.clip(imresize_lib.imresize(img.astype(np.float64), scale), 0, 1).astype(np.float32)
  out = np.empty((scale * h, scale * w) + img.shape[2:], np.float32)
  for y in range(0, h, _BLOCK):
    y0, y1 = max(y - _MARGIN, 0), min(y + _BLOCK + _MARGIN, h)
    for x in range(0, w, _BLOCK):
      x0, x1 = max(x - _MARGIN, 0), min(x + _BLOCK + _MARGIN, w)
      up = imresize_lib.imresize(img[y0:y1, x0:x1].astype(np.float64), scale)
      by, bx = min(_BLOCK, h - y), min(_BLOCK, w - x)
      out[scale * y:scale * (y + by), scale * x:scale * (x + bx)] = np.clip(
          up[scale * (y - y0):scale * (y - y0 + by), scale * (x - x0):scale * (x - x0 + bx)], 0, 1)
  return out


def self_reference(lr: np.ndarray, scale: int) -> np.ndarray:
  """(H, W, 3) in [0, 1] -> its MATLAB bicubic x`scale` upscaling (sH, sW, 3) float32 in [0, 1]."""
  return upscale_blocks(lr, scale)


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
  """(H, W) alpha -> (sH, sW) float32 by MATLAB bicubic, clipped to [0, 1]."""
  return upscale_blocks(alpha, scale)


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
