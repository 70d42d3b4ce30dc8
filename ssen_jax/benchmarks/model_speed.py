"""Whole-model speed: inference (`--what infer`) and one training step (`--what train`).

Both against the PyTorch reference network holding the same weights (`--compare torch`), whose
output is checked against ours.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Dict, Optional

import jax
import numpy as np

from ssen_jax import models
from ssen_jax.benchmarks import harness
from ssen_jax.benchmarks import inputs
from ssen_jax.benchmarks import torch_peers
from ssen_jax.core import sharding
from ssen_jax.inference import restore
from ssen_jax.training import steps

INFER_LR = (80, 137)
TRAIN_BATCH, TRAIN_HR = 4, 160


def bench_infer(repeats: int, tiny: bool, torch=None, pause: float = 0.0, torch_device: str = 'cpu',
                lr_size: Optional[Sequence[int]] = None, config_spec: str = inputs.DEFAULT_CONFIG,
                **unused) -> Dict[str, Any]:
  """Whole-model inference (batch 1) of the `ssen` model."""
  config = inputs.load_config(config_spec, 'tiny' if tiny else '')
  h, w = lr_size or ((12, 20) if tiny else INFER_LR)
  scale = config.model.scale
  model, params = inputs.model_and_params(config)
  lr, ref, _ = inputs.images(np.random.default_rng(1), 1, h, w, scale)
  sr_fn = restore.make_sr_fn(model, models.uses_reference(config.model.variant))
  params_j, lr_j, ref_j = jax.device_put((params, lr, ref))
  start = time.perf_counter()
  sr = jax.block_until_ready(sr_fn(params_j, lr_j, ref_j))
  first_call = time.perf_counter() - start
  cases = {'ssen inference': lambda: jax.block_until_ready(sr_fn(params_j, lr_j, ref_j))}
  frameworks = {'ssen inference': 'jax'}
  notes = [f'first JAX call (trace + compile + run): {first_call:.1f} s']
  if torch is not None:
    net = torch_peers.torch_model(torch, config, params).eval().to(torch_device)
    lr_t = torch_peers.nchw(torch, lr, torch_device)
    ref_t = torch_peers.nchw(torch, ref, torch_device)

    def torch_infer():
      with torch.inference_mode():
        out = net(lr_t, ref_t)
      torch_peers.sync(torch, torch_device)
      return out

    cases['ssen inference (PyTorch, eager, inference_mode)'] = torch_infer
    frameworks['ssen inference (PyTorch, eager, inference_mode)'] = 'torch'
    torch_sr = np.clip(np.transpose(torch_infer().cpu().numpy(), (0, 2, 3, 1)), 0, 1)
    err = np.abs(torch_sr - np.asarray(sr)).max()
    notes.append(f'max |SR_jax - SR_torch| = {err:.1e} (same weights)')
  times = harness.interleaved(cases, repeats, pause=pause)
  ratios = []
  if torch is not None:
    ratios.append(harness.ratio('PyTorch inference / JAX inference',
                         np.median(times['ssen inference (PyTorch, eager, inference_mode)'])
                         / np.median(times['ssen inference']), '>= 3'))
  settings = (f"{config_spec}{' + tiny' if tiny else ''} model (ssen), LR {h}x{w} -> "
              f'{scale * h}x{scale * w}, batch 1, random weights (offsets of a few pixels); '
              f'float32; {harness.rounds(repeats, pause)}.')
  return dict(settings=settings, timings=harness.timing_rows(times, frameworks), ratios=ratios,
              notes=notes)


def _jax_trainer(config, seed=0):
  """A Trainer on one device with randomized parameters, and its first-call (compile) time."""
  trainer = steps.Trainer(config, sharding.create_mesh(jax.devices()[:1]))
  p = config.data.hr_patch
  params = inputs.randomize_params(restore.abstract_params(config), seed)
  state = trainer.init_state(jax.random.key(seed), params=params)
  s = config.model.scale
  lr, ref, hr = inputs.images(np.random.default_rng(seed + 1), config.batch_size, p // s, p // s, s)
  batch = sharding.global_batch({'lr': lr, 'ref': ref, 'hr': hr}, trainer.mesh)
  holder = {'state': state}

  def step():
    holder['state'], metrics = trainer.train_step(holder['state'], batch)
    jax.block_until_ready(metrics)

  start = time.perf_counter()
  step()
  return trainer, step, time.perf_counter() - start, (lr, ref, hr), params


def bench_train(repeats: int, tiny: bool, torch=None, pause: float = 0.0, torch_device: str = 'cpu',
                batch: Optional[int] = None, config_spec: str = inputs.DEFAULT_CONFIG,
                **unused) -> Dict[str, Any]:
  """One training step (Charbonnier loss, Adam) of `ssen` and `baseline`, and its compilation."""
  base = inputs.load_config(config_spec, 'tiny' if tiny else '')
  patch = 32 if tiny else TRAIN_HR
  batch = batch or (2 if tiny else TRAIN_BATCH)
  cases, frameworks, first, notes = {}, {}, {}, []
  trainers = {}
  for variant in ('ssen', 'baseline'):
    config = inputs.load_config(config_spec, 'tiny' if tiny else '',
                                'baseline' if variant == 'baseline' else '')
    config.batch_size, config.data.hr_patch = batch, patch
    trainer, step, first[variant], data, params = _jax_trainer(config)
    trainers[variant] = trainer
    cases[f'{variant} train step'] = step
    frameworks[f'{variant} train step'] = 'jax'
    if variant == 'ssen':
      ssen_config, ssen_data, ssen_params = config, data, params
  if torch is not None:
    net = torch_peers.torch_model(torch, ssen_config, ssen_params).train().to(torch_device)
    opt = torch.optim.Adam(net.parameters(), lr=base.optim.learning_rate,
                           betas=(base.optim.b1, base.optim.b2))
    lr_t, ref_t, hr_t = (torch_peers.nchw(torch, a, torch_device) for a in ssen_data)
    eps = base.loss.charbonnier_eps

    def torch_step():
      opt.zero_grad(set_to_none=True)
      loss = torch.sqrt((net(lr_t, ref_t) - hr_t) ** 2 + eps ** 2).mean()
      loss.backward()
      opt.step()
      torch_peers.sync(torch, torch_device)

    cases['ssen train step (PyTorch, eager)'] = torch_step
    frameworks['ssen train step (PyTorch, eager)'] = 'torch'
  times = harness.interleaved(cases, repeats, pause=pause)
  med = {k: float(np.median(v)) for k, v in times.items()}
  compiles = {v: first[v] - med[f'{v} train step'] for v in first}
  recompiled = {v: t.train_step._cache_size() - 1 for v, t in trainers.items()}
  ratios = []
  if torch is not None:
    ratios.append(harness.ratio('PyTorch train step / JAX train step',
                         med['ssen train step (PyTorch, eager)'] / med['ssen train step'], '>= 2'))
  ratios += [
      harness.ratio('ssen train step / baseline train step',
             med['ssen train step'] / med['baseline train step'], '<= 1.5'),
      harness.ratio('ssen train step compile s (first call - median step)', compiles['ssen'],
                    '<= 60'),
      harness.ratio('baseline train step compile s', compiles['baseline']),
      harness.ratio('recompilations over all ssen steps', recompiled['ssen'], '<= 0')]
  notes.append('steps/s: ' + ', '.join(f'{k} {1 / v:.3g}' for k, v in med.items()) + '.')
  notes.append('compile = first call (trace + compile + one step) minus the median step; '
               f'recompilations counted from jit cache sizes: {recompiled}.')
  settings = (f"{config_spec}{' + tiny' if tiny else ''} models, batch {batch}, HR/reference "
              f'{patch}x{patch} (LR {patch // base.model.scale}x{patch // base.model.scale}), '
              'Charbonnier loss, Adam (config optimiser: Adam + cosine schedule; PyTorch: '
              'torch.optim.Adam), random weights, one device; float32; '
              f'{harness.rounds(repeats, pause)}.')
  return dict(settings=settings, timings=harness.timing_rows(times, frameworks), ratios=ratios,
              notes=notes)


def infer_once(size: str, tiny: bool, config_spec: str = inputs.DEFAULT_CONFIG) -> Dict[str, Any]:
  """One jitted inference of an HxW LR input (the memory benchmark's child process)."""
  h, w = (int(v) for v in size.split('x'))
  config = inputs.load_config(config_spec, 'tiny' if tiny else '')
  model, params = inputs.model_and_params(config)
  lr, ref, _ = inputs.images(np.random.default_rng(1), 1, h, w, config.model.scale)
  sr_fn = restore.make_sr_fn(model, models.uses_reference(config.model.variant))
  start = time.perf_counter()
  compiled = sr_fn.lower(params, lr, ref).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  sr = jax.block_until_ready(compiled(params, lr, ref))
  return dict(compile_s=compile_s, run_s=time.perf_counter() - start, output=list(sr.shape),
              finite=bool(np.isfinite(np.asarray(sr[0, ::64, ::64])).all()))
