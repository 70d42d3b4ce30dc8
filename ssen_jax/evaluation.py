"""Evaluating a trained generator with the published protocol (DESIGN.md §5).

CUFED5-style sets are scored once per similarity level, each run pairing every HR image with its
single reference of that level (paper Tab. 3: XH ... XL), plus the mean over levels; models that
take no reference (baseline, RCAN, self-similarity) are scored once. Benchmark folders give one row
(paper Tab. 2). The per-image loop and the metrics are those of `ssen_jax.evaluate` and
`ssen_jax.metrics`, so model and bicubic figures come from the same code.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import numpy as np

from ssen_jax import evaluate as evaluate_lib
from ssen_jax import imresize as imresize_lib
from ssen_jax.datasets import fit_reference

LEVELS = ('XH', 'H', 'M', 'L', 'XL')


def local_value(x: jax.Array) -> np.ndarray:
  """A replicated (possibly multi-host) array as numpy, read from this host's first replica."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_shards[0].data)
  return np.asarray(x)


def model_sr_fn(sr_jit: Callable, params: Any, *, scale: int, uses_ref: bool,
                level: Optional[int] = None) -> evaluate_lib.SrFn:
  """Adapts a jitted `sr_jit(params, lr, ref)` to `evaluate`'s `sr_fn(lr_uint8, refs)`.

  Args:
    sr_jit: params, lr (1, h, w, 3) float, ref (1, s*h, s*w, 3) float or None -> SR in [0, 1].
    params: generator parameters.
    scale: SR factor.
    uses_ref: whether the model takes a reference.
    level: index into the example's `refs` (0 = XH); None uses the LR image's own content.
  """

  def sr_fn(lr: np.ndarray, refs: Sequence[np.ndarray]) -> np.ndarray:
    h, w = lr.shape[:2]
    ref = None
    if uses_ref:
      if level is None or not refs:
        # No reference given: the input is its own reference (bicubic-upscaled to HR size).
        ref_img = np.clip(imresize_lib.imresize(lr.astype(np.float64) / 255.0, scale), 0, 1)
      else:
        ref_img = fit_reference(refs[level], scale * h, scale * w).astype(np.float32) / 255.0
      ref = ref_img[None].astype(np.float32)
    out = sr_jit(params, (lr.astype(np.float32) / 255.0)[None], ref)
    return local_value(out)[0]

  return sr_fn


def evaluate_model(examples: Sequence[dict], sr_jit: Callable, params: Any, *, scale: int,
                   uses_ref: bool, log_fn: Optional[Callable[[str], None]] = None
                   ) -> Dict[str, Any]:
  """Scores a model on evaluation examples from `ssen_jax.datasets`.

  Returns:
    {'psnr', 'ssim', 'psnr_rgb', 'levels': {level: results} or {}, 'per_level': bool, 'runs': [...]}
    where psnr/ssim are the means over levels for per-level evaluation.
  """
  per_level = uses_ref and all(len(ex['refs']) == len(LEVELS) for ex in examples)
  if not per_level:
    res = evaluate_lib.evaluate_examples(
        examples, model_sr_fn(sr_jit, params, scale=scale, uses_ref=uses_ref), scale=scale,
        log_fn=log_fn)
    return {'psnr': res['psnr'], 'ssim': res['ssim'], 'psnr_rgb': res['psnr_rgb'],
            'levels': {}, 'per_level': False, 'all': res}
  levels = {}
  for i, name in enumerate(LEVELS):
    levels[name] = evaluate_lib.evaluate_examples(
        examples, model_sr_fn(sr_jit, params, scale=scale, uses_ref=True, level=i), scale=scale,
        log_fn=(lambda line, n=name: log_fn(f'[{n}] {line}')) if log_fn else None)
  return {'psnr': float(np.mean([r['psnr'] for r in levels.values()])),
          'ssim': float(np.mean([r['ssim'] for r in levels.values()])),
          'psnr_rgb': float(np.mean([r['psnr_rgb'] for r in levels.values()])),
          'levels': levels, 'per_level': True}


def scalar_summary(results: Dict[str, Any], prefix: str = 'eval') -> Dict[str, float]:
  """Flat {name: value} for metric writers: per level and the mean."""
  out = {f'{prefix}/psnr': results['psnr'], f'{prefix}/ssim': results['ssim'],
         f'{prefix}/psnr_rgb': results['psnr_rgb']}
  for name, res in results['levels'].items():
    out[f'{prefix}/psnr_{name}'] = res['psnr']
    out[f'{prefix}/ssim_{name}'] = res['ssim']
  return out


def markdown_table(rows: List[tuple], *, scale: int, per_level: bool) -> str:
  """Paper-style table: Table 3's per-level columns, or Table 2's single PSNR/SSIM column.

  Args:
    rows: (method name, results of `evaluate_model` or bicubic results) pairs.
  """
  lines = [evaluate_lib.protocol_line(scale), '']
  if per_level:
    lines += ['| method | ' + ' | '.join(LEVELS) + ' | mean |',
              '|---|' + '---:|' * (len(LEVELS) + 1)]
    for name, res in rows:
      if res.get('levels'):
        cells = [f'{res["levels"][lv]["psnr"]:.2f}/{res["levels"][lv]["ssim"]:.3f}'
                 for lv in LEVELS]
      else:  # Reference-free methods score the same at every level.
        cells = [f'{res["psnr"]:.2f}/{res["ssim"]:.3f}'] * len(LEVELS)
      lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {res["psnr"]:.2f}/{res["ssim"]:.3f} |')
  else:
    lines += ['| method | PSNR/SSIM (Y) | PSNR-RGB |', '|---|---:|---:|']
    for name, res in rows:
      lines.append(f'| {name} | {res["psnr"]:.2f}/{res["ssim"]:.3f} | {res["psnr_rgb"]:.2f} |')
  return '\n'.join(lines)


def summary_images(examples: Sequence[dict], sr_jit: Callable, params: Any, *, scale: int,
                   uses_ref: bool, count: int) -> Dict[str, np.ndarray]:
  """bicubic | SR | HR | reference (XH, fitted) side by side, for the first `count` examples."""
  images = {}
  for ex in list(examples)[:count]:
    hr = ex['hr'].astype(np.float32) / 255.0
    level = 0 if (uses_ref and ex['refs']) else None
    sr = model_sr_fn(sr_jit, params, scale=scale, uses_ref=uses_ref, level=level)(ex['lr'],
                                                                                 ex['refs'])
    bicubic = np.clip(imresize_lib.imresize(ex['lr'].astype(np.float64) / 255.0, scale), 0, 1)
    panels = [bicubic.astype(np.float32), sr, hr]
    if ex['refs']:
      panels.append(fit_reference(ex['refs'][0], *hr.shape[:2]).astype(np.float32) / 255.0)
    images[f'eval/{ex["name"]}'] = np.concatenate(panels, axis=1)[None]
  return images
