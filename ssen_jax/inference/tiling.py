"""Running a restored generator on images of any size: tiling under a memory budget.

Tiling (`Upscaler`): large inputs are cut into equal-size overlapping LR tiles. Tile origins are
multiples of ALIGN = 8 LR pixels: the offset estimator's three stride-2 convolutions then sample
the same grid in a tile as in the whole image, so a tile reproduces the untiled output away from its
cut edges. Each tile's reference is the matching `scale` x region of the fitted reference. In the
overlap of two tiles, the first `overlap * 3 // 8` pixels from a cut edge are discarded (they see
the zero padding of the cut) and the rest is blended with a linear ramp (feathering). Only cut edges
are treated so: image borders are borders in both runs. Exactness limits: non-local blocks (global
attention) and RCAN's channel attention (global pooling) see only their tile, so trained models
with them differ slightly from untiled runs; everything else is local (docs/performance.md has the
measured differences).

Memory model: XLA's own accounting of one compiled model call, `memory_analysis()` (arguments incl.
parameters + outputs + temporaries - aliased). The whole image is compiled first; if it fits the
budget it runs untiled with that executable. Otherwise the bytes per LR pixel of that compilation
give a square tile size, whose compilation is checked against the budget again (shrinking 15% per
try, as dense attention below `nonlocal_dense_max` positions grows faster than linearly). Where
XLA gives no analysis, ANALYTIC_BYTES_PER_FEATURE * features bytes per LR pixel is assumed (a bound
above the measured bytes per feature channel, docs/performance.md). The host also holds the
full-size arrays of the image (`host_bytes`: the decoded LR image, HOST_BYTES_PER_LR_PIXEL, and per
HR pixel, scale**2 of them per LR pixel, the fitted reference and blend accumulators in float32 and
the uint8 output, HOST_BYTES_PER_HR_PIXEL: 656 B per LR pixel at x4; no float64 full-size copies),
plus the decoded reference file at its own size: on CPU, where device memory is host memory, they
are counted in the budget (the model calls get the rest); on an accelerator the budget is the
device's and the host arrays come on top.

The default budget (`default_memory_bytes`) is 90% of the accelerator's memory, or on CPU half the
host memory: the smaller of the physical RAM and the memory limit of the process's cgroup (v2 or
v1: containers, SLURM allocations; `cgroup_memory_limit`), so that a plan fits where the process
may allocate, not the machine.

Tiles are balanced (`plan_tiles`, `axis_tiles`): for a given tile area, the fewest tiles, then the
smallest equal tiles that cover the image with them (a 2048 x 2048 LR image whose budget allows
1648 x 1648 tiles runs 2 x 2 tiles of 1040, 1.03x its pixels, not 2 x 2 of 1648, 2.6x).

The plan (`Upscaler.plan`) minimises predicted time, not the number of tiles: each candidate
(untiled, and balanced tilings with tiles of at most 1024 ... 128 pixels a side) costs its tile
count x (the operations of one call, counted from the jaxpr with loops multiplied out by
`ssen_jax.core.cost`, + a per-call overhead). The non-local blocks' attention grows with the square
of a call's positions, so a large image with them runs fastest in tiles of a few hundred pixels
(docs/performance.md, "Tiled inference": the measured times); without them the count alone favours
the largest tiles that fit. The cheapest candidate that fits the budget is taken (within 5% of it,
the fewest tiles). On a CPU the plan considers calls of at most CPU_MAX_CALL_PIXELS (280x232)
LR pixels (`Upscaler.max_call_pixels`): there, 256x256 and every larger call measured ran 2-3x
slower per operation than calls of 280x232 and below, a cost the operation count does not see
(docs/performance.md, "The tile plan by predicted time": without non-local blocks 2 tiles of
1024x528, which the counts ranked first, took 2.37x the time of 20 tiles of 280x232; most of a
call's time is the correlation prior's window there). Accelerators search every size
(unmeasured).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Any, Callable, Optional

import numpy as np

# JAX is imported where first needed: the command-line tools check their inputs (files, images,
# output path) first and answer a bad one within a second.

ALIGN = 8  # Tile origins (LR px): 2**3 for the offset estimator's three stride-2 convolutions.
DEFAULT_OVERLAP = 32  # LR px shared by neighbouring tiles; see `blend_weights`.
ANALYTIC_BYTES_PER_FEATURE = 256  # Per LR pixel and feature channel, when XLA reports nothing.
# Host arrays of a whole image (`host_bytes`). Per LR pixel: the decoded input, float32 RGB 12 +
# alpha 4. Per HR pixel (scale**2 per LR pixel): fitted reference float32 12, blend accumulators
# float32 12 + 4, output uint8 3 and its Pillow image 4, upscaled alpha float32 4 + uint8 1.
HOST_BYTES_PER_LR_PIXEL = 16
HOST_BYTES_PER_HR_PIXEL = 40
# The tile planner (`Upscaler.plan`): the tile sides (LR px) it compares with an untiled run, for
# images above SEARCH_MIN_PIXELS LR pixels; a per-call cost in operations (dispatch, transfers and
# the host's blending: about a 100x100-pixel call of the demo model); costs within TIE of the least
# count as ties, broken by fewer tiles.
SEARCH_TILES = (1024, 768, 512, 384, 256, 192, 128)
SEARCH_MIN_PIXELS = 256 * 256
# On a CPU, the largest call (LR px) the plan considers for images above SEARCH_MIN_PIXELS: the
# largest measured at the fast rate; 256x256 and every larger call measured ran 2-3x slower per
# operation (see the module docstring).
CPU_MAX_CALL_PIXELS = 280 * 232
CALL_OVERHEAD = 1.5e10
TIE = 0.05
# cgroup limits at or above this mean "no limit" (v1 writes 2**63 - page size; v2 writes 'max').
_CGROUP_UNLIMITED = 2**60


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


def _origins(length: int, size: int, count: int) -> tuple[int, ...]:
  """`count` ALIGN-aligned origins from 0 to length - size, spread evenly."""
  positions = (length - size) // ALIGN  # Aligned origins available for the last tile.
  gaps = count - 1
  return tuple(sorted({ALIGN * (k * positions // gaps) for k in range(count)}))


def _cover(length: int, count: int, overlap: int) -> tuple[int, tuple[int, ...]]:
  """The smallest equal tile (size = length mod ALIGN) of which `count` cover `length` with
  neighbours sharing >= `overlap` pixels, and its origins."""
  if count == 1:
    return length, (0,)
  size = -(-(length + (count - 1) * overlap) // count)
  size = max(size, overlap + ALIGN + 1)
  size += (length - size) % ALIGN  # Up to the next size congruent to length mod ALIGN.
  while size < length:
    starts = _origins(length, size, count)
    if all(b - a <= size - overlap for a, b in zip(starts, starts[1:])):
      return size, starts
    size += ALIGN
  return length, (0,)


def axis_tiles(length: int, tile: int, overlap: int) -> tuple[int, tuple[int, ...]]:
  """Tile size and origins along one axis of `length` LR pixels (balanced).

  The fewest tiles of at most `tile` pixels, then the smallest equal size that covers the axis
  with them: the size is congruent to `length` modulo ALIGN, so that equal tiles with
  ALIGN-aligned origins end exactly at the border (one compilation for all tiles), and the
  origins are spread evenly with neighbours sharing at least `overlap` pixels. (A 2048 px axis
  with `tile` 1648 gives two tiles of 1040, not two of 1648.)

  Raises:
    ValueError: `tile` below `overlap + 2 * ALIGN` (no room for an aligned stride).
  """
  if tile >= length:
    return length, (0,)
  if tile < overlap + 2 * ALIGN:
    raise ValueError(f'tile size {tile} is too small for overlap {overlap}: use at least '
                     f'{overlap + 2 * ALIGN} (overlap + {2 * ALIGN})')
  for count in range(2, length // ALIGN + 3):
    size, starts = _cover(length, count, overlap)
    if size <= tile:
      return size, starts
  raise AssertionError('unreachable: stride ALIGN always fits')  # pragma: no cover


def plan_tiles(h: int, w: int, max_pixels: int, overlap: int) -> Optional[TilePlan]:
  """Balanced tiles for an LR (h, w) image whose tiles may hold `max_pixels` LR pixels each.

  The fewest tiles whose area fits, then the smallest total area (pixels computed); None when the
  whole image fits. Raises ValueError when even the smallest tile does not fit.
  """
  if h * w <= max_pixels:
    return None
  smallest = overlap + 2 * ALIGN
  best = None
  for ny in range(1, h // ALIGN + 3):
    size_y, ys = _cover(h, ny, overlap)
    if best is not None and len(ys) > best[0]:
      break
    cap = max_pixels // size_y
    if cap < min(w, smallest):
      continue
    size_x, xs = axis_tiles(w, cap, overlap)
    key = (len(ys) * len(xs), len(ys) * len(xs) * size_y * size_x)
    if best is None or key < best[:2]:
      best = key + (TilePlan((size_y, size_x), ys, xs, overlap),)
    if size_y == h and ny > 1:
      break
  if best is None:
    raise ValueError(f'a tile of {max_pixels} LR pixels is too small for overlap {overlap}')
  return None if best[0] == 1 else best[2]


def describe(plan: Optional[TilePlan], h: int, w: int) -> str:
  """'untiled HxW' or 'N tiles of HxW' (log lines, benchmark rows)."""
  if plan is None:
    return f'untiled {h}x{w}'
  return f'{plan.count} tiles of {plan.size[0]}x{plan.size[1]}'


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


def _read_cgroup_limit(path: pathlib.Path) -> Optional[int]:
  """A cgroup memory limit file's bytes, or None (no file, unreadable, 'max', or unlimited)."""
  try:
    text = path.read_text().strip()
  except OSError:
    return None
  if not text.isdigit() or int(text) >= _CGROUP_UNLIMITED:
    return None
  return int(text)


def cgroup_memory_limit(root: str | os.PathLike = '/') -> Optional[int]:
  """The memory limit (bytes) of this process's cgroup, or None when there is none.

  The process's cgroups come from `ROOT/proc/self/cgroup`: cgroup v2 (`0::/PATH`) limits are in
  `ROOT/sys/fs/cgroup/PATH/memory.max`, v1 (`N:memory:/PATH`) in
  `ROOT/sys/fs/cgroup/memory/PATH/memory.limit_in_bytes`. A cgroup is bounded by its ancestors
  too, so the smallest limit from PATH up to the hierarchy's root counts (inside a container the
  PATH may not exist in the container's view; its root then holds the container's limit).

  Args:
    root: the file system root (tests point it at a fake tree).
  """
  root = pathlib.Path(root)
  try:
    lines = (root / 'proc/self/cgroup').read_text().splitlines()
  except OSError:
    return None
  limits = []
  for line in lines:
    parts = line.strip().split(':', 2)
    if len(parts) != 3:
      continue
    controllers, cgroup_path = parts[1], pathlib.PurePosixPath(parts[2] or '/')
    if not controllers:  # The v2 unified hierarchy.
      base, name = root / 'sys/fs/cgroup', 'memory.max'
    elif 'memory' in controllers.split(','):
      base, name = root / 'sys/fs/cgroup/memory', 'memory.limit_in_bytes'
    else:
      continue
    for folder in (cgroup_path, *cgroup_path.parents):
      limit = _read_cgroup_limit(base / str(folder).lstrip('/') / name)
      if limit is not None:
        limits.append(limit)
  return min(limits) if limits else None


def host_memory_bytes(root: str | os.PathLike = '/') -> int:
  """The memory this process may use: the physical RAM, or its cgroup's limit when smaller."""
  physical = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  limit = cgroup_memory_limit(root)
  return physical if limit is None else min(physical, limit)


def default_memory_bytes(root: str | os.PathLike = '/') -> int:
  """Budget without --max_memory_gb: 90% of the accelerator's memory, else half the host memory
  (`host_memory_bytes`: the RAM or the cgroup limit, the smaller; `root` as there)."""
  import jax  # pylint: disable=import-outside-toplevel
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  # Backends without statistics.
    stats = None
  if stats and stats.get('bytes_limit'):
    return int(0.9 * stats['bytes_limit'])
  return host_memory_bytes(root) // 2


def host_bytes(h: int, w: int, scale: int, ref_bytes: int = 0) -> int:
  """Host bytes of the full-size arrays of an LR (h, w) image at `scale` (module docstring),
  plus `ref_bytes` for the decoded reference file."""
  return (HOST_BYTES_PER_LR_PIXEL + HOST_BYTES_PER_HR_PIXEL * scale * scale) * h * w + ref_bytes


def _call_pixels(plan: Optional[TilePlan], h: int, w: int) -> int:
  """LR pixels of one model call of `plan` on an (h, w) image (None: untiled)."""
  size = (h, w) if plan is None else plan.size
  return size[0] * size[1]


class Upscaler:
  """Runs a generator on whole images or tiles, one compiled executable per input shape."""

  def __init__(self, gen: Any, log: Callable[[str], None] = lambda _: None):
    """`gen`: an `ssen_jax.inference.restore.Generator`."""
    import jax  # pylint: disable=import-outside-toplevel
    self.gen = gen
    self.log = log
    # The largest call `plan` considers for large images (None: any size).
    self.max_call_pixels: Optional[int] = (CPU_MAX_CALL_PIXELS if jax.default_backend() == 'cpu'
                                           else None)
    self._fn = gen.sr_fn
    self._compiled: dict[tuple[int, int], Any] = {}
    self._counts: dict[tuple[int, int], dict[str, float]] = {}  # Operations per call, by size.
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
           max_bytes: Optional[int] = None, overlap: int = DEFAULT_OVERLAP,
           ref_bytes: int = 0) -> Optional[TilePlan]:
    """The tiling with the least predicted time that fits `max_bytes` (None: untiled).

    `tile` forces a tile size instead. `ref_bytes`: the decoded reference file held beside the
    run (counted as `host_bytes`). Images above SEARCH_MIN_PIXELS LR pixels: the candidates of
    `candidate_plans` whose calls have at most `max_call_pixels` LR pixels, by `predicted_cost`,
    the cheapest that fits (within TIE of it, the fewest tiles that fit); where none fits, and for
    smaller images, the fewest tiles that fit (`_largest_plan`: the whole image if it fits).

    Raises:
      ValueError: the budget cannot hold even the smallest tile, or `tile` is too small.
    """
    if tile is not None:
      size_y, ys = axis_tiles(h, tile, overlap)
      size_x, xs = axis_tiles(w, tile, overlap)
      return None if len(ys) * len(xs) == 1 else TilePlan((size_y, size_x), ys, xs, overlap)
    if h * w <= SEARCH_MIN_PIXELS:
      return self._largest_plan(h, w, max_bytes, overlap, ref_bytes)
    call_budget = self.call_budget(h, w, max_bytes, ref_bytes)
    cap = self.max_call_pixels
    costs = sorted((self.predicted_cost(p, h, w), 1 if p is None else p.count, k, p)
                   for k, p in enumerate(self.candidate_plans(h, w, overlap))
                   if cap is None or _call_pixels(p, h, w) <= cap)
    self.log('plan: predicted operations: ' + ', '.join(
        f'{describe(p, h, w)} {c:.3g}' for c, _, _, p in costs))
    fits = lambda p: self.estimate_bytes(*((h, w) if p is None else p.size)) <= call_budget
    cheapest = next((c for c in costs if fits(c[3])), None)
    if cheapest is None:  # Only tiles below the smallest candidate fit.
      return self._largest_plan(h, w, max_bytes, overlap, ref_bytes)
    near = sorted((n, c, k, p) for c, n, k, p in costs
                  if c <= cheapest[0] * (1 + TIE) and n < cheapest[1])
    plan = next((p for _, _, _, p in near if fits(p)), cheapest[3])
    need = self.estimate_bytes(*((h, w) if plan is None else plan.size))
    self.log(f'plan: {describe(plan, h, w)}, {need / 2**30:.3g} GB per call (XLA memory '
             f'analysis), budget {call_budget / 2**30:.3g} GB beside the host arrays')
    return plan

  def call_budget(self, h: int, w: int, max_bytes: Optional[int] = None,
                  ref_bytes: int = 0) -> int:
    """Bytes one model call may use on an LR (h, w) image: `max_bytes` (None:
    `default_memory_bytes()`) less the host arrays held beside it (`host_bytes`)."""
    max_bytes = default_memory_bytes() if max_bytes is None else max_bytes
    return max_bytes - self.host_bytes(h, w, ref_bytes)

  def candidate_plans(self, h: int, w: int, overlap: int = DEFAULT_OVERLAP
                      ) -> list[Optional[TilePlan]]:
    """Untiled (None) and the balanced tilings (`plan_tiles`) with tiles of at most
    SEARCH_TILES ** 2 pixels, each distinct tiling once."""
    plans = {(h, w, 1): None}
    for side in SEARCH_TILES:
      if side * side < h * w:
        plan = plan_tiles(h, w, side * side, overlap)
        if plan is not None:
          plans.setdefault((*plan.size, plan.count), plan)
    return list(plans.values())

  def _largest_plan(self, h: int, w: int, max_bytes: Optional[int], overlap: int,
                    ref_bytes: int) -> Optional[TilePlan]:
    """None if the image fits `max_bytes` in one call, else the fewest tiles that fit."""
    max_bytes = default_memory_bytes() if max_bytes is None else max_bytes
    host = self.host_bytes(h, w, ref_bytes)
    call_budget = max_bytes - host
    need = self.estimate_bytes(h, w)
    self.log(f'memory: LR {h}x{w} needs {need / 2**30:.3g} GB per call (XLA memory analysis) '
             f'+ {host / 2**30:.3g} GB of host arrays, budget {max_bytes / 2**30:.3g} GB')
    if need <= call_budget:
      return None
    per_px = max(need - self._param_bytes, 1) / (h * w)
    max_pixels = int(max(call_budget - self._param_bytes, 0) / per_px)
    smallest = (overlap + 2 * ALIGN) ** 2
    while True:
      try:
        plan = plan_tiles(h, w, max(max_pixels, smallest), overlap)
      except ValueError:
        plan = None
      size = plan.size if plan else (h, w)
      need = self.estimate_bytes(*size)
      self.log(f'memory: an LR {size[0]}x{size[1]} tile needs {need / 2**30:.3g} GB')
      if need <= call_budget and plan is not None:
        return plan
      if max_pixels <= smallest:
        raise ValueError(f'the memory budget ({max_bytes / 2**30:.3g} GB) is too small: a '
                         f'{size[0]}x{size[1]} LR tile (overlap {overlap}) needs '
                         f'{need / 2**30:.3g} GB beside {host / 2**30:.3g} GB of host arrays')
      max_pixels = int(max_pixels * 0.72)  # 15% less per side.

  def call_counts(self, h: int, w: int) -> dict[str, float]:
    """Operations of one call on an LR (h, w) input by kind (`ssen_jax.core.cost.counts`: loops
    multiplied out; only traced, not compiled), cached per size."""
    if (h, w) not in self._counts:
      import jax  # pylint: disable=import-outside-toplevel
      import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
      from ssen_jax.core import cost  # pylint: disable=import-outside-toplevel
      s = self.gen.scale
      lr = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
      ref = (jax.ShapeDtypeStruct((1, s * h, s * w, 3), jnp.float32)
             if self.gen.uses_ref else None)
      self._counts[(h, w)] = cost.counts(self._fn, self.gen.params, lr, ref)
    return self._counts[(h, w)]

  def predicted_cost(self, plan: Optional[TilePlan], h: int, w: int) -> float:
    """Predicted time of a tiling of an LR (h, w) image, in operations: calls x (the operations
    of one call, every kind counted alike, + CALL_OVERHEAD). Kinds and call sizes run at
    different rates (on this project's CPU 0.08-0.31 s per 10^9): with non-local blocks the
    cheapest prediction was the fastest; without them calls of 256x256 and more ran ~3x slower
    per operation, which is why `plan` caps the call size on a CPU (docs/performance.md, "The tile
    plan by predicted time")."""
    size, count = ((h, w), 1) if plan is None else (plan.size, plan.count)
    return count * (sum(self.call_counts(*size).values()) + CALL_OVERHEAD)

  def host_bytes(self, h: int, w: int, ref_bytes: int = 0) -> int:
    """Host arrays of a whole image held beside the model calls (module-level `host_bytes`),
    counted in the budget on CPU (where device memory is host memory), else 0."""
    import jax  # pylint: disable=import-outside-toplevel
    if jax.default_backend() != 'cpu':
      return 0
    return host_bytes(h, w, self.gen.scale, ref_bytes)

  def _run(self, lr: np.ndarray, ref: Optional[np.ndarray]) -> np.ndarray:
    exe = self.compiled(*lr.shape[:2])
    out = exe(self.gen.params, lr[None], None if ref is None else ref[None])
    return np.asarray(out)[0]

  def __call__(self, lr: np.ndarray, ref: Optional[np.ndarray],
               plan: Optional[TilePlan] = None,
               progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Super-resolves lr (H, W, 3) with ref (sH, sW, 3) (None for reference-free models).

    `progress(done, count)` is called after each tile of a tiled run.

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
    done = 0
    for y in plan.ys:
      wy = blend_weights(y, th, h, plan.overlap, s)
      for x in plan.xs:
        wx = blend_weights(x, tw, w, plan.overlap, s)
        tile_ref = None if ref is None else ref[s * y:s * (y + th), s * x:s * (x + tw)]
        out = self._run(lr[y:y + th, x:x + tw], tile_ref)
        weight = (wy[:, None] * wx[None, :])[..., None].astype(np.float32)
        acc[s * y:s * (y + th), s * x:s * (x + tw)] += weight * out
        total[s * y:s * (y + th), s * x:s * (x + tw)] += weight
        done += 1
        if progress is not None:
          progress(done, plan.count)
    np.divide(acc, total, out=acc)  # In place: no second full-size array.
    return acc

