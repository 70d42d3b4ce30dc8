"""The reference-use probe: which part of a RefSR model's gain comes from which part of its alignment.

A trained `RefSRNet` with SSEN can align a reference two ways: SSEN's own offsets (predicted by the
dynamic offset estimators, learned) and, with `model.match_radius > 0`, the correlation prior's flow
(a soft arg-max over a window of LR-grid displacements; our extension, docs/reference_use.md). The
probe evaluates the same parameters under four test-time settings (`SETTINGS`):

  full         the model as trained;
  no_learned   SSEN's learned offsets zeroed in every deformable layer (prior flow and masks kept);
  no_prior     the prior's flow zeroed wherever it is used (first layer's offsets and the
               estimators' input); its match statistics, which the masks gate on, and the learned
               offsets kept;
  neither      both zeroed: every layer samples the regular grid;
  oracle_flow  (shift probe only) learned offsets zeroed and the first layer moved by the true
               shift (`fixed_flow`): what the trained network makes of a perfect LR-grid alignment,
               which separates estimating a displacement from using it.

Settings that do not apply (`no_prior` and `neither` without a prior) are reported as such. For each
setting it gives
  - the CUFED5-style table (`protocol.evaluate_model`: every level, oracle, unrelated, ref_gain);
  - the shift probe: each HR image itself as the reference, moved diagonally by k HR pixels
    (`shifted_reference`), PSNR against the `unrelated` control, and for the first deformable layer
    the mean |learned offset| and the end-point errors (`first_layer_epe`) of its displacement
    (prior + learned, mean over the taps) and of the prior alone against the true k/scale LR px.

Library side of `python -m ssen_jax.probe_reference`; `shift_figure` draws PSNR against shift.
Needs no import of the networks: the settings are `model.clone(...)`s of the restored module.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ssen_jax.core.sharding import local_value
from ssen_jax.data import images
from ssen_jax.eval import metrics
from ssen_jax.eval import protocol

SETTINGS = ('full', 'no_learned', 'no_prior', 'neither', 'oracle_flow')
DESCRIPTIONS = {'full': 'as trained', 'no_learned': 'learned offsets zeroed',
                'no_prior': 'prior flow zeroed', 'neither': 'both zeroed',
                'oracle_flow': 'true shift as flow'}
_FLAGS = {'full': dict(), 'no_learned': dict(learned_offsets=False),
          'no_prior': dict(prior_flow=False),
          'neither': dict(learned_offsets=False, prior_flow=False),
          'oracle_flow': dict(learned_offsets=False)}  # + fixed_flow per shift.
# HR pixels; 96 lies beyond the demo's 18-LR-pixel (72 HR px) window.
SHIFTS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, 96)


def setting_models(model: Any, settings: Sequence[str] = SETTINGS) -> Dict[str, Any]:
  """{setting: the module evaluated under it, or None where it does not apply}.

  Args:
    model: a restored `RefSRNet` with SSEN (`use_ssen`; `match_radius` > 0 for the prior rows).
    settings: a subset of `SETTINGS`.

  Raises:
    ValueError: an unknown setting, or a model without SSEN (nothing to probe).
  """
  unknown = [s for s in settings if s not in SETTINGS]
  if unknown:
    raise ValueError(f'unknown probe setting {unknown[0]!r}; expected some of {SETTINGS}')
  if not getattr(model, 'use_ssen', False) or not hasattr(model, 'match_radius'):
    raise ValueError('the reference-use probe needs a RefSR model with SSEN (variant ssen); '
                     f'got {type(model).__name__}' +
                     (' without SSEN' if hasattr(model, 'use_ssen') else ''))
  has_prior = model.match_radius > 0
  out = {}
  for name in settings:
    if not has_prior and name in ('no_prior', 'neither'):
      out[name] = None
    else:
      out[name] = model.clone(**_FLAGS[name])
  return out


def make_probe_fn(model: Any) -> Callable:
  """jitted fn(params, lr, ref) -> (SR clipped to [0, 1], first layer's offsets (N, h, w, G*9*2),
  the prior's flow (N, h, w, 2) as computed, and the flow added to the offsets (zeros where the
  setting zeroes it, the constant of `fixed_flow`; both zeros without a prior))."""
  flow_used = getattr(model, 'prior_flow', True)
  fixed = getattr(model, 'fixed_flow', None)
  prewarp = getattr(model, 'ref_prewarp', False)  # The flow moved the image, not the offsets.

  @jax.jit
  def fn(params, lr, ref):
    (sr, offsets, _), inter = model.apply({'params': params}, lr, ref, return_offsets=True,
                                          mutable=['intermediates'])
    flows = inter.get('intermediates', {}).get('prior_flow')
    flow = (flows[0] if flows else jnp.zeros(lr.shape[:3] + (2,))).astype(jnp.float32)
    if fixed is not None:
      used = jnp.broadcast_to(jnp.asarray(fixed, jnp.float32), flow.shape)
    else:
      used = flow if flow_used else jnp.zeros_like(flow)
    first = offsets[0]
    if prewarp:  # Displacement = warp + offsets, as for the flow added to the offsets.
      first = first + jnp.tile(used, (1, 1, 1, first.shape[-1] // 2))
    return jnp.clip(sr, 0.0, 1.0), first, flow, used

  return fn


def shifted_reference(hr: np.ndarray, shift: int) -> np.ndarray:
  """hr (H, W, C) moved down and right by `shift` HR pixels: out[y, x] = hr[y - s, x - s], the
  uncovered top/left band mirrored (numpy 'symmetric'). Same size and dtype as hr."""
  if shift < 0:
    raise ValueError(f'shift must be >= 0, got {shift}')
  h, w = hr.shape[:2]
  pad = ((shift, 0), (shift, 0)) + ((0, 0),) * (hr.ndim - 2)
  return np.pad(hr, pad, mode='symmetric')[:h, :w]


def valid_positions(lr_shape: tuple[int, int], shift: int, scale: int) -> np.ndarray:
  """(h, w) bool: LR pixels whose true match (their HR block moved by `shift`) lies wholly inside
  the reference, i.e. not in the mirrored band of `shifted_reference`."""
  h, w = lr_shape
  ys = scale * np.arange(h) + shift
  xs = scale * np.arange(w) + shift
  ok_y = ys + scale <= scale * h
  ok_x = xs + scale <= scale * w
  return ok_y[:, None] & ok_x[None, :]


def first_layer_epe(offsets: np.ndarray, flow: np.ndarray, true_shift: tuple[float, float],
                    valid: np.ndarray, flow_used: Optional[np.ndarray] = None
                    ) -> Dict[str, float]:
  """End-point errors of the first deformable layer against a known translation.

  Args:
    offsets: (h, w, G*9*2) the first layer's offsets, [group][tap][dy, dx], prior included.
    flow: (h, w, 2) the prior's flow as computed (zeros without a prior).
    flow_used: (h, w, 2) the flow added to `offsets` (default `flow`; zeros where the probe's
      setting zeroes it).
    true_shift: (dy, dx) in LR pixels: where the matching content lies.
    valid: (h, w) bool, the positions that count.

  Returns:
    {'epe_total': mean |mean over taps of offsets - shift|, 'epe_prior': mean |flow - shift|,
    'learned_abs': mean over positions and taps of |offset - flow| (the learned part)}, in LR
    pixels over the valid positions (NaN where none is valid).
  """
  h, w = offsets.shape[:2]
  per_tap = offsets.reshape(h, w, -1, 2).astype(np.float64)
  learned = per_tap - (flow if flow_used is None else flow_used)[:, :, None, :]
  t = np.asarray(true_shift, np.float64)
  if not valid.any():
    return {'epe_total': math.nan, 'epe_prior': math.nan, 'learned_abs': math.nan}
  total = per_tap.mean(axis=2)
  return {'epe_total': float(np.linalg.norm(total - t, axis=-1)[valid].mean()),
          'epe_prior': float(np.linalg.norm(flow - t, axis=-1)[valid].mean()),
          'learned_abs': float(np.linalg.norm(learned, axis=-1).mean(axis=-1)[valid].mean())}


def _reference(hr_like: np.ndarray, lr: np.ndarray, scale: int) -> np.ndarray:
  """A uint8 reference fitted to 4x the LR, as float32 (1, H, W, 3) (the evaluation's rule)."""
  return images.prepare_reference(hr_like.astype(np.float32) / 255.0,
                                  lr.astype(np.float64) / 255.0, scale)[None]


def shift_probe(examples: Sequence[dict], probe_fn: Callable, params: Any, *, scale: int,
                shifts: Sequence[int] = SHIFTS, per_shift: bool = False,
                log_fn: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
  """PSNR and first-layer end-point errors with each HR image, moved by k HR px, as reference.

  Args:
    examples: CUFED5-style examples (`name`, `hr`, `lr`, `refs`).
    probe_fn: `make_probe_fn` of the model under one setting, or a function of the shift k
      returning one (`per_shift`).
    params: its parameters.
    scale: SR factor.
    shifts: HR-pixel shifts k (each applied diagonally, (k, k)).
    log_fn: one line per shift, or None.

  Returns:
    {'shifts': [k...], 'psnr': [...], 'epe_total': [...], 'epe_prior': [...], 'learned_abs': [...]}
    (means over the images; EPE and |learned| over each image's valid positions).
  """
  out = {'shifts': [int(k) for k in shifts], 'psnr': [], 'epe_total': [], 'epe_prior': [],
         'learned_abs': []}
  for k in shifts:
    start = time.perf_counter()
    rows = []
    fn = probe_fn(k) if per_shift else probe_fn
    for ex in examples:
      lr = ex['lr']
      ref = _reference(shifted_reference(ex['hr'], k), lr, scale)
      outs = fn(params, (lr.astype(np.float32) / 255.0)[None], ref)
      sr, offsets, flow, flow_used = (np.asarray(local_value(a))[0] for a in outs)
      psnr = metrics.psnr_y(sr, ex['hr'], scale, gray=ex.get('gray', False))
      valid = valid_positions(lr.shape[:2], k, scale)
      rows.append(dict(first_layer_epe(offsets, flow, (k / scale, k / scale), valid, flow_used),
                       psnr=psnr))
    for key in ('psnr', 'epe_total', 'epe_prior', 'learned_abs'):
      vals = [r[key] for r in rows if not math.isnan(r[key])]
      out[key].append(float(np.mean(vals)) if vals else math.nan)
    if log_fn:
      log_fn(f'shift {k:3d} HR px: PSNR {out["psnr"][-1]:.3f} dB, first-layer EPE '
             f'{out["epe_total"][-1]:.3f} (prior {out["epe_prior"][-1]:.3f}) LR px, '
             f'|learned| {out["learned_abs"][-1]:.3f} ({time.perf_counter() - start:.1f} s)')
  return out


def run_probe(model: Any, params: Any, examples: Sequence[dict], *, scale: int,
              settings: Sequence[str] = SETTINGS, shifts: Sequence[int] = SHIFTS,
              table: bool = True, log_fn: Optional[Callable[[str], None]] = None
              ) -> Dict[str, Any]:
  """The probe of one model on CUFED5-style examples.

  Args:
    model, params: a restored SSEN RefSR model and its parameters.
    examples: CUFED5-style examples, every one with the five level references.
    scale: SR factor.
    settings: which of `SETTINGS` to run.
    shifts: the shift probe's HR-pixel shifts (empty: no shift probe).
    table: also the per-level table with its controls.
    log_fn: progress lines, or None.

  Returns:
    {'has_prior': bool, 'settings': {setting: None (not applicable) or {'description',
    'levels': {level: psnr}, 'oracle', 'unrelated', 'ref_gain', 'shift': shift_probe(...)}}}.
  """
  if any(len(ex['refs']) != len(protocol.LEVELS) for ex in examples):
    raise ValueError('the reference-use probe needs a CUFED5-style set (XXX_0.png HR and '
                     'XXX_1..5.png references for every group)')
  if len(examples) < 2:
    raise ValueError('the reference-use probe needs at least two groups (the unrelated control '
                     'takes the next group\'s reference)')
  modules = setting_models(model, settings)
  out = {'has_prior': model.match_radius > 0, 'settings': {}}
  for name, module in modules.items():
    if module is None:
      out['settings'][name] = None
      continue
    if name == 'oracle_flow':
      continue  # After the others: it borrows the first setting's unrelated level.
    say = (lambda line, n=name: log_fn(f'[{n}] {line}')) if log_fn else None
    fn = make_probe_fn(module)
    res: Dict[str, Any] = {'description': DESCRIPTIONS[name]}
    if table:
      ev = protocol.evaluate_model(examples, lambda p, lr, ref: fn(p, lr, ref)[0], params,
                                   scale=scale, uses_ref=True)
      res.update(levels={k: v['psnr'] for k, v in ev['levels'].items()},
                 oracle=ev['controls']['oracle']['psnr'],
                 unrelated=ev['controls']['unrelated']['psnr'], ref_gain=ev['ref_gain'])
      if say:
        say('levels ' + ' '.join(f'{k} {v:.2f}' for k, v in res['levels'].items()) +
            f', oracle {res["oracle"]:.2f}, unrelated {res["unrelated"]:.2f}, ref_gain '
            f'{res["ref_gain"]:+.2f} dB')
    else:  # The shift plot's reference line still needs the unrelated control.
      unrelated = protocol.control_examples(examples)['unrelated']
      res['unrelated'] = protocol.evaluate_examples(
          unrelated, protocol.model_sr_fn(lambda p, lr, ref: fn(p, lr, ref)[0], params,
                                          scale=scale, uses_ref=True, level=0),
          scale=scale)['psnr']
    if shifts:
      res['shift'] = shift_probe(examples, fn, params, scale=scale, shifts=shifts, log_fn=say)
    out['settings'][name] = res
  if modules.get('oracle_flow') is not None and shifts:
    others = [r for r in out['settings'].values() if r]
    unrelated = others[0]['unrelated'] if others else math.nan
    fns = {k: make_probe_fn(modules['oracle_flow'].clone(fixed_flow=(k / scale, k / scale)))
           for k in shifts}
    out['settings']['oracle_flow'] = {
        'description': DESCRIPTIONS['oracle_flow'], 'unrelated': unrelated,
        'unrelated_from': next((n for n, r in out['settings'].items() if r), None),
        'shift': shift_probe(examples, fns.get, params, scale=scale, shifts=shifts,
                             per_shift=True,
                             log_fn=(lambda line: log_fn(f'[oracle_flow] {line}'))
                             if log_fn else None)}
  return out


def _fmt(x: Any, spec: str = '.2f') -> str:
  return 'n/a' if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_tables(results: Dict[str, Any], *, title: str = '') -> str:
  """Markdown: the per-level table per setting, then the shift probe per setting."""
  from ssen_jax.eval import tables  # pylint: disable=g-import-not-at-top
  lines = [f'### {title}', ''] if title else []
  settings = results['settings']
  na = 'not applicable: the model has no correlation prior (match_radius = 0)'
  first = next((r for r in settings.values() if r), None)
  if first and 'levels' in first:
    levels = list(first['levels'])
    rows = []
    for name, r in settings.items():
      label = f'{name} ({DESCRIPTIONS[name]})'
      if r is not None and 'levels' not in r:
        continue  # oracle_flow: shift probe only.
      if r is None:
        rows.append([label] + [na] + [''] * (len(levels) + 2))
      else:
        rows.append([label] + [_fmt(r['levels'][k]) for k in levels] +
                    [_fmt(r['oracle']), _fmt(r['unrelated']), _fmt(r['ref_gain'], '+.2f')])
    lines += tables.markdown_table(['setting'] + levels + ['oracle', 'unrelated', 'ref_gain'],
                                   rows) + ['']
  if first and 'shift' in first:
    shifts = first['shift']['shifts']
    header = ['setting', 'quantity'] + [str(k) for k in shifts]
    rows = []
    for name, r in settings.items():
      if r is None:
        rows.append([name, na] + [''] * len(shifts))
        continue
      s = r['shift']
      rows.append([name, 'PSNR - unrelated (dB)'] +
                  [_fmt(p - r['unrelated'], '+.2f') for p in s['psnr']])
      rows.append([name, 'EPE prior+learned (LR px)'] + [_fmt(e) for e in s['epe_total']])
      if results['has_prior']:
        rows.append([name, 'EPE prior alone (LR px)'] + [_fmt(e) for e in s['epe_prior']])
      rows.append([name, '|learned offset| (LR px)'] + [_fmt(e) for e in s['learned_abs']])
    lines += ['Shift probe: the HR image itself as reference, moved by k HR px diagonally '
              '(columns: k).', ''] + tables.markdown_table(header, rows)
  return '\n'.join(lines)


# --- The figure: PSNR against shift, drawn with Pillow (no plotting library is a dependency). ---

_LINE_COLOURS = {'full': (31, 119, 180), 'no_learned': (255, 127, 14), 'no_prior': (44, 160, 44),
                 'neither': (214, 39, 40), 'oracle_flow': (148, 103, 189)}


def shift_figure(results: Dict[str, Any], path: Any, *, title: str = '',
                 size: tuple[int, int] = (900, 540)) -> None:
  """Writes a PNG of PSNR against shift (categorical x axis) for each setting, with each
  setting's `unrelated` level as a dashed line of the same colour."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  runs = {n: r for n, r in results['settings'].items() if r and 'shift' in r}
  if not runs:
    raise ValueError('no shift probe in these results')
  shifts = next(iter(runs.values()))['shift']['shifts']
  values = [v for r in runs.values() for v in r['shift']['psnr'] + [r['unrelated']]
            if not math.isnan(v)]
  lo, hi = math.floor(min(values) * 2) / 2, math.ceil(max(values) * 2) / 2
  if hi - lo < 1:
    hi = lo + 1
  width, height = size
  left, right, top, bottom = 80, 210, 50, 70
  img = Image.new('RGB', size, 'white')
  draw = ImageDraw.Draw(img)
  x_of = lambda i: left + (width - left - right) * (i / max(len(shifts) - 1, 1))
  y_of = lambda v: top + (height - top - bottom) * (hi - v) / (hi - lo)
  draw.rectangle([left, top, width - right, height - bottom], outline='black')
  step = 0.5 if hi - lo <= 6 else 1.0
  v = lo
  while v <= hi + 1e-9:
    y = y_of(v)
    draw.line([left - 5, y, left, y], fill='black')
    draw.line([left, y, width - right, y], fill=(230, 230, 230))
    draw.text((left - 45, y - 6), f'{v:.1f}', fill='black')
    v += step
  for i, k in enumerate(shifts):
    x = x_of(i)
    draw.line([x, height - bottom, x, height - bottom + 5], fill='black')
    draw.text((x - 6, height - bottom + 8), str(k), fill='black')
  draw.text((left + (width - left - right) // 2 - 90, height - bottom + 28),
            'reference shift k (HR px, diagonal)', fill='black')
  draw.text((8, top - 30), 'PSNR-Y (dB)', fill='black')
  if title:
    draw.text((left, 12), title, fill='black')
  for row, (name, r) in enumerate(runs.items()):
    colour = _LINE_COLOURS[name]
    pts = [(x_of(i), y_of(p)) for i, p in enumerate(r['shift']['psnr']) if not math.isnan(p)]
    draw.line(pts, fill=colour, width=3)
    for x, y in pts:
      draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    yu = y_of(r['unrelated'])
    x = left
    while x < width - right:  # Dashed: the setting's unrelated-reference level.
      draw.line([x, yu, min(x + 8, width - right), yu], fill=colour, width=1)
      x += 14
    ly = top + 10 + row * 40
    draw.line([width - right + 12, ly + 6, width - right + 36, ly + 6], fill=colour, width=3)
    draw.text((width - right + 42, ly), f'{name}\n({DESCRIPTIONS[name]})', fill='black')
  ly = top + 10 + len(runs) * 40
  draw.line([width - right + 12, ly + 6, width - right + 36, ly + 6], fill='gray', width=1)
  draw.text((width - right + 42, ly), 'dashed: unrelated\nreference', fill='black')
  images.save_png_atomic(img, path)
