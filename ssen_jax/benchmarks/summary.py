r"""The summary of `launch/gpu_benchmark.sh`: the headline figures of its tables in one.

  python -m ssen_jax.benchmark --what summary --out DIR/summary.json --overwrite

reads DIR/run.tsv, written by the script (one line per figure: name, exit status or `skipped`,
wall seconds, time limit; then `total`, `-`, the run's seconds so far and its budget), and each
figure's DIR/NAME.json. It returns one table (parity with PyTorch, inference latency beside the
paper's, training throughput in float32 and bfloat16, compile time, peak device memory, JAX
against PyTorch on the same device) and a table of the figures' statuses and times: `summary`
(the headline rows), `run` (the figures' statuses and times, the total and the budget) and
`figures` (every figure's JSON as written, None where there is none).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from ssen_jax.eval.tables import markdown_table


def read_run(out_dir: str) -> Dict[str, Any]:
  """DIR/run.tsv: `figures` (name, status: an exit status or 'skipped', seconds, limit_s), and
  the run's `total_s` and `budget_s` (None until the script has written them).

  Raises:
    OSError: no DIR/run.tsv. ValueError: a line that is not four tab-separated fields.
  """
  figures, total = [], dict(total_s=None, budget_s=None)
  with open(os.path.join(out_dir, 'run.tsv')) as f:
    for line in f:
      name, status, seconds, limit = line.rstrip('\n').split('\t')
      if name == 'total':
        total = dict(total_s=float(seconds), budget_s=float(limit))
        continue
      figures.append(dict(name=name, status=int(status) if status.lstrip('-').isdigit()
                          else status, seconds=float(seconds), limit_s=float(limit)))
  return dict(figures=figures, **total)


def _load(out_dir: str, name: str) -> Optional[Dict[str, Any]]:
  try:
    with open(os.path.join(out_dir, f'{name}.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _fmt(value: Optional[float], spec: str, unit: str = '') -> str:
  return 'n/a' if value is None else f'{value:{spec}}{unit}'


def _ratio(figure: Dict[str, Any], start: str) -> Optional[float]:
  return next((r['value'] for r in figure.get('ratios', []) if r['name'].startswith(start)), None)


def _rows(figures: Dict[str, Optional[Dict[str, Any]]], run: Dict[str, Dict[str, Any]]):
  """(what, JAX, PyTorch, reference / note) rows, one or more per figure."""
  def missing(name):
    r = run.get(name)
    why = 'not run' if r is None else (
        'skipped: no time left' if r['status'] == 'skipped' else
        f"timed out after {r['limit_s']:.0f} s" if r['status'] == 124 else
        f"failed (exit {r['status']})")
    return why

  rows = []
  f = figures.get('op_parity')
  if f:
    p = [r for r in f['parity'] if r['precision'] == 'float32']
    worst = max(p[1:], key=lambda r: r['max_rel'])
    rows.append(('op parity vs torchvision, float32: output / worst gradient '
                 f"({worst['compared']}), max abs (relative)",
                 f"{p[0]['max_abs']:.1e} ({p[0]['max_rel']:.1e}) / {worst['max_abs']:.1e} "
                 f"({worst['max_rel']:.1e})", 'reference', 'tests: relative <= 1e-5'))
    d = [r for r in f['parity'] if r['precision'] == 'default']
    if d:
      rows.append(('op parity, each framework\'s default precision: worst relative',
                   f"{max(r['max_rel'] for r in d):.1e}", 'reference', 'TF32 where the GPU has it'))
  else:
    rows.append(('op parity vs torchvision', missing('op_parity'), '', ''))
  f = figures.get('model_parity')
  if f:
    k = f['key_figures']
    rows.append(('model parity vs the PyTorch twin, float32: output max / mean abs, PSNR',
                 f"{k['output_max_abs']:.1e} / {k['output_mean_abs']:.1e}, "
                 + ('identical' if k['psnr_db'] is None else f"{k['psnr_db']:.1f} dB"),
                 'reference', f"worst of {k['grad_tensors']} gradients: relative "
                              f"{k['worst_grad_rel']:.1e}"))
  else:
    rows.append(('model parity vs the PyTorch twin', missing('model_parity'), '', ''))
  f = figures.get('latency')
  if f:
    k = f['key_figures']
    rows.append((f"inference latency, {k['output']} output (LR {k['lr']}), s",
                 _fmt(k['jax_s'], '.3f'), _fmt(k['torch_s'], '.3f'),
                 f"paper: {k['paper_s']:g} s on a {k['paper_gpu']}"))
  else:
    rows.append(('inference latency at 322x550', missing('latency'), '', ''))
  for name, dtype in (('train', 'float32'), ('train_bf16', 'bfloat16')):
    f = figures.get(name)
    if f:
      k = f['key_figures']
      sps = k['samples_per_s']
      torch_sps = sps.get('ssen train step (PyTorch, eager)')
      rows.append((f"train step, batch {k['batch']}, {k['dtype']}: samples/s",
                   _fmt(sps.get('ssen train step'), '.1f'),
                   'float32 only' if torch_sps is None and dtype != 'float32'
                   else _fmt(torch_sps, '.1f'),
                   f"baseline (no SSEN): {_fmt(sps.get('baseline train step'), '.1f')}"))
      rows.append((f'train step compile, {dtype}, s', _fmt(k['compile_s'], '.1f'),
                   'none (eager)', 'first call minus the median step'))
    else:
      rows.append((f'train step, {dtype}', missing(name), '', ''))
  f = figures.get('compile')
  if f:
    c = f['compile'][0]
    rows.append((f"full-size step compile (batch {c['batch']}), s; XLA's memory for the step",
                 f"{c['compile_s']:.1f}; {c['step_memory_gb']:.2f} GB", '',
                 f"{c['gflop_per_step']:.0f} GFLOP per step"))
  else:
    rows.append(('full-size step compile', missing('compile'), '', ''))
  f = figures.get('op')
  if f:
    rows.append(('deform_conv2d fwd+bwd: torchvision / ours', _fmt(
        _ratio(f, 'torchvision fwd+bwd / deform_conv2d'), '.2f'), '', 'target >= 6'))
  else:
    rows.append(('deform_conv2d speed', missing('op'), '', ''))
  for name, f in figures.items():
    if f and f.get('device_memory'):
      m = f['device_memory']
      rows.append((f'peak device memory, {name}, GB', _fmt(m['jax_peak_gb'], '.2f'),
                   _fmt(m['torch_peak_gb'], '.2f') if m['torch_device'] else '',
                   '' if m['jax_peak_gb'] is not None else f"n/a on {m['backend']}"))
  return rows


def summarize(out_dir: str) -> Dict[str, Any]:
  """The summary of the tables in `out_dir` (module docstring).

  Raises:
    OSError, ValueError: DIR/run.tsv is missing or malformed.
  """
  run = read_run(out_dir)
  figures = {r['name']: _load(out_dir, r['name']) for r in run['figures']}
  rows = _rows(figures, {r['name']: r for r in run['figures']})
  summary = [dict(zip(('what', 'jax', 'torch', 'note'), row)) for row in rows]
  return dict(what='summary', summary=summary, run=run, figures=figures)


def to_markdown(result: Dict[str, Any]) -> str:
  """The summary's two tables and its total time."""
  machine = next((f['machine'] for f in result['figures'].values() if f), None)
  lines = ['## ssen_jax GPU benchmark: summary', '']
  if machine:
    lines += [f"Device: {machine['devices']} (jax {machine['jax']}, {machine['backend']})"
              + (f", torch {machine['torch']} on {machine['torch_device']}" if 'torch' in machine
                 else '') + '.', '']
  lines += markdown_table(('figure', 'JAX', 'PyTorch', 'reference / note'),
                          [tuple(r.values()) for r in result['summary']], align='lrrl') + ['']
  lines += markdown_table(('table', 'status', 'wall s', 'limit s'),
                          [(r['name'], 'ok' if r['status'] == 0 else r['status'],
                            f"{r['seconds']:.0f}", f"{r['limit_s']:.0f}")
                           for r in result['run']['figures']], align='llrr') + ['']
  run = result['run']
  if run['total_s'] is not None:
    lines.append(f"Total: {run['total_s']:.0f} s of a {run['budget_s']:.0f} s budget.")
  return '\n'.join(lines).rstrip() + '\n'
