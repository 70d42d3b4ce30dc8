"""The Python API: `load_model(workdir)` -> `Model`; `model(lr, ref=None)` -> the SR image.

  import numpy as np, PIL.Image, ssen_jax
  model = ssen_jax.load_model('/ckpt/ssen', best=True)
  sr = model(np.asarray(PIL.Image.open('photo.png')))            # self-reference
  sr = model(lr, ref=np.asarray(PIL.Image.open('reference.jpg')))  # any size, fitted
  PIL.Image.fromarray(sr).save('photo_x4.png')

Arrays in, arrays out, as `python -m ssen_jax.infer` does with files (the command runs this
class): uint8 in -> uint8 out, uint16 -> uint16, float in [0, 1] -> float32; (H, W) or (H, W, 1)
grayscale in -> grayscale out (the mean of the three output channels) of the same shape; a second
(gray + alpha) or fourth (RGBA) channel is alpha, upscaled by MATLAB bicubic and kept. The
reference (reference-based models only; others ignore it) may be of any size and kind: it is fitted
to `scale` x the input (`ssen_jax.data.images.fit_reference`); None makes the input its own
reference (its bicubic upscaling). Large inputs run in tiles under the memory budget
(`ssen_jax.inference.tiling`), one compilation per distinct input size.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import numpy as np

from ssen_jax.data import images
from ssen_jax.inference import tiling

_FLOATS = (np.float16, np.float32, np.float64)


def image_from_array(array: Any, name: str = 'lr') -> tuple[images.ImageFile, str]:
  """An (H, W[, C]) array as an `ImageFile` (the CLI's reading, from memory) and its output kind.

  Raises:
    ValueError: one sentence on what is wrong (shape, channels, dtype, range, non-finite).
  """
  arr = np.asarray(array)
  if arr.ndim not in (2, 3):
    raise ValueError(f'{name} must be an HxW or HxWxC image array, got shape {arr.shape}')
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f'{name} must have 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) '
                     f'channels, got {arr.shape[-1]} (shape {arr.shape})')
  if arr.shape[0] < 1 or arr.shape[1] < 1:
    raise ValueError(f'{name} is empty (shape {arr.shape})')
  if arr.dtype == np.uint8:
    kind, bits, plane = 'uint8', 8, lambda x: np.asarray(x, np.float32) / np.float32(255.0)
  elif arr.dtype == np.uint16:
    kind, bits = 'uint16', 16
    plane = lambda x: (np.asarray(x, np.float64) / 65535.0).astype(np.float32)
  elif arr.dtype in _FLOATS:
    if not np.isfinite(arr).all():
      raise ValueError(f'{name} holds NaN or infinite values')
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 1:
      raise ValueError(f'{name} is a float image outside [0, 1] (min {lo:.4g}, max {hi:.4g}): '
                       'scale it to [0, 1] or pass uint8')
    kind, bits, plane = 'float32', 8, lambda x: np.asarray(x, np.float32)
  else:
    raise ValueError(f'{name} has dtype {arr.dtype}: use uint8, uint16 or float in [0, 1]')
  gray = arr.shape[-1] <= 2
  colour = arr[..., :1] if gray else arr[..., :3]
  rgb = plane(colour)
  if gray:
    rgb = np.repeat(rgb, 3, axis=-1)
  alpha = plane(arr[..., -1]) if arr.shape[-1] in (2, 4) else None
  return images.ImageFile(np.ascontiguousarray(rgb), alpha, gray=gray, bits=bits), kind


class Model:
  """A restored generator with the tiling of `ssen_jax.infer`: `model(lr, ref=None)`.

  Attributes:
    generator: the `ssen_jax.inference.restore.Generator` (config, flax module, params, step).
    upscaler: the `tiling.Upscaler` (compiled executables per input size).
  """

  def __init__(self, generator: Any, *, max_memory_gb: Optional[float] = None,
               tile: Optional[int] = None, overlap: int = tiling.DEFAULT_OVERLAP,
               log: Callable[[str], None] = lambda _: None):
    """`max_memory_gb`: the budget (tiling.default_memory_bytes() if None); `tile` forces tiles."""
    if tile is not None and tile < 1:
      raise ValueError(f'tile must be positive, got {tile}')
    if overlap < 0:
      raise ValueError(f'overlap must be >= 0, got {overlap}')
    if max_memory_gb is not None and not max_memory_gb > 0:
      raise ValueError(f'max_memory_gb must be positive, got {max_memory_gb}')
    self.generator = generator
    self.max_bytes = None if max_memory_gb is None else int(max_memory_gb * 2**30)
    self.tile, self.overlap, self.log = tile, overlap, log
    self.upscaler = tiling.Upscaler(generator, log=log)
    self._plans: dict[tuple[int, int, int], Optional[tiling.TilePlan]] = {}

  scale = property(lambda self: self.generator.scale)
  uses_ref = property(lambda self: self.generator.uses_ref)
  step = property(lambda self: self.generator.step)
  config = property(lambda self: self.generator.config)
  variant = property(lambda self: self.generator.config.model.variant)

  def plan(self, h: int, w: int, ref: Optional[images.ImageFile] = None
           ) -> Optional[tiling.TilePlan]:
    """The tiles of an LR (h, w) input (None: one call), compiled; cached per size.

    `ref`: the decoded reference to be used (a reference-based model holds it beside the run, so
    its bytes count in the host arrays).

    Raises:
      ValueError: the budget holds no tile, or the forced tile is too small.
    """
    ref_bytes = 0
    if ref is not None and self.uses_ref:
      ref_bytes = ref.rgb.nbytes + (0 if ref.alpha is None else ref.alpha.nbytes)
    key = (h, w, ref_bytes)
    if key not in self._plans:
      plan = self.upscaler.plan(h, w, tile=self.tile, max_bytes=self.max_bytes,
                                overlap=self.overlap, ref_bytes=ref_bytes)
      self.upscaler.compiled(*((h, w) if plan is None else plan.size))
      self._plans[key] = plan
    return self._plans[key]

  def upscale(self, lr: images.ImageFile, ref: Optional[images.ImageFile] = None, *,
              progress: Optional[Callable[[int, int], None]] = None
              ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """SR of an image file: ((sH, sW, 3) float32 in [0, 1], upscaled alpha or None).

    `progress(done, count)` is called after each tile when the image is tiled."""
    s, (h, w) = self.scale, lr.rgb.shape[:2]
    plan = self.plan(h, w, ref)
    reference = None
    if self.uses_ref:
      reference = images.prepare_reference(None if ref is None else ref.rgb, lr.rgb, s)
    sr = self.upscaler(lr.rgb, reference, plan, progress)
    alpha = None if lr.alpha is None else images.upscale_alpha(lr.alpha, s)
    return sr, alpha

  def upscale_file(self, lr: images.ImageFile, ref: Optional[images.ImageFile] = None, *,
                   progress: Optional[Callable[[int, int], None]] = None):
    """SR of an image file as a Pillow image of the input's kind (what `infer` writes)."""
    sr, alpha = self.upscale(lr, ref, progress=progress)
    return images.to_pil(sr, lr, alpha)

  def __call__(self, lr: Any, ref: Any = None) -> np.ndarray:
    """Super-resolves one image array (module docstring for the kinds accepted).

    Args:
      lr: (H, W), (H, W, 1|2|3|4) uint8, uint16 or float in [0, 1].
      ref: the reference, any size and kind as `lr`, or None (self-reference).

    Returns:
      (sH, sW[, C]) with the input's channels; uint8 / uint16 / float32 as the input.

    Raises:
      ValueError: a bad array (one sentence), or a memory budget that holds no tile.
    """
    shape = np.shape(lr)
    lr_img, kind = image_from_array(lr, 'lr')
    ref_img = None if ref is None else image_from_array(ref, 'ref')[0]
    sr, alpha = self.upscale(lr_img, ref_img)
    out = images.to_array(sr, lr_img.gray, alpha, kind)
    if len(shape) == 3 and shape[-1] == 1:
      out = out[..., None]
    return out

  def __repr__(self) -> str:
    return f'Model({self.variant} x{self.scale}, step {self.step})'


def load_model(workdir: str | os.PathLike, *, step: Optional[int] = None, best: bool = False,
               max_memory_gb: Optional[float] = None, tile: Optional[int] = None,
               overlap: int = tiling.DEFAULT_OVERLAP) -> Model:
  """Restores the model of a training workdir (or a `convert_torch` folder) for `model(lr)`.

  Args:
    workdir: holds config.json and checkpoints/.
    step: checkpoint step (default the latest, or the best with `best`).
    best: the checkpoint with the best evaluation PSNR.
    max_memory_gb, tile, overlap: tiling, as `python -m ssen_jax.infer`'s flags.

  Raises:
    FileNotFoundError: no workdir or checkpoint; ValueError: bad arguments.
  """
  from ssen_jax.inference import restore  # pylint: disable=import-outside-toplevel  # JAX.
  return Model(restore.load_generator(workdir, step, best), max_memory_gb=max_memory_gb,
               tile=tile, overlap=overlap)
