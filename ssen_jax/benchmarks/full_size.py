"""The published configurations at full size: the FLOPs and XLA's memory for one training step,
compile time, a measured step on this machine, and estimates for accelerators.

`--what compile --config configs/refsr.py` (also refsr_gan.py, selfsim.py). For the config as
published (batch 32 unless `--train_batch`), the train step is lowered and compiled for one device
of this host: `core.cost.flops` counts the operations of a step (forward, backward, Adam) from its
jaxpr (loops multiplied out; XLA's `cost_analysis()`, reported beside it, counts a loop's body
once and element-wise operations a little differently), `memory_analysis()` gives the bytes of its
arguments, outputs and temporaries. The step is compiled once more at half the batch, so that the
bytes per sample (the slope) and the fixed part (parameters, optimiser state, code) give the
largest batch per device that an accelerator's memory holds.
With `--repeats N` (N > 0) the step also runs N times on random data of realistic scale, and its
median time and this process's peak RSS are reported; the run is skipped (and says so) where the
compiled step would need more than half of this machine's memory.

The accelerator rows are estimates, labelled as such: wall time of the config's schedule
(`num_train_steps`: the paper's 100K; 50K for the GAN stage, which the paper does not give) =
FLOPs per step x steps / (peak rate x assumed utilisation), with the counted FLOPs (an
accelerator's compiler fuses differently but does the same arithmetic) and XLA:CPU's memory
analysis (an accelerator's layouts and fusions differ; the batch limit is a first guess, not a
promise).
"""
from __future__ import annotations

import os
import resource
import statistics
import time
from typing import Any, Dict, Optional

import jax
import numpy as np

from ssen_jax.benchmarks import harness
from ssen_jax.benchmarks import inputs
from ssen_jax.core import cost
from ssen_jax.core import sharding
from ssen_jax.inference import restore
from ssen_jax.training import steps

# (name, chips, peak dense bf16 TFLOP/s per chip, memory GB per chip): vendors' published figures.
ACCELERATORS = (('H100 SXM (1 GPU)', 1, 989.0, 80.0), ('TPU v4-8 (4 chips)', 4, 275.0, 32.0),
                ('TPU v5e-8 (8 chips)', 8, 197.0, 16.0))
# Assumed model FLOP utilisation, a high and a low guess. SSEN's arithmetic is mostly 3x3
# convolutions at 64 channels on 40x40 LR maps (matrices only 64 wide, which keep a GPU's or TPU's
# matrix units partly idle) plus deformable gathers and attention, bound by memory traffic rather
# than by arithmetic: 25 % is below what large dense models reach (40-60 %), 5 % what gather-heavy,
# narrow code can fall to. Per-step overheads (input pipeline, host transfers) come on top.
# Measure (launch/gpu_benchmark.sh) before planning on either.
ASSUMED_UTILISATION = (0.25, 0.05)


def _abstract_batch(config, batch: int) -> Dict[str, jax.ShapeDtypeStruct]:
  p, s = config.data.hr_patch, config.model.scale
  shapes = {'lr': (batch, p // s, p // s, 3), 'ref': (batch, p, p, 3), 'hr': (batch, p, p, 3)}
  return {k: jax.ShapeDtypeStruct(v, np.float32) for k, v in shapes.items()}


def compile_step(config, batch: int):
  """(trainer, compiled train step, compile seconds) for `config` at `batch` on one device."""
  config = config.copy_and_resolve_references()
  config.batch_size = batch
  trainer = steps.Trainer(config, sharding.create_mesh(jax.devices()[:1]))
  start = time.perf_counter()
  compiled = trainer.train_step.lower(trainer.abstract_state(),
                                      _abstract_batch(config, batch)).compile()
  return trainer, compiled, time.perf_counter() - start


def counted_gflop(config, batch: int) -> float:
  """GFLOPs of one train step of `config` at `batch`, counted from its jaxpr (`core.cost`)."""
  config = config.copy_and_resolve_references()
  config.batch_size = batch
  trainer = steps.Trainer(config, sharding.create_mesh(jax.devices()[:1]))
  return cost.flops(trainer.train_step, trainer.abstract_state(),
                    _abstract_batch(config, batch)) / 1e9


def _analysis(compiled) -> Dict[str, float]:
  xla_cost = compiled.cost_analysis()
  xla_cost = xla_cost[0] if isinstance(xla_cost, (list, tuple)) else xla_cost
  mem = compiled.memory_analysis()
  return dict(gflop=float(xla_cost.get('flops', float('nan'))) / 1e9,
              argument_gb=mem.argument_size_in_bytes / 1e9,
              output_gb=mem.output_size_in_bytes / 1e9,
              temp_gb=mem.temp_size_in_bytes / 1e9,
              code_gb=mem.generated_code_size_in_bytes / 1e9)


def _total_gb(a: Dict[str, float]) -> float:
  # Arguments (state + batch) are donated into the outputs: count them once, plus temporaries.
  return a['argument_gb'] + a['temp_gb'] + a['code_gb']


def _run(trainer, config, batch: int, repeats: int) -> Dict[str, float]:
  params = inputs.randomize_params(restore.abstract_params(config), 0)
  state = trainer.init_state(jax.random.key(0), params=params)
  s, p = config.model.scale, config.data.hr_patch
  lr, ref, hr = inputs.images(np.random.default_rng(1), batch, p // s, p // s, s)
  data = sharding.global_batch({'lr': lr, 'ref': ref, 'hr': hr}, trainer.mesh)
  times = []
  for _ in range(repeats + 1):  # The first call includes loading the compiled step.
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, data)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  loss = float(metrics['loss'])
  return dict(step_s=statistics.median(times[1:]), first_call_s=times[0], loss=loss,
              peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9)


def bench_compile(repeats: int, tiny: bool, torch=None, pause: float = 0.0,
                  batch: Optional[int] = None, config_spec: str = inputs.DEFAULT_CONFIG,
                  **unused) -> Dict[str, Any]:
  """FLOPs, memory and compile time of the published config's train step (module docstring)."""
  del torch, pause, unused
  config = inputs.load_config(config_spec, 'tiny' if tiny else '')
  batch = batch or config.batch_size
  counted = counted_gflop(config, batch)
  trainer, compiled, compile_s = compile_step(config, batch)
  full = _analysis(compiled)
  half = _analysis(compile_step(config, max(batch // 2, 1))[1]) if batch > 1 else full
  per_sample = (_total_gb(full) - _total_gb(half)) / max(batch - max(batch // 2, 1), 1)
  fixed = _total_gb(full) - per_sample * batch
  row = dict(config=config_spec, variant=config.model.variant, batch=batch,
             hr_patch=config.data.hr_patch, compile_s=compile_s, gflop_per_step=counted,
             xla_gflop_per_step=full['gflop'],
             step_memory_gb=_total_gb(full), per_sample_gb=per_sample, fixed_gb=fixed,
             **{k: full[k] for k in ('argument_gb', 'temp_gb', 'code_gb')})
  notes = []
  host_gb = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9
  if repeats > 0 and _total_gb(full) < host_gb / 2:
    row.update(_run(trainer, config.copy_and_resolve_references(), batch, repeats))
    row['cpu_gflop_per_s'] = counted / row['step_s']
  elif repeats > 0:
    notes.append(f'steps not run: the compiled step needs {_total_gb(full):.1f} GB, more than half '
                 f'of this machine\'s {host_gb:.0f} GB')
  estimates = []
  for name, chips, tflops, mem_gb in ACCELERATORS:
    hours = [counted * 1e9 * config.num_train_steps / (chips * tflops * 1e12 * u) / 3600
             for u in ASSUMED_UTILISATION]
    fit = int((mem_gb - fixed) / per_sample) if per_sample > 0 else None
    estimates.append(dict(accelerator=name, steps=config.num_train_steps,
                          paper_schedule_hours=hours[0],
                          paper_schedule_hours_low_utilisation=hours[1],
                          largest_batch_per_chip=fit, global_batch_per_chip=batch / chips))
  high, low = ASSUMED_UTILISATION
  notes.append(f'estimates: {config.num_train_steps:,} steps (the config\'s) at batch {batch}, '
               f'bf16 peak rates, {high:.0%} and {low:.0%} utilisation assumed '
               '(ssen_jax/benchmarks/full_size.py says why), '
               'no per-step overheads; FLOPs counted from the jaxpr (core.cost), memory from '
               'XLA:CPU\'s analysis of the float32 step')
  ratios = [harness.ratio('train step compile s', compile_s, '<= 60')]
  return dict(settings=f'{config_spec} as published{" (tiny)" if tiny else ""}, one device, '
                       f'float32 ({config.dtype} in the config)',
              compile=[row], estimates=estimates, ratios=ratios, notes=notes)
