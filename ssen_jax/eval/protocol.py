"""The published evaluation protocol: the per-image loop, per-level runs and the reference controls.

Protocol (docs/conventions.md, "Evaluation protocol"): HR cropped to a multiple of the scale; LR =
MATLAB bicubic imresize(hr, 1/scale) rounded to uint8; SR rounded to uint8; PSNR/SSIM on BT.601 Y
for every three-channel file (single-channel files: their own channel), `scale` pixels shaved per
border; SSIM with an 11x11 Gaussian window (sigma 1.5), no padding. RGB PSNR (same shave) is
reported too, labelled as such.

The per-image loop (`evaluate_examples`) takes any `sr_fn(lr_uint8, refs) -> sr`: the bicubic
baseline (`bicubic_sr_fn`) and a model (`model_sr_fn`) are scored by the same code.

CUFED5-style sets are scored once per similarity level, each run pairing every HR image with its
single reference of that level (paper Tab. 3: XH ... XL), plus the mean over levels, and two
reference-use controls on the same images: `oracle` (the HR image itself as the reference, the
ceiling of what a reference can give) and `unrelated` (the XH reference of the next group, a photo
with nothing in common on CUFED5). `ref_gain = PSNR(XH) - PSNR(unrelated)` summarises how much the
model gains from a good reference. Models that take no reference (baseline, RCAN, self-similarity)
are scored once and that run fills every row, so their `ref_gain` is exactly 0 and tables line up.
Benchmark folders give one row (paper Tab. 2).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ssen_jax.core import progress
from ssen_jax.core.sharding import local_value
from ssen_jax.data import datasets
from ssen_jax.data import images
from ssen_jax.data import imresize as imresize_lib
from ssen_jax.eval import metrics

LEVELS = datasets.CUFED5_LEVELS
CONTROLS = ('oracle', 'unrelated')
SrFn = Callable[[np.ndarray, Sequence[np.ndarray]], np.ndarray]


def check_sizes(examples: Sequence[dict], scale: int) -> None:
  """Raises datasets.DatasetError (a ValueError) naming the first HR image too small to score:
  `scale` pixels are shaved per border and SSIM needs its 11x11 window in what is left. Checked
  before anything is computed (`evaluate`, and `main` before the first training step)."""
  need = metrics.min_image_size(scale)
  for ex in examples:
    height, width = ex['hr'].shape[:2]
    if min(height, width) < need:
      raise datasets.DatasetError(
          f'evaluation image {ex["name"]} is {height}x{width} (HR, cropped to a multiple of '
          f'{scale}); scoring shaves {scale} pixels per border and SSIM needs an '
          f'{metrics.SSIM_WINDOW}x{metrics.SSIM_WINDOW} window, so every image must be at least '
          f'{need}x{need}')


def load_dataset(kind: str, directory: str, scale: int, *, check: bool = True) -> list[dict]:
  """`datasets.load_folder` ('folder') or `datasets.load_cufed5` ('cufed5') by name.

  With `check`, images too small to score are refused (`check_sizes`)."""
  loaders = {'folder': datasets.load_folder, 'cufed5': datasets.load_cufed5}
  examples = loaders[kind](directory, scale)
  if check:
    check_sizes(examples, scale)
  return examples


def bicubic_sr_fn(scale: int) -> SrFn:
  """The bicubic baseline: MATLAB imresize of the uint8 LR by `scale` (refs ignored)."""

  def sr_fn(lr: np.ndarray, refs: Sequence[np.ndarray]) -> np.ndarray:
    del refs  # Bicubic upsampling does not use references.
    return imresize_lib.imresize(lr, scale)

  return sr_fn


def evaluate_examples(examples: Sequence[dict], sr_fn: SrFn, *, scale: int,
                      log_fn: Callable[[str], None] | None = None,
                      save_fn: Callable[[str, np.ndarray], None] | None = None) -> dict:
  """Runs `sr_fn` on every example and scores it.

  Args:
    examples: dicts from `ssen_jax.data.datasets` (`name`, `hr` (H, W, 3) uint8, `lr` uint8, `refs`,
      optional `gray`: the HR file has a single channel).
    sr_fn: `sr_fn(lr_uint8 (h, w, 3), refs) -> (H, W, 3)` uint8 or float in [0, 1].
    scale: SR factor and border shave.
    log_fn: called with one line per image, counted `i/N` (e.g. `print`), or None.
    save_fn: called with (example name, SR uint8 (H, W, 3)) for every image scored, or None.

  Returns:
    {'num_images', 'psnr', 'ssim', 'psnr_rgb', 'seconds', 'per_image': [{'name', 'psnr', 'ssim',
    'psnr_rgb'}, ...]} with means over images.

  Raises:
    ValueError: no examples, an HR image too small to score (`check_sizes`, before any work), or
      an SR output whose size differs from its HR image.
  """
  if not examples:
    raise ValueError('no examples to evaluate')
  check_sizes(examples, scale)  # All of them before the first SR image is computed.
  per_image = []
  start = time.perf_counter()
  counter = progress.Progress(len(examples), log_fn)
  for ex in examples:
    sr = np.asarray(sr_fn(ex['lr'], ex['refs']))
    if sr.shape[:2] != ex['hr'].shape[:2]:
      raise ValueError(f'{ex["name"]}: SR output {sr.shape} does not match HR {ex["hr"].shape}')
    gray = ex.get('gray', False)
    row = {'name': ex['name'],
           'psnr': metrics.psnr_y(sr, ex['hr'], scale, gray=gray),
           'ssim': metrics.ssim_y(sr, ex['hr'], scale, gray=gray),
           'psnr_rgb': metrics.psnr_rgb(sr, ex['hr'], scale)}
    per_image.append(row)
    if save_fn:
      save_fn(ex['name'], metrics.to_uint8(sr))
    counter.step(f'{row["name"]}: PSNR {row["psnr"]:.3f} dB, SSIM {row["ssim"]:.4f}')
  return {'num_images': len(per_image),
          'psnr': float(np.mean([r['psnr'] for r in per_image])),
          'ssim': float(np.mean([r['ssim'] for r in per_image])),
          'psnr_rgb': float(np.mean([r['psnr_rgb'] for r in per_image])),
          'seconds': time.perf_counter() - start,
          'per_image': per_image}



def model_sr_fn(sr_jit: Callable, params: Any, *, scale: int, uses_ref: bool,
                level: Optional[int] = None) -> SrFn:
  """Adapts a jitted `sr_jit(params, lr, ref)` (`inference.restore.make_sr_fn`) to an `SrFn`.

  Args:
    sr_jit: params, lr (1, h, w, 3) float, ref (1, s*h, s*w, 3) float or None -> SR in [0, 1].
    params: generator parameters.
    scale: SR factor.
    uses_ref: whether the model takes a reference.
    level: index into the example's `refs` (0 = XH); None uses the LR image's own content.
  """

  def sr_fn(lr: np.ndarray, refs: Sequence[np.ndarray]) -> np.ndarray:
    ref = None
    if uses_ref:
      # Without a reference the input is its own (bicubic-upscaled to HR size).
      given = None if level is None or not refs else refs[level].astype(np.float32) / 255.0
      ref = images.prepare_reference(given, lr.astype(np.float64) / 255.0, scale)[None]
    out = sr_jit(params, (lr.astype(np.float32) / 255.0)[None], ref)
    return local_value(out)[0]

  return sr_fn


def _named(save_fn, run: str):
  """save_fn(name, sr) -> save_fn(f'{name}_{run}', sr), or None."""
  return None if save_fn is None else (lambda name, sr: save_fn(f'{name}_{run}', sr))


def control_examples(examples: Sequence[dict]) -> Dict[str, List[dict]]:
  """The reference-use controls as examples with a single reference each.

  Returns:
    {'oracle': each example with its own HR as the reference, 'unrelated': each example with the
    first (XH) reference of the next example (cyclically) as its reference; absent for a single
    example}.
  """
  n = len(examples)
  out = {'oracle': [dict(ex, refs=[ex['hr']]) for ex in examples]}
  if n > 1:
    out['unrelated'] = [dict(ex, refs=[examples[(i + 1) % n]['refs'][0]])
                        for i, ex in enumerate(examples)]
  return out


def evaluate_model(examples: Sequence[dict], sr_jit: Callable, params: Any, *, scale: int,
                   uses_ref: bool, log_fn: Optional[Callable[[str], None]] = None,
                   save_fn: Optional[Callable[[str, np.ndarray], None]] = None
                   ) -> Dict[str, Any]:
  """Scores a model on evaluation examples from `ssen_jax.data.datasets`.

  Per-level sets (every example has the five CUFED5 references) give one run per level and per
  control (module docstring); a model without a reference is run once and that run fills every
  row. Other sets give one run. `log_fn` gets one line per image (`[run] i/N name: ...`);
  `save_fn(name, sr_uint8)` every SR image scored, named `<example>_<run>` (run: the level, a
  control, or `all` for single-run sets).

  Returns:
    {'psnr', 'ssim', 'psnr_rgb', 'levels': {level: results} or {}, 'controls': {'oracle': results,
    'unrelated': results} or {}, 'ref_gain': float or None, 'per_level': bool, 'all': results
    (single-run sets only)} where psnr/ssim are the means over the five levels for per-level sets.
  """
  per_level = all(len(ex['refs']) == len(LEVELS) for ex in examples)
  if not per_level or not uses_ref:
    res = evaluate_examples(
        examples, model_sr_fn(sr_jit, params, scale=scale, uses_ref=uses_ref), scale=scale,
        log_fn=log_fn, save_fn=_named(save_fn, 'all'))
    out = {'psnr': res['psnr'], 'ssim': res['ssim'], 'psnr_rgb': res['psnr_rgb'],
           'levels': {}, 'controls': {}, 'ref_gain': None, 'per_level': False, 'all': res}
    if per_level:  # A reference-free model on a per-level set: one run, every row.
      out.update(levels={name: res for name in LEVELS},
                 controls={name: res for name in CONTROLS}, ref_gain=0.0, per_level=True)
    return out
  runs = [(name, examples, i) for i, name in enumerate(LEVELS)]
  runs += [(name, exs, 0) for name, exs in control_examples(examples).items()]
  results = {}
  for name, exs, level in runs:
    results[name] = evaluate_examples(
        exs, model_sr_fn(sr_jit, params, scale=scale, uses_ref=True, level=level), scale=scale,
        log_fn=(lambda line, n=name: log_fn(f'[{n}] {line}')) if log_fn else None,
        save_fn=_named(save_fn, name))
  levels = {name: results[name] for name in LEVELS}
  return {'psnr': float(np.mean([r['psnr'] for r in levels.values()])),
          'ssim': float(np.mean([r['ssim'] for r in levels.values()])),
          'psnr_rgb': float(np.mean([r['psnr_rgb'] for r in levels.values()])),
          'levels': levels, 'controls': {n: results[n] for n in CONTROLS if n in results},
          'ref_gain': (results['XH']['psnr'] - results['unrelated']['psnr']
                       if 'unrelated' in results else None), 'per_level': True}


def summary_images(examples: Sequence[dict], sr_jit: Callable, params: Any, *, scale: int,
                   uses_ref: bool, count: int) -> Dict[str, np.ndarray]:
  """bicubic | SR | HR | reference (XH, fitted) side by side, for the first `count` examples."""
  out = {}
  for ex in list(examples)[:count]:
    hr = ex['hr'].astype(np.float32) / 255.0
    level = 0 if (uses_ref and ex['refs']) else None
    sr = model_sr_fn(sr_jit, params, scale=scale, uses_ref=uses_ref, level=level)(ex['lr'],
                                                                                 ex['refs'])
    panels = [images.self_reference(ex['lr'].astype(np.float64) / 255.0, scale), sr, hr]
    if ex['refs']:
      panels.append(images.fit_reference(ex['refs'][0], *hr.shape[:2]).astype(np.float32) / 255.0)
    out[f'eval/{ex["name"]}'] = np.concatenate(panels, axis=1)[None]
  return out
