r"""Speed and memory figures of ssen_jax, optionally against the PyTorch reference (DESIGN.md §7).

  python -m ssen_jax.benchmark --what op --compare torch      # deform_conv2d vs torchvision, conv
  python -m ssen_jax.benchmark --what infer --compare torch   # full `ssen`, 80x137 LR -> 320x548
  python -m ssen_jax.benchmark --what train --compare torch   # train step, batch 4, 160x160 HR
  python -m ssen_jax.benchmark --what memory                  # 1024x1024 and 512x512 LR, peak RSS
  python -m ssen_jax.benchmark --what op --repeats 1 --tiny --json /tmp/op.json   # smoke test
  launch/gpu_benchmark.sh --out DIR   # on a GPU: op, infer, train at batch 32; torch on the GPU too

`--infer_lr HxW` and `--train_batch N` change the sizes; `--torch_device` (default: the chip JAX
runs on) says where the PyTorch peers run, which are synchronised before each timing stops.

Speed is quoted as ratios measured in one run on one machine, since absolute times drift: every
case is run once per repetition, the cases interleaved, and the median of the repetitions is
reported (with the minimum). Every figure is float32. The model is `configs/refsr.py`'s default
(`--tiny`: its `tiny` variant and small sizes) with random weights scaled so that the deformable
offsets are of the order of pixels (an untrained model samples the regular grid, which would make
the gathers unrealistically cache-friendly). With `--compare torch` the same weights are copied into
the PyTorch reference network and its output is checked against ours.

torch is optional (the `test` extra) and imported only with `--compare torch`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Dict, List, Optional

import numpy as np
from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS

# Sizes of the performance issue's figures.
OP_SHAPE = dict(n=4, c=64, h=40, w=40, offset_std=3.0)
TINY_OP_SHAPE = dict(n=1, c=8, h=12, w=12, offset_std=3.0)
INFER_LR = (80, 137)
TRAIN_BATCH, TRAIN_HR = 4, 160
MEMORY_SIZES = ((1024, 1024), (512, 512))
TINY_MEMORY_SIZES = ((64, 64), (32, 32))
MEMORY_LIMIT_GB = 16.0


def define_flags() -> None:
  """Command-line flags, defined only when run as a script (importers keep their own flags)."""
  flags.DEFINE_enum('what', 'op', ['op', 'infer', 'train', 'memory'], 'Which figures to measure.')
  flags.DEFINE_enum('compare', None, ['torch'], 'Also run the PyTorch peers (needs torch).')
  flags.DEFINE_string('json', None, 'Optional path for the results as JSON.')
  flags.DEFINE_integer('repeats', None, 'Interleaved repetitions per case (default per --what).')
  flags.DEFINE_bool('tiny', False, 'Shrink every size (tests; the ratios mean nothing then).')
  flags.DEFINE_float('pause', 0.05, 'Seconds between two timed calls (see `interleaved`).')
  flags.DEFINE_integer('torch_threads', None, 'torch threads (default: the CPUs this process may '
                       'use, as XLA does).')
  flags.DEFINE_enum('torch_device', 'auto', ['auto', 'cpu', 'cuda'], 'Where the PyTorch peers '
                    'run; auto: cuda when JAX runs on a GPU (the same chip for both), else cpu.')
  flags.DEFINE_string('infer_lr', None, f'--what infer: LR size HxW (default '
                      f'{INFER_LR[0]}x{INFER_LR[1]}).')
  flags.DEFINE_integer('train_batch', None, f'--what train: batch (default {TRAIN_BATCH}).')
  flags.DEFINE_string('infer_once', None, 'Internal (memory child): run one inference of an HxW '
                      'LR input and print its timings as JSON.')


# -- Timing and reporting --------------------------------------------------------------------------


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


def _rounds(repeats: int, pause: float) -> str:
  return f'{repeats} interleaved repetitions ({1e3 * pause:g} ms apart), median'


def _timing_rows(times: Mapping[str, List[float]], frameworks: Mapping[str, str]) -> List[dict]:
  return [dict(name=name, framework=frameworks[name], median_ms=1e3 * float(np.median(t)),
               min_ms=1e3 * float(np.min(t)), repeats=len(t)) for name, t in times.items()]


def _ratio(name: str, value: float, target: Optional[str] = None) -> dict:
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
    lines += ['| case | framework | median ms | min ms | runs |', '|---|---|---:|---:|---:|']
    lines += [f"| {r['name']} | {r['framework']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
              f"{r['repeats']} |" for r in result['timings']]
    lines.append('')
  if result.get('memory'):
    lines += ['| LR input | output | peak RSS GB | wall s | compile s | run s | RSS from |',
              '|---|---|---:|---:|---:|---:|---|']
    lines += [f"| {r['lr']} | {r['output']} | {r['peak_rss_gb']:.2f} | {r['wall_s']:.1f} | "
              f"{r['compile_s']:.1f} | {r['run_s']:.1f} | {r['rss_source']} |"
              for r in result['memory']]
    lines.append('')
  if result.get('ratios'):
    lines += ['| figure | value | target | met |', '|---|---:|---|---|']
    for r in result['ratios']:
      met = '' if r['met'] is None else ('yes' if r['met'] else '**no**')
      lines.append(f"| {r['name']} | {r['value']:.3g} | {r['target'] or ''} | {met} |")
    lines.append('')
  lines += [f'- {note}' for note in result.get('notes', [])]
  return '\n'.join(lines).rstrip() + '\n'


# -- Models, weights and the PyTorch reference -----------------------------------------------------


def import_torch(threads: Optional[int] = None):
  """torch, with its thread count pinned; exits with one line if it is not installed."""
  try:
    import torch
    import torchvision  # noqa: F401  (before anything imports tensorflow: DESIGN.md §1)
  except ImportError as e:
    sys.exit(f'error: --compare torch needs torch and torchvision ({e.name} is not installed; '
             "pip install -e '.[test]').")
  torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
  return torch


def torch_reference():
  """The PyTorch reference networks (`ssen_jax.torch_reference`; needs torch)."""
  from ssen_jax.interop import torch_reference as module  # pylint: disable=import-outside-toplevel
  return module


def load_config(variants: str = ''):
  """configs/refsr.py with the given comma-separated variants."""
  spec = importlib.util.spec_from_file_location('ssen_refsr_config', REPO / 'configs' / 'refsr.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variants or None)


def randomize_params(params, seed: int = 0, bias_std: float = 0.05, offset_gain: float = 3.0):
  """Every parameter redrawn: kernels N(0, 1/fan_in), offset predictors x offset_gain, biases small.

  The same rule as the reference's `randomize_`: activations stay of order one through the network
  and the deformable offsets are of the order of pixels.
  """
  from flax import traverse_util
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params)
  out = {}
  for path, value in flat.items():
    shape = np.shape(value)
    if len(shape) > 1:
      std = 1.0 / np.sqrt(np.prod(shape[:-1]))
      std *= offset_gain if any('offset_conv' in p for p in path) else 1.0
    else:
      std = bias_std
    out[path] = (rng.standard_normal(shape) * std).astype(np.float32)
  return traverse_util.unflatten_dict(out)


def _model_and_params(config, lr_shape, seed=0):
  import jax
  from ssen_jax import models
  model = models.create_model(config.model, config.dtype)
  s = config.model.scale
  lr = np.zeros(lr_shape, np.float32)
  ref = np.zeros((lr_shape[0], s * lr_shape[1], s * lr_shape[2], 3), np.float32)
  template = jax.eval_shape(model.init, jax.random.key(0), lr,
                            ref if models.uses_reference(config.model.variant) else None)
  return model, randomize_params(template['params'], seed)


def _torch_model(torch, config, params):
  """The reference network of config.model holding `params` (converted by ssen_jax.convert)."""
  from ssen_jax.interop import convert
  m = config.model
  net = torch_reference().build(
      m.variant, features=m.features, num_extract_blocks=m.num_extract_blocks,
      num_recon_blocks=m.num_recon_blocks, num_dcn_layers=m.num_dcn_layers,
      use_nonlocal=m.use_nonlocal, offset_groups=m.offset_groups, scale=m.scale)
  state = {k: torch.from_numpy(v) for k, v in convert.params_to_state_dict(params).items()}
  net.load_state_dict(state, strict=True)
  return net


def _images(rng, n, h, w, scale):
  lr = rng.random((n, h, w, 3), dtype=np.float32)
  ref = rng.random((n, scale * h, scale * w, 3), dtype=np.float32)
  hr = rng.random((n, scale * h, scale * w, 3), dtype=np.float32)
  return lr, ref, hr


def _nchw(torch, x, device='cpu'):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))).to(device)


def _torch_sync(torch, device):
  """Waits for the queued GPU work (torch calls return before a CUDA kernel has run)."""
  if device == 'cuda':
    torch.cuda.synchronize()


def resolve_torch_device(torch, requested: str) -> str:
  """'cpu' or 'cuda'; 'auto' follows JAX's backend, so both frameworks use the same chip."""
  import jax
  if requested == 'auto':
    requested = 'cuda' if jax.default_backend() == 'gpu' else 'cpu'
  if requested == 'cuda' and not torch.cuda.is_available():
    sys.exit('error: --torch_device cuda, but torch sees no CUDA device.')
  return requested


# -- The figures ----------------------------------------------------------------------------------


def bench_op(repeats: int, tiny: bool, torch=None, pause: float = 0.0, torch_device: str = 'cpu',
             **unused) -> Dict[str, Any]:
  """deform_conv2d against a plain 3x3 convolution of the same shape and torchvision's op."""
  import jax
  import jax.numpy as jnp
  from ssen_jax import ops
  s = TINY_OP_SHAPE if tiny else OP_SHAPE
  n, c, h, w = s['n'], s['c'], s['h'], s['w']
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, h, w, c)).astype(np.float32)
  offsets = (rng.standard_normal((n, h, w, 18)) * s['offset_std']).astype(np.float32)
  mask = rng.random((n, h, w, 9), dtype=np.float32)
  kernel = (rng.standard_normal((3, 3, c, c)) / np.sqrt(9 * c)).astype(np.float32)
  bias = rng.standard_normal(c).astype(np.float32)
  cot = rng.standard_normal((n, h, w, c)).astype(np.float32)
  args = [jnp.asarray(a) for a in (x, offsets, mask, kernel, bias)]
  cot_j = jnp.asarray(cot)

  def conv(x, kernel, bias):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias

  def forward_backward(fn):
    def run(*a):
      out, vjp = jax.vjp(fn, *a[:-1])
      return out, vjp(a[-1])
    return jax.jit(run)

  dcn_fwd, dcn_fb = jax.jit(ops.deform_conv2d), forward_backward(ops.deform_conv2d)
  conv_fwd, conv_fb = jax.jit(conv), forward_backward(conv)
  conv_args = [args[0], args[3], args[4]]
  cases = {
      'deform_conv2d forward': lambda: jax.block_until_ready(dcn_fwd(*args)),
      'deform_conv2d forward+backward': lambda: jax.block_until_ready(dcn_fb(*args, cot_j)),
      'conv 3x3 forward': lambda: jax.block_until_ready(conv_fwd(*conv_args)),
      'conv 3x3 forward+backward': lambda: jax.block_until_ready(conv_fb(*conv_args, cot_j)),
  }
  frameworks = dict.fromkeys(cases, 'jax')
  notes = []
  if torch is not None:
    import torchvision
    dev = torch_device
    t = [_nchw(torch, x, dev), _nchw(torch, offsets, dev), _nchw(torch, mask, dev),
         torch.from_numpy(np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))).to(dev),
         torch.from_numpy(bias).to(dev)]
    t_grad = [a.clone().requires_grad_(True) for a in t]
    t_cot = _nchw(torch, cot, dev)

    def tv(x, off, m, k, b):
      return torchvision.ops.deform_conv2d(x, off, k, b, padding=(1, 1), mask=m)

    def tv_forward():
      with torch.inference_mode():
        tv(*t)
      _torch_sync(torch, dev)

    def tv_forward_backward():
      for a in t_grad:
        a.grad = None
      tv(*t_grad).backward(t_cot)
      _torch_sync(torch, dev)

    cases['torchvision deform_conv2d forward'] = tv_forward
    cases['torchvision deform_conv2d forward+backward'] = tv_forward_backward
    frameworks.update(dict.fromkeys(list(cases)[-2:], 'torch'))
    with torch.inference_mode():
      err = np.abs(np.transpose(tv(*t).cpu().numpy(), (0, 2, 3, 1))
                   - np.asarray(dcn_fwd(*args))).max()
    notes.append(f'max |deform_conv2d - torchvision| = {err:.1e} (forward)')

  times = interleaved(cases, repeats, pause=pause)
  med = {k: float(np.median(v)) for k, v in times.items()}
  ratios = [
      _ratio('deform_conv2d forward / conv forward',
             med['deform_conv2d forward'] / med['conv 3x3 forward'], '<= 2'),
      _ratio('deform_conv2d fwd+bwd / conv fwd+bwd',
             med['deform_conv2d forward+backward'] / med['conv 3x3 forward+backward'], '<= 3')]
  if torch is not None:
    ratios.insert(0, _ratio('torchvision fwd+bwd / deform_conv2d fwd+bwd',
                            med['torchvision deform_conv2d forward+backward']
                            / med['deform_conv2d forward+backward'], '>= 6'))
    ratios.insert(1, _ratio('torchvision forward / deform_conv2d forward',
                            med['torchvision deform_conv2d forward']
                            / med['deform_conv2d forward']))
  settings = (f"deform_conv2d N={n}, C={c}->{c}, {h}x{w}, 3x3, offsets ~ N(0, {s['offset_std']:g}) "
              f"px, mask ~ U(0, 1), bias; backward = VJP w.r.t. every input; plain conv = "
              f"lax.conv_general_dilated NHWC (+ bias); float32; {_rounds(repeats, pause)}.")
  return dict(settings=settings, timings=_timing_rows(times, frameworks), ratios=ratios,
              notes=notes)


def bench_infer(repeats: int, tiny: bool, torch=None, pause: float = 0.0, torch_device: str = 'cpu',
                lr_size: Optional[Sequence[int]] = None, **unused) -> Dict[str, Any]:
  """Whole-model inference (batch 1) of the `ssen` model."""
  import jax
  config = load_config('tiny' if tiny else '')
  h, w = lr_size or ((12, 20) if tiny else INFER_LR)
  scale = config.model.scale
  model, params = _model_and_params(config, (1, h, w, 3))
  lr, ref, _ = _images(np.random.default_rng(1), 1, h, w, scale)
  sr_fn = jax.jit(lambda p, lr, ref: model.apply({'params': p}, lr, ref))
  params_j, lr_j, ref_j = jax.device_put((params, lr, ref))
  start = time.perf_counter()
  sr = jax.block_until_ready(sr_fn(params_j, lr_j, ref_j))
  first_call = time.perf_counter() - start
  cases = {'ssen inference': lambda: jax.block_until_ready(sr_fn(params_j, lr_j, ref_j))}
  frameworks = {'ssen inference': 'jax'}
  notes = [f'first JAX call (trace + compile + run): {first_call:.1f} s']
  if torch is not None:
    net = _torch_model(torch, config, params).eval().to(torch_device)
    lr_t, ref_t = _nchw(torch, lr, torch_device), _nchw(torch, ref, torch_device)

    def torch_infer():
      with torch.inference_mode():
        out = net(lr_t, ref_t)
      _torch_sync(torch, torch_device)
      return out

    cases['ssen inference (PyTorch, eager, inference_mode)'] = torch_infer
    frameworks['ssen inference (PyTorch, eager, inference_mode)'] = 'torch'
    err = np.abs(np.transpose(torch_infer().cpu().numpy(), (0, 2, 3, 1)) - np.asarray(sr)).max()
    notes.append(f'max |SR_jax - SR_torch| = {err:.1e} (same weights)')
  times = interleaved(cases, repeats, pause=pause)
  ratios = []
  if torch is not None:
    ratios.append(_ratio('PyTorch inference / JAX inference',
                         np.median(times['ssen inference (PyTorch, eager, inference_mode)'])
                         / np.median(times['ssen inference']), '>= 3'))
  settings = (f"configs/refsr.py{':tiny' if tiny else ''} model (ssen), LR {h}x{w} -> "
              f'{scale * h}x{scale * w}, batch 1, random weights (offsets of a few pixels); '
              f'float32; {_rounds(repeats, pause)}.')
  return dict(settings=settings, timings=_timing_rows(times, frameworks), ratios=ratios,
              notes=notes)


def _jax_trainer(config, seed=0):
  """A Trainer on one device with randomized parameters, and its first-call (compile) time."""
  import jax
  from ssen_jax.training import steps
  trainer = steps.Trainer(config, steps.create_mesh(jax.devices()[:1]))
  state = trainer.init_state(jax.random.key(seed))
  p = config.data.hr_patch
  params = randomize_params(jax.tree.map(np.asarray, state['params']), seed)
  state = jax.device_put(dict(state, params=params, opt_state=trainer.tx.init(params)),
                         steps.replicated(trainer.mesh))
  lr, ref, hr = _images(np.random.default_rng(seed + 1), config.batch_size, p // config.model.scale,
                        p // config.model.scale, config.model.scale)
  batch = steps.global_batch({'lr': lr, 'ref': ref, 'hr': hr}, trainer.mesh)
  holder = {'state': state}

  def step():
    holder['state'], metrics = trainer.train_step(holder['state'], batch)
    jax.block_until_ready(metrics)

  start = time.perf_counter()
  step()
  return trainer, step, time.perf_counter() - start, (lr, ref, hr), params


def bench_train(repeats: int, tiny: bool, torch=None, pause: float = 0.0, torch_device: str = 'cpu',
                batch: Optional[int] = None, **unused) -> Dict[str, Any]:
  """One training step (Charbonnier loss, Adam) of `ssen` and `baseline`, and its compilation."""
  base = load_config('tiny' if tiny else '')
  patch = 32 if tiny else TRAIN_HR
  batch = batch or (2 if tiny else TRAIN_BATCH)
  cases, frameworks, first, notes = {}, {}, {}, []
  trainers = {}
  for variant in ('ssen', 'baseline'):
    config = load_config(','.join(filter(None, ['tiny' if tiny else '',
                                                'baseline' if variant == 'baseline' else ''])))
    config.batch_size, config.data.hr_patch = batch, patch
    trainer, step, first[variant], data, params = _jax_trainer(config)
    trainers[variant] = trainer
    cases[f'{variant} train step'] = step
    frameworks[f'{variant} train step'] = 'jax'
    if variant == 'ssen':
      ssen_config, ssen_data, ssen_params = config, data, params
  if torch is not None:
    net = _torch_model(torch, ssen_config, ssen_params).train().to(torch_device)
    opt = torch.optim.Adam(net.parameters(), lr=base.optim.learning_rate,
                           betas=(base.optim.b1, base.optim.b2))
    lr_t, ref_t, hr_t = (_nchw(torch, a, torch_device) for a in ssen_data)
    eps = base.loss.charbonnier_eps

    def torch_step():
      opt.zero_grad(set_to_none=True)
      loss = torch.sqrt((net(lr_t, ref_t) - hr_t) ** 2 + eps ** 2).mean()
      loss.backward()
      opt.step()
      _torch_sync(torch, torch_device)

    cases['ssen train step (PyTorch, eager)'] = torch_step
    frameworks['ssen train step (PyTorch, eager)'] = 'torch'
  times = interleaved(cases, repeats, pause=pause)
  med = {k: float(np.median(v)) for k, v in times.items()}
  compiles = {v: first[v] - med[f'{v} train step'] for v in first}
  recompiled = {v: t.train_step._cache_size() - 1 for v, t in trainers.items()}
  ratios = []
  if torch is not None:
    ratios.append(_ratio('PyTorch train step / JAX train step',
                         med['ssen train step (PyTorch, eager)'] / med['ssen train step'], '>= 2'))
  ratios += [
      _ratio('ssen train step / baseline train step',
             med['ssen train step'] / med['baseline train step'], '<= 1.5'),
      _ratio('ssen train step compile s (first call - median step)', compiles['ssen'], '<= 60'),
      _ratio('baseline train step compile s', compiles['baseline']),
      _ratio('recompilations over all ssen steps', recompiled['ssen'], '<= 0')]
  notes.append('steps/s: ' + ', '.join(f'{k} {1 / v:.3g}' for k, v in med.items()) + '.')
  notes.append('compile = first call (trace + compile + one step) minus the median step; '
               f'recompilations counted from jit cache sizes: {recompiled}.')
  settings = (f"configs/refsr.py{':tiny' if tiny else ''} models, batch {batch}, HR/reference "
              f'{patch}x{patch} (LR {patch // base.model.scale}x{patch // base.model.scale}), '
              'Charbonnier loss, Adam (config optimiser: Adam + cosine schedule; PyTorch: '
              f'torch.optim.Adam), random weights, one device; float32; {_rounds(repeats, pause)}.')
  return dict(settings=settings, timings=_timing_rows(times, frameworks), ratios=ratios,
              notes=notes)


def infer_once(size: str, tiny: bool) -> Dict[str, Any]:
  """One jitted inference of an HxW LR input (the memory benchmark's child process)."""
  import jax
  h, w = (int(v) for v in size.split('x'))
  config = load_config('tiny' if tiny else '')
  model, params = _model_and_params(config, (1, h, w, 3))
  lr, ref, _ = _images(np.random.default_rng(1), 1, h, w, config.model.scale)
  sr_fn = jax.jit(lambda p, lr, ref: model.apply({'params': p}, lr, ref))
  start = time.perf_counter()
  compiled = sr_fn.lower(params, lr, ref).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  sr = jax.block_until_ready(compiled(params, lr, ref))
  return dict(compile_s=compile_s, run_s=time.perf_counter() - start, output=list(sr.shape),
              finite=bool(np.isfinite(np.asarray(sr[0, ::64, ::64])).all()))


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
                 **unused) -> Dict[str, Any]:
  """Peak RSS of one inference of large LR inputs, each in a fresh process."""
  del repeats, torch, pause, unused
  sizes = TINY_MEMORY_SIZES if tiny else MEMORY_SIZES
  rows, ratios = [], []
  for h, w in sizes:
    cmd = [sys.executable, '-m', 'ssen_jax.benchmark', f'--infer_once={h}x{w}']
    r = _peak_rss_run(cmd + (['--tiny'] if tiny else []))
    rows.append(dict(lr=f'{h}x{w}', output='x'.join(str(v) for v in r['output'][1:3]), **{
        k: r[k] for k in ('peak_rss_gb', 'wall_s', 'compile_s', 'run_s', 'rss_source', 'finite')}))
    ratios.append(_ratio(f'peak RSS GB, {h}x{w} LR', r['peak_rss_gb'],
                         f'<= {MEMORY_LIMIT_GB:g}' if (h, w) == sizes[0] else None))
  settings = (f"configs/refsr.py{':tiny' if tiny else ''} model (ssen), batch 1, one jitted "
              'inference per fresh process (compile included in the peak), no tiling; float32.')
  return dict(settings=settings, memory=rows, ratios=ratios,
              notes=['wall s covers the whole child process: imports, compilation and the run.'])


BENCHMARKS = {'op': (bench_op, 20), 'infer': (bench_infer, 7), 'train': (bench_train, 5),
              'memory': (bench_memory, 1)}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.infer_once:
    print(json.dumps(infer_once(FLAGS.infer_once, FLAGS.tiny)))
    return
  lr_size = None
  if FLAGS.infer_lr:
    match = re.fullmatch(r'(\d+)x(\d+)', FLAGS.infer_lr)
    if not match or min(int(v) for v in match.groups()) < 1:
      sys.exit(f'error: --infer_lr must look like 80x137, got {FLAGS.infer_lr!r}.')
    lr_size = tuple(int(v) for v in match.groups())
  if FLAGS.train_batch is not None and FLAGS.train_batch < 1:
    sys.exit(f'error: --train_batch must be at least 1, got {FLAGS.train_batch}.')
  torch = import_torch(FLAGS.torch_threads) if FLAGS.compare == 'torch' else None
  torch_device = resolve_torch_device(torch, FLAGS.torch_device) if torch else 'cpu'
  fn, default_repeats = BENCHMARKS[FLAGS.what]
  repeats = FLAGS.repeats or default_repeats
  result = dict(what=FLAGS.what, tiny=FLAGS.tiny, repeats=repeats,
                compare=FLAGS.compare, machine=machine_info(torch, torch_device),
                pause_s=FLAGS.pause, **fn(repeats, FLAGS.tiny, torch, FLAGS.pause,
                                          torch_device=torch_device, lr_size=lr_size,
                                          batch=FLAGS.train_batch))
  result['load_average_after'] = round(os.getloadavg()[0], 2)
  print(to_markdown(result))
  if FLAGS.json:
    pathlib.Path(FLAGS.json).write_text(json.dumps(result, indent=2) + '\n')


if __name__ == '__main__':
  define_flags()
  app.run(main)
