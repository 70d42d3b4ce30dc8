"""The tile plan against hand-picked tilings: `--what tiles`.

For an LR size (default 1024x1024; `--infer_lr`), every tiling the planner compares
(`Upscaler.candidate_plans`: untiled and balanced tiles of 1024 ... 128 pixels a side) is timed as
(calls) x (median time of one model call on its tile shape, compiled first; wall time and the
process's CPU time, which other processes on a shared machine disturb less): the model's work of the
whole image, without reading, blending and writing (measured separately by whole `infer` runs in
docs/performance.md). Tilings predicted to cost more than `MAX_PREDICTED_RATIO` x the cheapest
prediction are listed with their prediction but not timed (untiled 2048x2048 with non-local blocks
would take an hour here), and so are tilings whose call does not fit the default memory budget
(XLA's memory analysis, as the plan checks it): a run there could push the machine into swapping,
and the plan would never choose it. The plan's own choice (`Upscaler.plan`, default memory
budget) is marked, and the ratio of its time to the fastest timed tiling is the figure (target
<= 1.3).
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Sequence

import jax
import numpy as np

from ssen_jax.benchmarks import harness
from ssen_jax.benchmarks import inputs
from ssen_jax.inference import restore
from ssen_jax.inference import tiling

DEFAULT_LR = (1024, 1024)
TINY_LR = (288, 288)  # Just above tiling.SEARCH_MIN_PIXELS: the planner searches.
MAX_PREDICTED_RATIO = 3.0
TARGET = '<= 1.3'


def bench_tiles(repeats: int, tiny: bool, torch=None, pause: float = 0.0,
                lr_size: Optional[Sequence[int]] = None,
                config_spec: str = inputs.DEFAULT_CONFIG, **unused) -> Dict[str, Any]:
  """Times every candidate tiling of an LR image; see the module docstring."""
  del torch, unused
  config = inputs.load_config(config_spec, 'tiny' if tiny else '')
  h, w = lr_size or (TINY_LR if tiny else DEFAULT_LR)
  model, params = inputs.model_and_params(config)
  gen = restore.Generator(config, model, jax.device_put(params), step=0)
  upscaler = tiling.Upscaler(gen)
  start = time.perf_counter()
  chosen = upscaler.plan(h, w)
  plan_s = time.perf_counter() - start
  candidates = upscaler.candidate_plans(h, w)
  predicted = {tiling.describe(p, h, w): upscaler.predicted_cost(p, h, w) for p in candidates}
  cheapest = min(predicted.values())
  call_budget = upscaler.call_budget(h, w)
  rng = np.random.default_rng(0)
  rows, measured = [], {}
  for plan in candidates:
    name = tiling.describe(plan, h, w)
    size, count = ((h, w), 1) if plan is None else (plan.size, plan.count)
    per_call = upscaler.call_counts(*size)
    row = dict(tiling=name, calls=count, predicted_gop=predicted[name] / 1e9,
               **{f'{kind}_gop': count * n / 1e9 for kind, n in per_call.items()},
               predicted_vs_cheapest=predicted[name] / cheapest,
               default='yes' if tiling.describe(chosen, h, w) == name else '')
    untimed = dict(call_s=None, image_s=None, image_cpu_s=None, vs_fastest=None,
                   cpu_vs_fastest=None)
    if predicted[name] > MAX_PREDICTED_RATIO * cheapest:
      rows.append(dict(row, **untimed, untimed='predicted over the limit'))
      continue
    row['gb_per_call'] = upscaler.estimate_bytes(*size) / 2**30
    if row['gb_per_call'] * 2**30 > call_budget:
      rows.append(dict(row, **untimed, untimed='over the memory budget'))
      continue
    lr, ref, _ = inputs.images(rng, 1, *size, gen.scale)
    exe = upscaler.compiled(*size)
    run = lambda exe=exe, lr=lr, ref=ref: jax.block_until_ready(
        exe(gen.params, lr, ref if gen.uses_ref else None))
    run()  # Warm-up.
    walls, cpus = [], []
    for _ in range(repeats):
      wall, cpu = time.perf_counter(), time.process_time()
      run()
      walls.append(time.perf_counter() - wall)
      cpus.append(time.process_time() - cpu)
      time.sleep(pause)
    call_s, call_cpu_s = float(np.median(walls)), float(np.median(cpus))
    measured[name] = (count * call_s, count * call_cpu_s)
    rows.append(dict(row, call_s=call_s, image_s=count * call_s, image_cpu_s=count * call_cpu_s))
  fastest = min(wall for wall, _ in measured.values())
  fastest_cpu = min(cpu for _, cpu in measured.values())
  for row in rows:
    if row['image_s'] is not None:
      row['vs_fastest'] = row['image_s'] / fastest
      row['cpu_vs_fastest'] = row['image_cpu_s'] / fastest_cpu
  default_name = tiling.describe(chosen, h, w)
  ratios = []
  if default_name in measured:
    wall, cpu = measured[default_name]
    what = f'default plan ({default_name}) / fastest timed tiling, LR {h}x{w}'
    ratios += [harness.ratio(f'{what}, wall time of the model calls', wall / fastest, TARGET),
               harness.ratio(f'{what}, CPU time of the model calls', cpu / fastest_cpu)]
  variants = f'{config_spec}{":tiny" if tiny else ""}'
  return dict(
      settings=(f'{variants} (random weights), LR {h}x{w}, x{gen.scale}; per tiling: calls x '
                f'the median of {repeats} model calls (after one untimed), wall and process CPU '
                'time (CPU time is the steadier figure on a shared machine)'),
      tiles=rows, ratios=ratios,
      notes=[f'plan (predictions, one compilation for the memory check): {plan_s:.1f} s',
             f'not timed: tilings predicted over {MAX_PREDICTED_RATIO:g}x the cheapest, and those '
             f'over the memory budget ({call_budget / 2**30:.3g} GB per call beside the host '
             'arrays)'])
