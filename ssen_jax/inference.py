"""Inference on user images: restoring a generator, reading inputs, tiling under a memory budget.

`evaluate`, `infer` and `visualize_offsets` rebuild the model from `{workdir}/config.json` and
restore only the generator's parameters from the Orbax checkpoint (`ssen_jax.convert_torch`
writes such a workdir from a PyTorch .pth).

Images (`read_image`): any Pillow-readable file. Grayscale is replicated to RGB for the network and
written back as grayscale (the mean of the three output channels). An alpha channel is kept: it is
upscaled with the same MATLAB bicubic as the self-reference, clipped to [0, 1], and written back.
16-bit grayscale PNGs are read and written at 16 bits. Pillow decodes 16-bit *colour* PNGs to 8
bits per channel, so those give 8-bit output (and a note says so).

References: the reference is brought to `scale` x the LR size by `datasets.fit_reference` (crop
top-left, reflect-pad bottom/right). Without one, the reference is the LR image upscaled by MATLAB
bicubic `imresize` (self-reference; what `evaluation.model_sr_fn` does without a reference).

Tiling (`Upscaler`): large inputs are cut into equal-size overlapping LR tiles. Tile origins are
multiples of ALIGN = 8 LR pixels: the offset estimator's three stride-2 convolutions then sample
the same grid in a tile as in the whole image, so a tile reproduces the untiled output away from its
cut edges. Each tile's reference is the matching `scale` x region of the fitted reference. In the
overlap of two tiles, the first `overlap * 3 // 8` pixels from a cut edge are discarded (they see
the zero padding of the cut) and the rest is blended with a linear ramp (feathering). Only cut edges
are treated so: image borders are borders in both runs. Exactness limits: non-local blocks (global
attention) and RCAN's channel attention (global pooling) see only their tile, so trained models
with them differ slightly from untiled runs; everything else is local. Measured: a random tiny
model without non-local blocks matches its untiled output within 0.4/255 at overlap 32 (the test);
the trained demo model (non-local blocks) on a 125x185 LR input differs by at most 5/255 (mean
0.1/255) with 64-pixel tiles and 0.7/255 with 128-pixel tiles, whatever the overlap beyond 32.

Memory model: XLA's own accounting of one compiled model call, `memory_analysis()` (arguments incl.
parameters + outputs + temporaries - aliased). The whole image is compiled first; if it fits the
budget it runs untiled with that executable. Otherwise the bytes per LR pixel of that compilation
give a square tile size, whose compilation is checked against the budget again (shrinking 15% per
try, as dense attention below `nonlocal_dense_max` positions grows faster than linearly). Where
XLA gives no analysis, ANALYTIC_BYTES_PER_FEATURE * features bytes per LR pixel is assumed
(measured: ~190-205 B per feature channel for the demo and tiny models on CPU). The host also holds
the full-size reference and the blending accumulators (~0.5 KB per LR pixel), outside the budget.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import tempfile
import time
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image

from ssen_jax import datasets
from ssen_jax import imresize as imresize_lib

# JAX, Orbax and the models are imported where first needed: the command-line tools check their
# inputs (files, images, output path) first and answer a bad one within a second.

ALIGN = 8  # Tile origins (LR px): 2**3 for the offset estimator's three stride-2 convolutions.
DEFAULT_OVERLAP = 32  # LR px shared by neighbouring tiles; see `blend_weights`.
ANALYTIC_BYTES_PER_FEATURE = 256  # Per LR pixel and feature channel, when XLA reports nothing.
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_GRAY16_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')


@dataclasses.dataclass
class Generator:
  """A restored generator: its config, flax module, parameters and checkpoint step."""
  config: Any  # ml_collections.ConfigDict
  model: Any
  params: Any
  step: int

  @property
  def scale(self) -> int:
    return int(self.config.model.scale)

  @property
  def uses_ref(self) -> bool:
    from ssen_jax import models  # pylint: disable=import-outside-toplevel
    return models.uses_reference(self.config.model.variant)


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """Steps saved under `{workdir}/checkpoints` (sorted), read from the folder names."""
  from ssen_jax import checkpointing  # pylint: disable=import-outside-toplevel
  ckpt = checkpointing.checkpoint_dir(workdir)
  if not ckpt.is_dir():
    return []
  return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit())


def load_generator(workdir: str | os.PathLike, step: Optional[int] = None,
                   best: bool = False) -> Generator:
  """Restores the generator of a training workdir on this host's devices.

  Args:
    workdir: a training workdir (holds config.json and checkpoints/).
    step: checkpoint step; None takes the latest (or the best with `best`).
    best: prefer the checkpoint with the best evaluation PSNR.

  Raises:
    FileNotFoundError: not a workdir, no checkpoint in it, or no checkpoint at `step`.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from ssen_jax import checkpointing, steps  # pylint: disable=import-outside-toplevel
  if not checkpointing.workdir_path(workdir).is_dir():
    raise FileNotFoundError(f'workdir {workdir} does not exist or is not a folder')
  config = checkpointing.read_config(workdir)
  saved = checkpoint_steps(workdir)
  if not saved:  # Checked before building anything: a clear message, fast.
    raise FileNotFoundError(f'workdir {workdir} holds no checkpoint (has training run?)')
  if step is not None and step not in saved:
    raise FileNotFoundError(f'workdir {workdir} has no checkpoint at step {step} '
                            f'(saved: {", ".join(map(str, saved))})')
  trainer = steps.Trainer(config, steps.create_mesh(jax.local_devices()[:1]))
  try:
    params, restored_step = checkpointing.restore_params(workdir, trainer.abstract_state(),
                                                         step=step, best=best)
  except checkpointing.NoBestCheckpointError:
    raise
  except FileNotFoundError:
    raise FileNotFoundError(f'workdir {workdir} holds no checkpoint (has training run?)') from None
  return Generator(config=config, model=trainer.model, params=params, step=int(restored_step))


# ---------------------------------------------------------------------------------------------
# Images.


@dataclasses.dataclass
class InputImage:
  """An image as the network sees it, plus what is needed to write the result back alike.

  Attributes:
    rgb: (H, W, 3) float32 in [0, 1] (grayscale replicated).
    alpha: (H, W) float32 in [0, 1], or None.
    gray: the file was grayscale; the output is written as grayscale.
    bits: 8 or 16, the bit depth of the output.
    notes: remarks for the user (e.g. precision lost on reading).
  """
  rgb: np.ndarray
  alpha: Optional[np.ndarray]
  gray: bool
  bits: int
  notes: list[str] = dataclasses.field(default_factory=list)


def _png_header(path: pathlib.Path) -> tuple[int, int]:
  """(bit depth, colour type) of a PNG file's IHDR, or (0, -1) for other files."""
  with open(path, 'rb') as f:
    head = f.read(26)
  if len(head) == 26 and head.startswith(_PNG_SIGNATURE) and head[12:16] == b'IHDR':
    return head[24], head[25]
  return 0, -1


def read_image(path: str | os.PathLike) -> InputImage:
  """Reads an LR image or a reference for inference.

  Raises:
    datasets.DatasetError: missing file, a folder, or a truncated/unreadable image.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise datasets.DatasetError(f'{path} does not exist')
  if path.is_dir():
    raise datasets.DatasetError(f'{path} is a folder, not an image file')
  try:
    depth, colour_type = _png_header(path)
    with Image.open(path) as img:
      img.load()
      mode = img.mode
      if mode in _GRAY16_MODES:
        arr = np.clip(np.asarray(img, np.float64), 0, 65535) / 65535.0
        rgb = np.repeat(arr.astype(np.float32)[..., None], 3, axis=-1)
        return InputImage(rgb, None, gray=True, bits=16)
      has_alpha = mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa') or 'transparency' in img.info
      gray = mode in ('1', 'L', 'LA', 'La')
      rgba = np.asarray(img.convert('RGBA'), np.float32) / 255.0
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise datasets.DatasetError(f'cannot read image {path}: {e}') from None
  notes = []
  if depth == 16 and colour_type in (2, 4, 6):
    notes.append(f'{path.name} is a 16-bit colour PNG: Pillow reads it at 8 bits per channel, '
                 'so the output is 8-bit')
  return InputImage(np.ascontiguousarray(rgba[..., :3]), rgba[..., 3] if has_alpha else None,
                    gray=gray, bits=8, notes=notes)


def to_pil(sr: np.ndarray, like: InputImage, alpha: Optional[np.ndarray] = None) -> Image.Image:
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
  return np.ascontiguousarray(datasets.fit_reference(ref, scale * h, scale * w), np.float32)


# ---------------------------------------------------------------------------------------------
# Tiling.


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """Equal-size LR tiles: (size_y, size_x) and the origins along each axis (multiples of ALIGN)."""
  size: tuple[int, int]
  ys: tuple[int, ...]
  xs: tuple[int, ...]
  overlap: int

  @property
  def count(self) -> int:
    return len(self.ys) * len(self.xs)


def axis_tiles(length: int, tile: int, overlap: int) -> tuple[int, tuple[int, ...]]:
  """Tile size and origins along one axis of `length` LR pixels.

  The size is the largest value <= `tile` congruent to `length` modulo ALIGN, so that equal tiles
  with ALIGN-aligned origins end exactly at the border (one compilation for all tiles); the
  origins are spread evenly with neighbours sharing at least `overlap` pixels.

  Raises:
    ValueError: `tile` below `overlap + 2 * ALIGN` (no room for an aligned stride).
  """
  if tile >= length:
    return length, (0,)
  if tile < overlap + 2 * ALIGN:
    raise ValueError(f'tile size {tile} is too small for overlap {overlap}: use at least '
                     f'{overlap + 2 * ALIGN} (overlap + {2 * ALIGN})')
  size = tile - (tile - length) % ALIGN
  stride = (size - overlap) // ALIGN * ALIGN
  positions = (length - size) // ALIGN  # Aligned origins available for the last tile.
  gaps = -(-(length - size) // stride)
  return size, tuple(ALIGN * (k * positions // gaps) for k in range(gaps + 1))


def blend_weights(start: int, size: int, length: int, overlap: int, scale: int) -> np.ndarray:
  """Feathering weights (scale*size,) of one tile along one axis, in HR pixels.

  At a cut edge the weight is 0 for the first `overlap * 3 // 8` LR pixels, then rises linearly to
  1 over the remaining overlap - 2 * margin. Neighbours share >= `overlap` pixels, so where one
  tile's weight is 0 the other's is 1, and every output pixel is a convex blend of tiles that each
  saw at least `margin` LR pixels of context beyond it.
  """
  margin = overlap * 3 // 8
  ramp = max(overlap - 2 * margin, 1)
  t = (np.arange(size * scale) + 0.5) / scale  # HR pixel centres in LR units from the origin.
  w = np.ones_like(t)
  if start > 0:
    w = np.minimum(w, np.clip((t - margin) / ramp, 0, 1))
  if start + size < length:
    w = np.minimum(w, np.clip((size - t - margin) / ramp, 0, 1))
  return w


# ---------------------------------------------------------------------------------------------
# Running the model.


def default_memory_bytes() -> int:
  """Budget without --max_memory_gb: 90% of the accelerator's memory, else half the host RAM."""
  import jax  # pylint: disable=import-outside-toplevel
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  # Backends without statistics.
    stats = None
  if stats and stats.get('bytes_limit'):
    return int(0.9 * stats['bytes_limit'])
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2


class Upscaler:
  """Runs a generator on whole images or tiles, one compiled executable per input shape."""

  def __init__(self, gen: Generator, log: Callable[[str], None] = lambda _: None):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    self.gen = gen
    self.log = log
    uses_ref = gen.uses_ref
    self._fn = jax.jit(lambda p, lr, ref: jnp.clip(
        gen.model.apply({'params': p}, lr, ref if uses_ref else None), 0.0, 1.0))
    self._compiled: dict[tuple[int, int], Any] = {}
    self._param_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize
                            for x in jax.tree.leaves(gen.params))

  def compiled(self, h: int, w: int):
    """The executable for LR (1, h, w, 3) (compiled on first use)."""
    if (h, w) not in self._compiled:
      import jax  # pylint: disable=import-outside-toplevel
      import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
      s = self.gen.scale
      lr = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
      ref = jax.ShapeDtypeStruct((1, s * h, s * w, 3), jnp.float32) if self.gen.uses_ref else None
      start = time.perf_counter()
      self._compiled[(h, w)] = self._fn.lower(self.gen.params, lr, ref).compile()
      self.log(f'compiled for LR {h}x{w} in {time.perf_counter() - start:.1f} s')
    return self._compiled[(h, w)]

  def estimate_bytes(self, h: int, w: int) -> int:
    """Device bytes of one call on an LR (h, w) input (XLA's analysis, or the analytic model)."""
    stats = None
    try:
      stats = self.compiled(h, w).memory_analysis()
    except Exception:  # pylint: disable=broad-except  # Not every backend implements it.
      pass
    if stats is None:
      per_px = ANALYTIC_BYTES_PER_FEATURE * int(self.gen.config.model.features)
      return self._param_bytes + per_px * h * w
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes +
               stats.temp_size_in_bytes - stats.alias_size_in_bytes)

  def plan(self, h: int, w: int, *, tile: Optional[int] = None,
           max_bytes: Optional[int] = None, overlap: int = DEFAULT_OVERLAP) -> Optional[TilePlan]:
    """None (untiled) if the image fits `max_bytes`, else the tiles; `tile` forces a tile size.

    Raises:
      ValueError: the budget cannot hold even the smallest tile, or `tile` is too small.
    """
    if tile is None:
      max_bytes = default_memory_bytes() if max_bytes is None else max_bytes
      need = self.estimate_bytes(h, w)
      self.log(f'memory: LR {h}x{w} needs {need / 2**30:.3g} GB of a {max_bytes / 2**30:.3g} GB '
               'budget (XLA memory analysis)')
      if need <= max_bytes:
        return None
      per_px = max(need - self._param_bytes, 1) / (h * w)
      tile = int(math.sqrt(max(max_bytes - self._param_bytes, 0) / per_px))
      smallest = overlap + 2 * ALIGN
      while True:
        tile = max(tile, smallest)
        size_y, _ = axis_tiles(h, tile, overlap)
        size_x, _ = axis_tiles(w, tile, overlap)
        need = self.estimate_bytes(size_y, size_x)
        self.log(f'memory: an LR {size_y}x{size_x} tile needs {need / 2**30:.3g} GB')
        if need <= max_bytes:
          break
        if tile == smallest:
          raise ValueError(f'the memory budget ({max_bytes / 2**30:.3g} GB) is too small: a '
                           f'{size_y}x{size_x} LR tile (overlap {overlap}) needs '
                           f'{need / 2**30:.3g} GB')
        tile = int(tile * 0.85)
    size_y, ys = axis_tiles(h, tile, overlap)
    size_x, xs = axis_tiles(w, tile, overlap)
    if len(ys) * len(xs) == 1:
      return None
    return TilePlan((size_y, size_x), ys, xs, overlap)

  def _run(self, lr: np.ndarray, ref: Optional[np.ndarray]) -> np.ndarray:
    exe = self.compiled(*lr.shape[:2])
    out = exe(self.gen.params, lr[None], None if ref is None else ref[None])
    return np.asarray(out)[0]

  def __call__(self, lr: np.ndarray, ref: Optional[np.ndarray],
               plan: Optional[TilePlan] = None) -> np.ndarray:
    """Super-resolves lr (H, W, 3) with ref (sH, sW, 3) (None for reference-free models).

    Returns:
      (sH, sW, 3) float32 in [0, 1].
    """
    lr = np.ascontiguousarray(lr, np.float32)
    ref = None if ref is None or not self.gen.uses_ref else np.ascontiguousarray(ref, np.float32)
    if plan is None:
      return self._run(lr, ref)
    s, (h, w), (th, tw) = self.gen.scale, lr.shape[:2], plan.size
    acc = np.zeros((s * h, s * w, 3), np.float32)
    total = np.zeros((s * h, s * w, 1), np.float32)
    for y in plan.ys:
      wy = blend_weights(y, th, h, plan.overlap, s)
      for x in plan.xs:
        wx = blend_weights(x, tw, w, plan.overlap, s)
        tile_ref = None if ref is None else ref[s * y:s * (y + th), s * x:s * (x + tw)]
        out = self._run(lr[y:y + th, x:x + tw], tile_ref)
        weight = (wy[:, None] * wx[None, :])[..., None].astype(np.float32)
        acc[s * y:s * (y + th), s * x:s * (x + tw)] += weight * out
        total[s * y:s * (y + th), s * x:s * (x + tw)] += weight
    return acc / total

