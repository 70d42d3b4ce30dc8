"""Evaluating a trained generator with the published protocol (DESIGN.md §5).

CUFED5-style sets are scored once per similarity level, each run pairing every HR image with its
single reference of that level (paper Tab. 3: XH ... XL), plus the mean over levels, and two
reference-use controls on the same images: `oracle` (the HR image itself as the reference, the
ceiling of what a reference can give) and `unrelated` (the XH reference of the next group, a photo
with nothing in common on CUFED5). `ref_gain = PSNR(XH) - PSNR(unrelated)` summarises how much the
model gains from a good reference. Models that take no reference (baseline, RCAN, self-similarity)
are scored once and that run fills every row, so their `ref_gain` is exactly 0 and tables line up.
Benchmark folders give one row (paper Tab. 2). The per-image loop and the metrics are those of `ssen_jax.evaluate` and
`ssen_jax.metrics`, so model and bicubic figures come from the same code.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import numpy as np

from ssen_jax import evaluate as evaluate_lib
from ssen_jax.data import imresize as imresize_lib
from ssen_jax.data.datasets import fit_reference

LEVELS = ('XH', 'H', 'M', 'L', 'XL')
CONTROLS = ('oracle', 'unrelated')


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
                   uses_ref: bool, log_fn: Optional[Callable[[str], None]] = None
                   ) -> Dict[str, Any]:
  """Scores a model on evaluation examples from `ssen_jax.datasets`.

  Per-level sets (every example has the five CUFED5 references) give one run per level and per
  control (module docstring); a model without a reference is run once and that run fills every
  row. Other sets give one run.

  Returns:
    {'psnr', 'ssim', 'psnr_rgb', 'levels': {level: results} or {}, 'controls': {'oracle': results,
    'unrelated': results} or {}, 'ref_gain': float or None, 'per_level': bool, 'all': results
    (single-run sets only)} where psnr/ssim are the means over the five levels for per-level sets.
  """
  per_level = all(len(ex['refs']) == len(LEVELS) for ex in examples)
  if not per_level or not uses_ref:
    res = evaluate_lib.evaluate_examples(
        examples, model_sr_fn(sr_jit, params, scale=scale, uses_ref=uses_ref), scale=scale,
        log_fn=log_fn)
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
    results[name] = evaluate_lib.evaluate_examples(
        exs, model_sr_fn(sr_jit, params, scale=scale, uses_ref=True, level=level), scale=scale,
        log_fn=(lambda line, n=name: log_fn(f'[{n}] {line}')) if log_fn else None)
  levels = {name: results[name] for name in LEVELS}
  return {'psnr': float(np.mean([r['psnr'] for r in levels.values()])),
          'ssim': float(np.mean([r['ssim'] for r in levels.values()])),
          'psnr_rgb': float(np.mean([r['psnr_rgb'] for r in levels.values()])),
          'levels': levels, 'controls': {n: results[n] for n in CONTROLS if n in results},
          'ref_gain': (results['XH']['psnr'] - results['unrelated']['psnr']
                       if 'unrelated' in results else None), 'per_level': True}


def describe(results: Dict[str, Any]) -> str:
  """One log line: the mean, each level and control, and ref_gain."""
  line = f'PSNR {results["psnr"]:.3f} dB, SSIM {results["ssim"]:.4f}'
  rows = {**results.get('levels', {}), **results.get('controls', {})}
  if rows:
    line += ' (' + ', '.join(f'{k} {v["psnr"]:.2f}' for k, v in rows.items()) + ')'
  if results.get('ref_gain') is not None:
    line += f', ref_gain {results["ref_gain"]:+.3f} dB'
  return line


def scalar_summary(results: Dict[str, Any], prefix: str = 'eval') -> Dict[str, float]:
  """Flat {name: value} for metric writers: the mean, per level and control, and ref_gain."""
  out = {f'{prefix}/psnr': results['psnr'], f'{prefix}/ssim': results['ssim'],
         f'{prefix}/psnr_rgb': results['psnr_rgb']}
  for name, res in {**results['levels'], **results.get('controls', {})}.items():
    out[f'{prefix}/psnr_{name}'] = res['psnr']
    out[f'{prefix}/ssim_{name}'] = res['ssim']
  if results.get('ref_gain') is not None:
    out[f'{prefix}/ref_gain'] = results['ref_gain']
  return out


def markdown_table(rows: List[tuple], *, scale: int, per_level: bool) -> str:
  """Paper-style table: Table 3's per-level columns, or Table 2's single PSNR/SSIM column.

  Per-level tables add the controls (oracle, unrelated) and ref_gain = XH - unrelated (dB).

  Args:
    rows: (method name, results of `evaluate_model` or bicubic results) pairs.
  """
  lines = [evaluate_lib.protocol_line(scale), '']
  if per_level:
    columns = LEVELS + ('mean',) + CONTROLS
    lines += ['| method | ' + ' | '.join(columns) + ' | ref_gain |',
              '|---|' + '---:|' * (len(columns) + 1)]
    for name, res in rows:
      by_row = {**res.get('levels', {}), **res.get('controls', {}), 'mean': res}
      cells = [f'{by_row.get(c, res)["psnr"]:.2f}/{by_row.get(c, res)["ssim"]:.3f}'
               for c in columns]  # Methods without rows (bicubic) score the same everywhere.
      gain = res.get('ref_gain')
      lines.append(f'| {name} | ' + ' | '.join(cells) +
                   f' | {0.0 if gain is None else gain:+.2f} |')
    lines += ['', 'oracle: the HR image as its own reference; unrelated: the XH reference of the '
              'next group; ref_gain = PSNR(XH) - PSNR(unrelated).']
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
