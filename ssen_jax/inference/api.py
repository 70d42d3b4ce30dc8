"""The Python API: `load_model(workdir)` -> `Model`; `model(lr, ref=None)` -> the SR image.

  import numpy as np, PIL.Image, ssen_jax
  model = ssen_jax.load_model('/ckpt/ssen', best=True)  # or 'ssen.pth', config='configs/refsr.py'
  sr = model(np.asarray(PIL.Image.open('photo.png')))            # self-reference
  sr = model(lr, ref=np.asarray(PIL.Image.open('reference.jpg')))  # any size, fitted
  srs = model([lr1, lr2, lr3], [ref1, None, ref3], progress=True)  # a list -> a list
  PIL.Image.fromarray(sr).save('photo_x4.png')

Arrays in, arrays out, as `python -m ssen_jax.infer` does with files (the command runs this
class): uint8 in -> uint8 out, uint16 -> uint16, float in [0, 1] -> float32; (H, W) or (H, W, 1)
grayscale in -> grayscale out (the mean of the three output channels) of the same shape; a second
(gray + alpha) or fourth (RGBA) channel is alpha, upscaled by MATLAB bicubic and kept. The
reference (reference-based models only; others ignore it) may be of any size and kind: it is fitted
to `scale` x the input (`ssen_jax.data.images.fit_reference`); None makes the input its own
reference (its bicubic upscaling). Large inputs run in tiles under the memory budget
(`ssen_jax.inference.tiling`), one compilation per distinct input size.

Many images: a list (or tuple) of images gives a list, an (N, H, W, C) array a stacked (N, sH, sW,
C) array; the references are then None or a list / batch of N (None entries: self-reference).
Images of one size that fit the budget untiled run together, `batch_size` (8) per model call at
most, fewer where the budget asks: a group of n is cut into powers of two (8 + 4 + 1 for 13), so a
size compiles at most log2(batch_size) + 1 batch shapes, each once and reused by later calls, and
no call computes padding. A call runs the one-image program per image (`lax.map`), so every result
is bitwise the one-image call's; it saves the per-call dispatch and transfers. `vectorize=True`
makes it one vectorized batch instead (for accelerators, where small images leave the chip idle;
batched matrix products round differently, so results may differ by float rounding).
"""
from __future__ import annotations

import os
import pathlib
import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ssen_jax.core import progress as progress_lib
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
               batch_size: int = 8, vectorize: bool = False, progress: bool = False,
               log: Callable[[str], None] = lambda _: None):
    """`max_memory_gb`: the budget (tiling.default_memory_bytes() if None); `tile` forces tiles;
    `batch_size`: most images of one size per model call; `vectorize`: such a call is one
    vectorized batch (`batched`); `progress`: `__call__`'s default."""
    if tile is not None and tile < 1:
      raise ValueError(f'tile must be positive, got {tile}')
    if overlap < 0:
      raise ValueError(f'overlap must be >= 0, got {overlap}')
    if max_memory_gb is not None and not max_memory_gb > 0:
      raise ValueError(f'max_memory_gb must be positive, got {max_memory_gb}')
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}')
    self.generator = generator
    self.max_bytes = None if max_memory_gb is None else int(max_memory_gb * 2**30)
    self.tile, self.overlap, self.log = tile, overlap, log
    self.batch_size, self.vectorize, self.progress = batch_size, bool(vectorize), bool(progress)
    self.upscaler = tiling.Upscaler(generator, log=log)
    self._plans: dict[tuple[int, int, int], Optional[tiling.TilePlan]] = {}
    self._batched: dict[tuple[int, int, int], Any] = {}  # (n, h, w) -> executable.

  scale = property(lambda self: self.generator.scale)
  uses_ref = property(lambda self: self.generator.uses_ref)
  step = property(lambda self: self.generator.step)
  config = property(lambda self: self.generator.config)
  variant = property(lambda self: self.generator.config.model.variant)

  @property
  def sharding(self) -> Any:
    """Where the parameters are (a `jax.sharding.Sharding`); the model runs there."""
    import jax  # pylint: disable=import-outside-toplevel
    return jax.tree.leaves(self.generator.params)[0].sharding

  def plan(self, h: int, w: int, ref: Optional[images.ImageFile] = None
           ) -> Optional[tiling.TilePlan]:
    """The tiles of an LR (h, w) input (None: one call), compiled; cached per size.

    `ref`: the decoded reference to be used (a reference-based model holds it beside the run, so
    its bytes count in the host arrays).

    Raises:
      ValueError: the budget holds no tile, or the forced tile is too small.
    """
    ref_bytes = self._ref_bytes(ref)
    key = (h, w, ref_bytes)
    if key not in self._plans:
      plan = self.upscaler.plan(h, w, tile=self.tile, max_bytes=self.max_bytes,
                                overlap=self.overlap, ref_bytes=ref_bytes)
      self.upscaler.compiled(*((h, w) if plan is None else plan.size))
      self._plans[key] = plan
    return self._plans[key]

  def _ref_bytes(self, ref: Optional[images.ImageFile]) -> int:
    if ref is None or not self.uses_ref:
      return 0
    return ref.rgb.nbytes + (0 if ref.alpha is None else ref.alpha.nbytes)

  def upscale(self, lr: images.ImageFile, ref: Optional[images.ImageFile] = None, *,
              progress: Optional[Callable[[int, int], None]] = None
              ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """SR of an image file: ((sH, sW, 3) float32 in [0, 1], upscaled alpha or None).

    `progress(done, count)` is called after each tile when the image is tiled."""
    s, (h, w) = self.scale, lr.rgb.shape[:2]
    plan = self.plan(h, w, ref)
    sr = self.upscaler(lr.rgb, self._reference(lr, ref), plan, progress)
    alpha = None if lr.alpha is None else images.upscale_alpha(lr.alpha, s)
    return sr, alpha

  def _reference(self, lr: images.ImageFile, ref: Optional[images.ImageFile]
                 ) -> Optional[np.ndarray]:
    """The (sH, sW, 3) float32 reference the network gets (None for reference-free models)."""
    if not self.uses_ref:
      return None
    return images.prepare_reference(None if ref is None else ref.rgb, lr.rgb, self.scale)

  def upscale_file(self, lr: images.ImageFile, ref: Optional[images.ImageFile] = None, *,
                   progress: Optional[Callable[[int, int], None]] = None):
    """SR of an image file as a Pillow image of the input's kind (what `infer` writes)."""
    sr, alpha = self.upscale(lr, ref, progress=progress)
    return images.to_pil(sr, lr, alpha)

  # -------------------------------------------------------------------------------------------
  # Many images of one size per model call.

  def batch_limit(self, h: int, w: int, ref_bytes: int = 0) -> int:
    """The most LR (h, w) images one model call takes: `batch_size`, halved until the budget
    holds the batch: one image's activations (all of them with `vectorize`), each image's input,
    reference and output and, on CPU, its host arrays. 1 when even two do not fit."""
    max_bytes = tiling.default_memory_bytes() if self.max_bytes is None else self.max_bytes
    one = self.upscaler.estimate_bytes(h, w)
    params = self.upscaler._param_bytes  # pylint: disable=protected-access
    s2 = self.scale * self.scale
    io = 4 * 3 * h * w * (1 + s2 * (1 + self.uses_ref))  # float32 lr, output, reference.
    per_image = (max(one - params, 0) if self.vectorize else io) + self.upscaler.host_bytes(
        h, w, ref_bytes)
    n = 1 << (self.batch_size.bit_length() - 1)  # The largest power of two <= batch_size.
    while n > 1 and one + (n - 1) * per_image > max_bytes:
      n //= 2
    return n

  def batched(self, n: int, h: int, w: int):
    """The executable for n LR (h, w) images, compiled on first use.

    Without `vectorize` it runs the one-image program n times (`lax.map`): bitwise the one-image
    results on every backend (a vectorized batch may not be: batched matrix products round
    differently, e.g. in the non-local attention). On a mesh (`load_model(device=NamedSharding)`)
    the batch is split over its devices where n divides evenly, else each runs all of it.
    """
    key = (n, h, w)
    if key not in self._batched:
      import time  # pylint: disable=import-outside-toplevel
      import jax  # pylint: disable=import-outside-toplevel
      import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
      P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
      fn, uses_ref, s = self.generator.sr_fn, self.uses_ref, self.scale

      def run(params, lr, ref):
        if self.vectorize:
          return fn(params, lr, ref)
        return jax.lax.map(lambda x: fn(params, x[0][None], None if x[1] is None else
                                        x[1][None])[0], (lr, ref))

      sharding = self.sharding
      if isinstance(sharding, jax.sharding.NamedSharding):
        mesh = sharding.mesh
        batch = P(tuple(mesh.axis_names)) if n % mesh.size == 0 else P()
        sharding = jax.sharding.NamedSharding(mesh, batch)
        if batch != P() and not self.vectorize:  # Each device maps over its own images.
          if uses_ref:
            run = jax.shard_map(run, mesh=mesh, in_specs=(P(), batch, batch), out_specs=batch)
          else:
            local = jax.shard_map(lambda p, x: run(p, x, None), mesh=mesh,
                                  in_specs=(P(), batch), out_specs=batch)
            run = lambda p, x, r: local(p, x)
      elif not isinstance(sharding, jax.sharding.SingleDeviceSharding):
        sharding = None  # Left to jit: the parameters' devices.
      lr = jax.ShapeDtypeStruct((n, h, w, 3), jnp.float32, sharding=sharding)
      ref = (jax.ShapeDtypeStruct((n, s * h, s * w, 3), jnp.float32, sharding=sharding)
             if uses_ref else None)
      start = time.perf_counter()
      self._batched[key] = jax.jit(run).lower(self.generator.params, lr, ref).compile()
      self.log(f'compiled for {n} x LR {h}x{w} in {time.perf_counter() - start:.1f} s')
    return self._batched[key]

  def _upscale_together(self, lrs: list[images.ImageFile],
                        refs: list[Optional[images.ImageFile]]) -> list[np.ndarray]:
    """SR (sH, sW, 3) float32 of images of one size in one model call (untiled)."""
    if len(lrs) == 1:  # The one-image call itself.
      return [self.upscale(lrs[0], refs[0])[0]]
    h, w = lrs[0].rgb.shape[:2]
    lr = np.stack([np.asarray(x.rgb, np.float32) for x in lrs])
    ref = None
    if self.uses_ref:
      ref = np.stack([np.asarray(self._reference(x, r), np.float32) for x, r in zip(lrs, refs)])
    out = np.asarray(self.batched(len(lrs), h, w)(self.generator.params, lr, ref))
    return list(out)

  def upscale_many(self, lrs: Sequence[images.ImageFile],
                   refs: Sequence[Optional[images.ImageFile]], *,
                   progress: Optional[Callable[[str], None]] = None
                   ) -> list[tuple[np.ndarray, Optional[np.ndarray]]]:
    """`upscale` of each image, those of one size together (`batch_limit` per call).

    Args:
      lrs: decoded LR images; refs: their references (None entries: self-reference).
      progress: called with a line `[i/N] ...` after each image or model call, and per tile of a
        tiled image.

    Returns:
      [(SR (sH, sW, 3) float32 in [0, 1], upscaled alpha or None)], in the order of `lrs`.
    """
    count = len(lrs)
    counter = progress_lib.Progress(count, progress)
    results: list[Any] = [None] * count
    groups: dict[tuple[int, int], list[int]] = {}
    for i, lr in enumerate(lrs):
      groups.setdefault(lr.rgb.shape[:2], []).append(i)

    for (h, w), indices in groups.items():
      together = []
      for i in indices:
        if self.plan(h, w, refs[i]) is None:
          together.append(i)
          continue
        tiles = None
        if progress is not None:
          tiles = lambda k, n, i=i: progress(counter.line(f'image {i + 1}: tile {k}/{n}'))
        results[i] = self.upscale(lrs[i], refs[i], progress=tiles)
        counter.step(f'image {i + 1} ({h}x{w}, tiled)')
      if not together:
        continue
      limit = self.batch_limit(h, w, max(self._ref_bytes(refs[i]) for i in together))
      while together:
        n = min(limit, 1 << (len(together).bit_length() - 1))
        chunk, together = together[:n], together[n:]
        srs = self._upscale_together([lrs[i] for i in chunk], [refs[i] for i in chunk])
        for i, sr in zip(chunk, srs):
          alpha = None if lrs[i].alpha is None else images.upscale_alpha(lrs[i].alpha, self.scale)
          results[i] = (sr, alpha)
        names = ', '.join(str(i + 1) for i in chunk)
        counter.step(f'image{"s" * (n > 1)} {names} ({h}x{w})', items=n)
    return results

  # -------------------------------------------------------------------------------------------
  # Arrays in, arrays out.

  def __call__(self, lr: Any, ref: Any = None, *, progress: Optional[bool] = None) -> Any:
    """Super-resolves one image array, a list of them or a batch (module docstring for kinds).

    Args:
      lr: one image (H, W), (H, W, 1|2|3|4) uint8, uint16 or float in [0, 1]; a list (or tuple)
        of such images, of any sizes and kinds; or a batch (N, H, W, C).
      ref: for one image, its reference (any size and kind as `lr`) or None (self-reference);
        for a list or a batch, None or a list / (N, h, w, c) batch of N references (entries may be
        None).
      progress: print `[i/N] ...` to stderr per image, model call or tile (default: the model's
        `progress`).

    Returns:
      For one image, (sH, sW[, C]) with the input's channels, uint8 / uint16 / float32 as the
      input; for a list, a list of those; for a batch, their (N, sH, sW[, C]) stack.

    Raises:
      ValueError: a bad array or a reference count that does not match (one sentence), or a
        memory budget that holds no tile.
    """
    show = self.progress if progress is None else progress
    printer = _stderr_line if show else None
    if isinstance(lr, (list, tuple)) or np.ndim(lr) == 4:
      return self._call_many(lr, ref, printer)
    if isinstance(ref, (list, tuple)) or (ref is not None and np.ndim(ref) == 4):
      raise ValueError('ref is a list or a batch but lr is one image: pass lr as a list or an '
                       '(N, H, W, C) batch too, or one reference')
    shape = np.shape(lr)
    lr_img, kind = image_from_array(lr, 'lr')
    ref_img = None if ref is None else image_from_array(ref, 'ref')[0]
    tiles = None if printer is None else lambda k, n: printer(f'tile {k}/{n}')
    sr, alpha = self.upscale(lr_img, ref_img, progress=tiles)
    return _output(sr, alpha, lr_img, kind, shape)

  def _call_many(self, lr: Any, ref: Any, printer: Optional[Callable[[str], None]]) -> Any:
    batch = not isinstance(lr, (list, tuple))
    lrs = list(np.asarray(lr)) if batch else list(lr)
    what = 'batch' if batch else 'list'
    if ref is None:
      refs = [None] * len(lrs)
    elif isinstance(ref, (list, tuple)) or np.ndim(ref) == 4:
      refs = list(ref) if isinstance(ref, (list, tuple)) else list(np.asarray(ref))
      if len(refs) != len(lrs):
        raise ValueError(f'lr is a {what} of {len(lrs)} images but ref holds {len(refs)} '
                         'references: give one per image (None entries for self-reference)')
    else:
      raise ValueError(f'lr is a {what} of {len(lrs)} images, so ref must be None or a list or '
                       f'(N, H, W, C) batch of {len(lrs)} references, got shape {np.shape(ref)}')
    if batch and not lrs:
      raise ValueError(f'lr is an empty batch (shape {np.shape(lr)})')
    decoded = [image_from_array(x, f'lr[{i}]') for i, x in enumerate(lrs)]
    ref_imgs = [None if r is None else image_from_array(r, f'ref[{i}]')[0]
                for i, r in enumerate(refs)]
    results = self.upscale_many([d[0] for d in decoded], ref_imgs, progress=printer)
    outs = [_output(sr, alpha, img, kind, np.shape(x))
            for (sr, alpha), (img, kind), x in zip(results, decoded, lrs)]
    return np.stack(outs) if batch else outs

  def __repr__(self) -> str:
    return f'Model({self.variant} x{self.scale}, step {self.step})'


def _output(sr: np.ndarray, alpha: Optional[np.ndarray], lr: images.ImageFile, kind: str,
            shape: tuple[int, ...]) -> np.ndarray:
  """The output array of an input of `shape`: its kind and channels ((H, W, 1) stays so)."""
  out = images.to_array(sr, lr.gray, alpha, kind)
  if len(shape) == 3 and shape[-1] == 1:
    out = out[..., None]
  return out


def _stderr_line(text: str) -> None:
  print(text, file=sys.stderr, flush=True)


def load_model(workdir: Optional[str | os.PathLike] = None, *,
               checkpoint: Optional[str | int | os.PathLike] = None, step: Optional[int] = None,
               best: bool = False, config: Any = None, device: Any = None,
               max_memory_gb: Optional[float] = None, tile: Optional[int] = None,
               overlap: int = tiling.DEFAULT_OVERLAP, batch_size: int = 8,
               vectorize: bool = False, progress: bool = False) -> Model:
  """Restores a model for `model(lr)`: a training workdir, a `convert_torch` folder or a .pth.

    load_model('/ckpt/ssen')                               # the latest checkpoint
    load_model('/ckpt/ssen', checkpoint=20000) / (..., checkpoint='best')  # or step=, best=True
    load_model('ssen.pth', config='configs/refsr.py:ssen')  # PyTorch weights
    load_model('/ckpt/ssen', checkpoint='ssen.pth')         # its config.json gives the architecture
    load_model('/ckpt/converted', device=jax.devices('cpu')[0])

  Args:
    workdir: a training workdir (config.json and checkpoints/), a folder written by
      `python -m ssen_jax.convert_torch`, or a PyTorch .pth file (then `config` gives the
      architecture).
    checkpoint: as the tools' --checkpoint: a step of `workdir`, 'best' (the checkpoint with the
      best evaluation PSNR), 'latest', a .pth file or a converted folder.
    step: checkpoint step (the same as `checkpoint=step`; default the latest, or the best).
    best: the checkpoint with the best evaluation PSNR.
    config: the architecture of a .pth: FILE[:variant] (e.g. 'configs/refsr.py:ssen') or a loaded
      config; default the workdir's config.json.
    device: a `jax.Device` or a `jax.sharding.Sharding` (e.g. a `NamedSharding` with an empty
      PartitionSpec replicates the parameters over a mesh, whose devices then share a batch):
      where the parameters are put and the model runs; default the first local device.
    max_memory_gb, tile, overlap: tiling, as `python -m ssen_jax.infer`'s flags.
    batch_size: most images of one size per model call (lists and batches).
    vectorize: run such a call as one vectorized batch (faster on an accelerator; its results may
      differ from one-image calls by float rounding) instead of the one-image program per image
      inside the call (bitwise the one-image results; the default).
    progress: print `[i/N] ...` per image and tile to stderr by default (`model(..., progress=)`
      overrides it).

  Raises:
    FileNotFoundError: no workdir, file or checkpoint; ValueError: bad arguments, or weights that
      do not fit the config (one sentence).
  """
  from ssen_jax.inference import restore  # pylint: disable=import-outside-toplevel  # JAX.
  import jax  # pylint: disable=import-outside-toplevel
  if step is not None:
    if checkpoint is not None:
      raise ValueError(f'give step or checkpoint, not both (step={step}, '
                       f'checkpoint={checkpoint!r})')
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
      raise ValueError(f'step must be a non-negative integer, got {step!r}')
    checkpoint = step
  if workdir is not None and pathlib.Path(workdir).is_file():
    if checkpoint is not None:
      raise ValueError(f'{workdir} is a file (weights), so checkpoint={checkpoint!r} has nothing '
                       'to choose from: pass the workdir as workdir, or the file alone')
    workdir, checkpoint = None, workdir
  if checkpoint is not None:
    checkpoint = str(checkpoint)
  if checkpoint in ('best', 'latest'):  # The tools' --checkpoint words (a folder: './best').
    if best and checkpoint == 'latest':
      raise ValueError("give best=True or checkpoint='latest', not both")
    best, checkpoint = best or checkpoint == 'best', None
  if workdir is None and checkpoint is None:
    raise ValueError('load_model needs a workdir, a converted folder or a .pth file')
  if workdir is None and checkpoint.isdigit():
    raise ValueError(f'checkpoint={checkpoint} is a step: pass the workdir it belongs to')
  if (workdir is None and pathlib.Path(checkpoint).is_file() and config is None):
    raise ValueError(f'{checkpoint} holds PyTorch weights: pass config=\'FILE[:variant]\' '
                     "(e.g. 'configs/refsr.py:ssen') to give their architecture")
  if device is None:
    sharding = None
  elif isinstance(device, jax.sharding.Sharding):
    sharding = device
  elif isinstance(device, jax.Device):
    sharding = jax.sharding.SingleDeviceSharding(device)
  else:
    raise ValueError(f'device must be a jax.Device or a jax.sharding.Sharding, got {device!r}')
  if workdir is not None and not pathlib.Path(workdir).exists():
    raise FileNotFoundError(f'{workdir} does not exist (a workdir, a folder written by '
                            'ssen_jax.convert_torch or a .pth file)')
  if checkpoint is not None and not checkpoint.isdigit() and not pathlib.Path(checkpoint).exists():
    raise FileNotFoundError(f'checkpoint {checkpoint} is neither a step number nor an existing '
                            '.pth file or converted folder')
  gen = restore.generator_from_flags(None if workdir is None else str(workdir), checkpoint,
                                     config, best, sharding)
  return Model(gen, max_memory_gb=max_memory_gb, tile=tile, overlap=overlap,
               batch_size=batch_size, vectorize=vectorize, progress=progress)
