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
# Paper Sec. 4 ("Computation Time"): "Our method generates a 322x550 image within 0.95s on
# average", on an Intel Xeon (2.10 GHz) with an NVIDIA GTX 1080 Ti.
PAPER_OUTPUT, PAPER_LATENCY_S, PAPER_GPU = (322, 550), 0.95, 'GTX 1080 Ti'
TINY_LATENCY_OUTPUT = (46, 78)


def bench_infer(repeats: int, tiny: bool, torch=None, pause: float = 0.0, torch_device: str = 'cpu',
                lr_size: Optional[Sequence[int]] = None, config_spec: str = inputs.DEFAULT_CONFIG,
                crop: Optional[Sequence[int]] = None, **unused) -> Dict[str, Any]:
  """Whole-model inference (batch 1) of the `ssen` model.

  Args:
    crop: (H, W): each timed call also crops its output to its top-left H x W (the image the
      paper times when x4 of the LR is larger).
  """
  config = inputs.load_config(config_spec, 'tiny' if tiny else '')
  h, w = lr_size or ((12, 20) if tiny else INFER_LR)
  scale = config.model.scale
  ch, cw = crop or (scale * h, scale * w)
  model, params = inputs.model_and_params(config)
  lr, ref, _ = inputs.images(np.random.default_rng(1), 1, h, w, scale)
  sr_fn = restore.make_sr_fn(model, models.uses_reference(config.model.variant))
  if crop:  # One executable: the crop is fused into the model's last operation.
    sr_fn = jax.jit(lambda p, x, r, full=sr_fn: full(p, x, r)[:, :ch, :cw])
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
        out = net(lr_t, ref_t)[:, :, :ch, :cw]
      torch_peers.sync(torch, torch_device)
      return out

    cases['ssen inference (PyTorch, eager, inference_mode)'] = torch_infer
    frameworks['ssen inference (PyTorch, eager, inference_mode)'] = 'torch'
    torch_sr = np.clip(np.transpose(torch_infer().cpu().numpy(), (0, 2, 3, 1)), 0, 1)
    err = np.abs(torch_sr - np.asarray(sr)).max()
    notes.append(f'max |SR_jax - SR_torch| = {err:.1e} (same weights; each framework\'s '
                 'default precision)')
  times = harness.interleaved(cases, repeats, pause=pause)
  ratios = []
  if torch is not None:
    ratios.append(harness.ratio('PyTorch inference / JAX inference',
                         np.median(times['ssen inference (PyTorch, eager, inference_mode)'])
                         / np.median(times['ssen inference']), '>= 3'))
  cropped = f' cropped to {ch}x{cw}' if (ch, cw) != (scale * h, scale * w) else ''
  settings = (f"{config_spec}{' + tiny' if tiny else ''} model (ssen), LR {h}x{w} -> "
              f'{scale * h}x{scale * w}{cropped}, batch 1, random weights (offsets of a few '
              f'pixels), inputs already on the device; {config.dtype}; '
              f'{harness.rounds(repeats, pause)}.')
  return dict(settings=settings, timings=harness.timing_rows(times, frameworks), ratios=ratios,
              notes=notes)


def bench_latency(repeats: int, tiny: bool, torch=None, pause: float = 0.0,
                  torch_device: str = 'cpu', config_spec: str = inputs.DEFAULT_CONFIG,
                  **unused) -> Dict[str, Any]:
  """Inference latency at the paper's 322x550 output, beside the paper's 0.95 s.

  322x550 is not 4x a whole LR size (80.5x137.5). The LR is taken as MATLAB's imresize makes it
  from a 322x550 image at 1/4 (sizes rounded up: 81x138), and the network's 324x552 output is
  cropped to 322x550 in every timed call. `--tiny`: a 46x78 output of a 12x20 LR, the same way.
  """
  del unused
  config = inputs.load_config(config_spec, 'tiny' if tiny else '')
  out_h, out_w = TINY_LATENCY_OUTPUT if tiny else PAPER_OUTPUT
  scale = config.model.scale
  lr = (-(-out_h // scale), -(-out_w // scale))
  result = bench_infer(repeats, tiny, torch, pause, torch_device, lr_size=lr,
                       config_spec=config_spec, crop=(out_h, out_w))
  med = {r['framework']: r['median_ms'] / 1e3 for r in result['timings']}
  paper = f'paper: {PAPER_LATENCY_S:g} s on a {PAPER_GPU}'
  result['ratios'] += [harness.ratio(f'JAX inference s, {out_h}x{out_w} output ({paper})',
                                     med['jax'])]
  if 'torch' in med:
    result['ratios'].append(harness.ratio(f'PyTorch twin inference s, {out_h}x{out_w} output',
                                          med['torch']))
  result['notes'].append(
      f'paper (Sec. 4, "Computation Time"): a 322x550 image within {PAPER_LATENCY_S:g} s on '
      f'average, Intel Xeon 2.10 GHz + NVIDIA {PAPER_GPU}, LR size and what the time includes '
      f'not stated. Here: LR {lr[0]}x{lr[1]} (a {out_h}x{out_w} image at 1/{scale}, sizes '
      f'rounded up as MATLAB\'s imresize does), output {scale * lr[0]}x{scale * lr[1]} cropped '
      f'to {out_h}x{out_w}, batch 1, the model only (no image reading or host transfers).'
      + (' Tiny sizes: the paper\'s figure does not apply.' if tiny else ''))
  result['key_figures'] = dict(output=f'{out_h}x{out_w}', lr=f'{lr[0]}x{lr[1]}',
                               jax_s=med['jax'], torch_s=med.get('torch'),
                               paper_s=PAPER_LATENCY_S, paper_gpu=PAPER_GPU)
  return result


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
      loss = torch_peers.charbonnier(torch, net(lr_t, ref_t), hr_t, eps)
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
  notes.append(f'samples/s (batch {batch}): '
               + ', '.join(f'{k} {batch / v:.3g}' for k, v in med.items()) + '.')
  notes.append('compile = first call (trace + compile + one step) minus the median step; '
               f'recompilations counted from jit cache sizes: {recompiled}.')
  settings = (f"{config_spec}{' + tiny' if tiny else ''} models, batch {batch}, HR/reference "
              f'{patch}x{patch} (LR {patch // base.model.scale}x{patch // base.model.scale}), '
              'Charbonnier loss, Adam (config optimiser: Adam + cosine schedule; PyTorch: '
              f'torch.optim.Adam), random weights, one device; {base.dtype} (PyTorch: float32); '
              f'{harness.rounds(repeats, pause)}.')
  return dict(settings=settings, timings=harness.timing_rows(times, frameworks), ratios=ratios,
              notes=notes, key_figures=dict(
                  batch=batch, dtype=base.dtype, compile_s=compiles['ssen'],
                  samples_per_s={k: batch / v for k, v in med.items()}))


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
