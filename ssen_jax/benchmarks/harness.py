"""The timing harness and the report format shared by every benchmark.

Speed is quoted as ratios measured in one run on one machine, since absolute times drift: every
case is run once per repetition, the cases interleaved, and the median of the repetitions is
reported (with the minimum). Each benchmark returns a dict with `settings` (one sentence),
`timings`, `memory`, `compile` or `parity` rows, `ratios` (with their targets), `notes` and, where a
summary wants them, `key_figures`; `benchmark` adds the run's `device_memory`, and `to_markdown`
prints it all.
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


def device_memory(torch_module=None, torch_device: str = 'cpu') -> Dict[str, Any]:
  """Peak accelerator memory of this process so far, per framework; None where not available.

  JAX: `peak_bytes_in_use` of its first device's allocator (a GPU's or TPU's; the CPU client keeps
  no such statistics). PyTorch: `torch.cuda.max_memory_allocated()` when its peers run on CUDA.
  Both count the bytes of live arrays at their highest, not the pool an allocator reserves.
  """
  import jax
  jax_gb = None
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  (a backend without statistics)
    stats = {}
  if 'peak_bytes_in_use' in stats:
    jax_gb = stats['peak_bytes_in_use'] / 1e9
  torch_gb = None
  if torch_module is not None and torch_device == 'cuda':
    torch_gb = torch_module.cuda.max_memory_allocated() / 1e9
  return dict(jax_peak_gb=jax_gb, torch_peak_gb=torch_gb, backend=jax.default_backend(),
              torch_device=torch_device if torch_module is not None else None)


def memory_line(memory: Mapping[str, Any]) -> str:
  """'Peak device memory: ...' for the report (n/a on a CPU)."""
  if memory['jax_peak_gb'] is None:
    jax_text = f"JAX n/a on {memory['backend']}"
  else:
    jax_text = f"JAX {memory['jax_peak_gb']:.2f} GB (peak_bytes_in_use)"
  if memory['torch_device'] is None:
    torch_text = ''
  elif memory['torch_peak_gb'] is None:
    torch_text = f"; PyTorch n/a on {memory['torch_device']}"
  else:
    torch_text = f"; PyTorch {memory['torch_peak_gb']:.2f} GB (max_memory_allocated)"
  return f'Peak device memory: {jax_text}{torch_text}.'


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
           f"{m['load_average']:.2f} / {result['load_average_after']:.2f}."]
  if result.get('device_memory'):
    lines.append(memory_line(result['device_memory']))
  lines.append('')
  if result.get('parity'):
    lines += markdown_table(
        ('precision', 'compared', 'max abs diff', 'relative', 'mean abs diff', 'max abs torch'),
        [(r['precision'], r['compared'], f"{r['max_abs']:.2e}", f"{r['max_rel']:.2e}",
          f"{r['mean_abs']:.2e}", f"{r['torch_max']:.3g}") for r in result['parity']],
        align='llrrrr') + ['']
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
        ('config', 'batch', 'GFLOP/step (counted)', 'GFLOP/step (XLA)', 'step GB (XLA)',
         'GB/sample', 'fixed GB', 'compile s', 'step s (here)', 'peak RSS GB'),
        [(r['config'], r['batch'], f"{r['gflop_per_step']:.0f}",
          fmt(r.get('xla_gflop_per_step'), '.0f'), f"{r['step_memory_gb']:.2f}",
          f"{r['per_sample_gb']:.3f}", f"{r['fixed_gb']:.2f}", f"{r['compile_s']:.1f}",
          fmt(r.get('step_s'), '.2f'), fmt(r.get('peak_rss_gb'), '.1f'))
         for r in result['compile']], align='lrrrrrrrrr') + ['']
  if result.get('tiles'):
    fmt = lambda v, f: '' if v is None else format(v, f)
    lines += markdown_table(
        ('tiling', 'calls', 'predicted Gop', 'vs cheapest', 'GB per call', 'median call s',
         'image s', 'vs fastest', 'image CPU s', 'vs fastest (CPU)', 'default'),
        [(r['tiling'], r['calls'], f"{r['predicted_gop']:.0f}",
          f"{r['predicted_vs_cheapest']:.2f}", fmt(r.get('gb_per_call'), '.2f'),
          r.get('untimed') or fmt(r['call_s'], '.3f'), fmt(r['image_s'], '.1f'),
          fmt(r['vs_fastest'], '.2f'), fmt(r['image_cpu_s'], '.1f'),
          fmt(r['cpu_vs_fastest'], '.2f'), r['default']) for r in result['tiles']],
        align='lrrrrrrrrrl') + ['']
  if result.get('estimates'):
    lines += markdown_table(
        ('accelerator (ESTIMATE)', "the config's schedule, hours (25 % / 5 % utilisation)",
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
