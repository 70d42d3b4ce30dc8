"""The timing harness and the report format shared by every benchmark.

Speed is quoted as ratios measured in one run on one machine, since absolute times drift: every
case is run once per repetition, the cases interleaved, and the median of the repetitions is
reported (with the minimum). Each benchmark returns a dict with `settings` (one sentence),
`timings` and/or `memory` rows, `ratios` (with their targets) and `notes`; `to_markdown` prints it.
"""
from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Dict, List, Optional

import numpy as np

from ssen_jax.eval.tables import markdown_table


def interleaved(cases: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                pause: float = 0.0) -> Dict[str, List[float]]:
  """Runs each case `warmup` times, then `repeats` rounds of every case in turn.

  Args:
    cases: name -> a callable that returns only when its work is done (blocks on JAX arrays).
    repeats: timed rounds.
    warmup: untimed calls per case first (compilation, allocator and cache warm-up).
    pause: seconds slept (untimed) after every call, so that the worker threads of one case have
      gone idle before the next starts: torch's OpenMP threads keep spinning after an operation and
      slowed the JAX case after them by up to 1.7x here.

  Returns:
    name -> seconds of each timed call.
  """
  for fn in cases.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in cases}
  for _ in range(repeats):
    for name, fn in cases.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
      if pause:
        time.sleep(pause)
  return times


def rounds(repeats: int, pause: float) -> str:
  return f'{repeats} interleaved repetitions ({1e3 * pause:g} ms apart), median'


def timing_rows(times: Mapping[str, List[float]], frameworks: Mapping[str, str]) -> List[dict]:
  return [dict(name=name, framework=frameworks[name], median_ms=1e3 * float(np.median(t)),
               min_ms=1e3 * float(np.min(t)), repeats=len(t)) for name, t in times.items()]


def ratio(name: str, value: float, target: Optional[str] = None) -> dict:
  """A ratio row; target like '>= 6' or '<= 3' (None: informational)."""
  met = None
  if target is not None:
    op, bound = target.split()
    met = bool(value >= float(bound)) if op == '>=' else bool(value <= float(bound))
  return dict(name=name, value=float(value), target=target, met=met)


def machine_info(torch_module=None, torch_device: str = 'cpu') -> Dict[str, Any]:
  """CPU model, core counts and library versions of this run."""
  import jax
  import jaxlib
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      names = re.findall(r'^model name\s*:\s*(.+)$', f.read(), re.M)
    cpu = names[0].strip() if names else cpu
  except OSError:
    pass
  info = dict(cpu=cpu, cpus=os.cpu_count(), usable_cpus=len(os.sched_getaffinity(0)),
              load_average=round(os.getloadavg()[0], 2),
              os=platform.platform(terse=True), python=platform.python_version(),
              jax=jax.__version__, jaxlib=jaxlib.__version__, backend=jax.default_backend(),
              devices=f'{jax.device_count()} x {jax.devices()[0].device_kind}')
  if torch_module is not None:
    import torchvision
    info.update(torch=torch_module.__version__, torchvision=torchvision.__version__,
                torch_threads=torch_module.get_num_threads(), torch_device=torch_device)
    if torch_device == 'cuda':
      info['torch_device'] = f'cuda ({torch_module.cuda.get_device_name()})'
  return info


def to_markdown(result: Mapping[str, Any]) -> str:
  """The result of one `--what` as a Markdown section."""
  m = result['machine']
  lines = [f"## ssen_jax benchmark: {result['what']}", '',
           f"Machine: {m['cpu']}, {m['cpus']} CPUs ({m['usable_cpus']} usable), {m['os']}; "
           f"jax {m['jax']} ({m['backend']}, {m['devices']})"
           + (f", torch {m['torch']} ({m['torch_threads']} threads), torchvision "
              f"{m['torchvision']}, torch on {m.get('torch_device', 'cpu')}" if 'torch' in m
              else '') + '.',
           f"Settings: {result['settings']}",
           f"Load average (1 min; other processes on these CPUs) before / after: "
           f"{m['load_average']:.2f} / {result['load_average_after']:.2f}.", '']
  if result.get('timings'):
    lines += markdown_table(
        ('case', 'framework', 'median ms', 'min ms', 'runs'),
        [(r['name'], r['framework'], f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}", r['repeats'])
         for r in result['timings']], align='llrrr') + ['']
  if result.get('memory'):
    lines += markdown_table(
        ('LR input', 'output', 'peak RSS GB', 'wall s', 'compile s', 'run s', 'RSS from'),
        [(r['lr'], r['output'], f"{r['peak_rss_gb']:.2f}", f"{r['wall_s']:.1f}",
          f"{r['compile_s']:.1f}", f"{r['run_s']:.1f}", r['rss_source'])
         for r in result['memory']], align='llrrrrl') + ['']
  if result.get('compile'):
    fmt = lambda v, f: '' if v is None else format(v, f)
    lines += markdown_table(
        ('config', 'batch', 'GFLOP/step', 'step GB (XLA)', 'GB/sample', 'fixed GB', 'compile s',
         'step s (here)', 'peak RSS GB'),
        [(r['config'], r['batch'], f"{r['gflop_per_step']:.0f}", f"{r['step_memory_gb']:.2f}",
          f"{r['per_sample_gb']:.3f}", f"{r['fixed_gb']:.2f}", f"{r['compile_s']:.1f}",
          fmt(r.get('step_s'), '.2f'), fmt(r.get('peak_rss_gb'), '.1f'))
         for r in result['compile']], align='lrrrrrrrr') + ['']
  if result.get('estimates'):
    lines += markdown_table(
        ('accelerator (ESTIMATE)', "paper's 100K steps, hours (25 % / 5 % utilisation)",
         'largest batch per chip'),
        [(r['accelerator'], f"{r['paper_schedule_hours']:.2f} / "
          f"{r['paper_schedule_hours_low_utilisation']:.2f}",
          '' if r['largest_batch_per_chip'] is None else r['largest_batch_per_chip'])
         for r in result['estimates']], align='lrr') + ['']
  if result.get('ratios'):
    met = lambda r: '' if r['met'] is None else ('yes' if r['met'] else '**no**')
    lines += markdown_table(
        ('figure', 'value', 'target', 'met'),
        [(r['name'], f"{r['value']:.3g}", r['target'] or '', met(r)) for r in result['ratios']],
        align='lrll') + ['']
  lines += [f'- {note}' for note in result.get('notes', [])]
  return '\n'.join(lines).rstrip() + '\n'
