"""Peak memory of one untiled inference of large inputs, each in a fresh process.

`--what memory`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Dict

from ssen_jax.benchmarks import harness
from ssen_jax.benchmarks import inputs

MEMORY_SIZES = ((1024, 1024), (512, 512))
TINY_MEMORY_SIZES = ((64, 64), (32, 32))
MEMORY_LIMIT_GB = 16.0


def _peak_rss_run(cmd: Sequence[str]) -> Dict[str, Any]:
  """Runs cmd, under `/usr/bin/time -v` where available; returns its JSON line and peak RSS."""
  time_bin = shutil.which('time') or ('/usr/bin/time' if os.path.exists('/usr/bin/time') else None)
  full = ([time_bin, '-v'] + list(cmd)) if time_bin else list(cmd)
  start = time.perf_counter()
  proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the maximum over all children).
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - start
  out, err = proc.stdout.read(), proc.stderr.read()
  code = os.waitstatus_to_exitcode(status)
  if code != 0:
    raise RuntimeError(f'{" ".join(cmd)} failed with exit code {code}:\n{err[-3000:]}')
  match = re.search(r'Maximum resident set size \(kbytes\): (\d+)', err)
  rss_kb, source = ((int(match.group(1)), '/usr/bin/time -v') if match
                    else (usage.ru_maxrss, 'wait4 ru_maxrss'))
  result = json.loads(out.strip().splitlines()[-1])
  return dict(result, peak_rss_gb=rss_kb * 1024 / 1e9, rss_source=source, wall_s=wall)


def bench_memory(repeats: int, tiny: bool, torch=None, pause: float = 0.0,
                 config_spec: str = inputs.DEFAULT_CONFIG, **unused) -> Dict[str, Any]:
  """Peak RSS of one inference of large LR inputs, each in a fresh process."""
  del repeats, torch, pause, unused
  sizes = TINY_MEMORY_SIZES if tiny else MEMORY_SIZES
  rows, ratios = [], []
  for h, w in sizes:
    cmd = [sys.executable, '-m', 'ssen_jax.benchmark', f'--infer_once={h}x{w}',
           f'--config={config_spec}']
    r = _peak_rss_run(cmd + (['--tiny'] if tiny else []))
    rows.append(dict(lr=f'{h}x{w}', output='x'.join(str(v) for v in r['output'][1:3]), **{
        k: r[k] for k in ('peak_rss_gb', 'wall_s', 'compile_s', 'run_s', 'rss_source', 'finite')}))
    ratios.append(harness.ratio(f'peak RSS GB, {h}x{w} LR', r['peak_rss_gb'],
                         f'<= {MEMORY_LIMIT_GB:g}' if (h, w) == sizes[0] else None))
  settings = (f"{config_spec}{' + tiny' if tiny else ''} model (ssen), batch 1, one jitted "
              'inference per fresh process (compile included in the peak), no tiling; float32.')
  return dict(settings=settings, memory=rows, ratios=ratios,
              notes=['wall s covers the whole child process: imports, compilation and the run.'])
