"""Parity with PyTorch on the benchmark's device: `--what op_parity` and `--what model_parity`.

`op_parity`: `ssen_jax.ops.deform_conv2d` against `torchvision.ops.deform_conv2d` at the op
benchmark's size (N=4, C=64, 40x40, offsets of a few pixels; `--tiny`: its tiny size), the output
and the gradients with respect to every argument (input, offsets, mask, kernel, bias) for one
random output cotangent. `model_parity`: the config's model (default the paper's, configs/refsr.py)
with random weights, copied into its PyTorch twin (`ssen_jax.interop`), on random images: the
output, PSNR between the two outputs, the Charbonnier loss and its gradient with respect to every
parameter tensor.

Each difference is given as the largest absolute one and relative to the largest magnitude of the
PyTorch side. "float32" rows run both frameworks in full float32 (JAX's default matmul precision
`float32`, torch's TF32 switched off); "default" rows keep each framework's defaults, which on
GPUs with TF32 (Ampere and later) let JAX's and cuDNN's convolutions round their inputs to TF32.
The tests check the same parity on the CPU at small sizes (tests/test_deform_conv.py,
tests/test_parity.py); these figures repeat it where the benchmark runs, a GPU in particular.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Dict, Optional

import jax
import numpy as np

from ssen_jax import ops
from ssen_jax.benchmarks import harness
from ssen_jax.benchmarks import inputs
from ssen_jax.benchmarks import op
from ssen_jax.benchmarks import torch_peers
from ssen_jax.interop import convert
from ssen_jax.training import optim

# Relative differences (/ max |PyTorch|) allowed in full float32: the tests' tolerances.
OP_TARGET = '<= 1e-5'
MODEL_OUTPUT_TARGET = '<= 1e-4'
MODEL_GRAD_TARGET = '<= 1e-3'
PARITY_LR = (40, 40)  # The LR side of a 160x160 training crop.
TINY_PARITY_LR = (12, 12)
PARITY_BATCH = 2
OP_ARGS = ('x', 'offsets', 'mask', 'kernel', 'bias')


@contextlib.contextmanager
def precision(torch, name: str):
  """'float32': both frameworks in full float32 while inside; 'default': their own defaults."""
  if name == 'default':
    yield
    return
  saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
  try:
    with jax.default_matmul_precision('float32'):
      yield
  finally:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def difference(precision_name: str, compared: str, ours, theirs) -> Dict[str, Any]:
  """One parity row: max and mean |ours - theirs|, and the max relative to max |theirs|."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  diff = np.abs(ours - theirs)
  scale = float(np.abs(theirs).max()) if theirs.size else 0.0
  max_abs = float(diff.max()) if diff.size else 0.0
  return dict(precision=precision_name, compared=compared, max_abs=max_abs,
              mean_abs=float(diff.mean()) if diff.size else 0.0,
              max_rel=max_abs / scale if scale > 0 else max_abs, torch_max=scale)


def _nhwc(t) -> np.ndarray:
  return np.transpose(t.detach().cpu().numpy(), (0, 2, 3, 1))


def _op_both(torch, arrays: Dict[str, np.ndarray], device: str):
  """(output, gradients) of our op and of torchvision's, NHWC and HWIO, as numpy."""
  def f(args):
    return ops.deform_conv2d(*(args[k] for k in OP_ARGS))

  @jax.jit  # Traced here, under the caller's precision.
  def forward_and_vjp(args, cot):
    out, vjp = jax.vjp(f, args)
    return out, vjp(cot)[0]

  out_j, grads_j = forward_and_vjp({k: arrays[k] for k in OP_ARGS}, arrays['cot'])
  t = [a.requires_grad_(True) for a in op.torch_op_args(torch, arrays, device)]
  out_t = op.torchvision_op(*t)
  out_t.backward(torch_peers.nchw(torch, arrays['cot'], device))
  grads_t = dict(x=_nhwc(t[0].grad), offsets=_nhwc(t[1].grad), mask=_nhwc(t[2].grad),
                 kernel=np.transpose(t[3].grad.cpu().numpy(), (2, 3, 1, 0)),
                 bias=t[4].grad.cpu().numpy())
  return (np.asarray(out_j), jax.tree_util.tree_map(np.asarray, grads_j)), (_nhwc(out_t), grads_t)


def bench_op_parity(repeats: int, tiny: bool, torch=None, pause: float = 0.0,
                    torch_device: str = 'cpu', **unused) -> Dict[str, Any]:
  """deform_conv2d against torchvision's: output and every gradient, float32 and default."""
  del repeats, pause, unused
  s = op.TINY_OP_SHAPE if tiny else op.OP_SHAPE
  arrays = op.op_arrays(s, seed=1)
  rows = []
  for name in ('float32', 'default'):
    with precision(torch, name):
      (out_j, grads_j), (out_t, grads_t) = _op_both(torch, arrays, torch_device)
    rows.append(difference(name, 'output', out_j, out_t))
    rows += [difference(name, f'd/d{k}', grads_j[k], grads_t[k]) for k in OP_ARGS]
    torch_peers.sync(torch, torch_device)
  f32 = [r for r in rows if r['precision'] == 'float32']
  ratios = [harness.ratio('op output, max relative difference (float32)', f32[0]['max_rel'],
                          OP_TARGET),
            harness.ratio('op gradients, worst max relative difference (float32)',
                          max(r['max_rel'] for r in f32[1:]), OP_TARGET)]
  settings = (f"deform_conv2d N={s['n']}, C={s['c']}->{s['c']}, {s['h']}x{s['w']}, 3x3, "
              f"offsets ~ N(0, {s['offset_std']:g}) px, mask ~ U(0, 1), bias, one random output "
              f'cotangent; ssen_jax (jax) against torchvision.ops.deform_conv2d (torch on '
              f'{torch_device}); relative = max abs / max |torchvision|.')
  return dict(settings=settings, parity=rows, ratios=ratios,
              notes=['float32: JAX default_matmul_precision float32, torch TF32 off; default: '
                     "each framework's own (TF32 convolutions on GPUs that have it)."])


def _loss_and_grads_jax(model, params, lr, ref, hr, eps: float):
  @jax.jit  # Traced here, under the caller's precision.
  def run(params):
    def loss_fn(p):
      sr = model.apply({'params': p}, lr, ref)
      return optim.charbonnier_loss(sr, hr, eps), sr
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss, sr), grads = run(params)
  return float(loss), np.asarray(sr), jax.tree_util.tree_map(np.asarray, grads)


def _loss_and_grads_torch(torch, net, lr, ref, hr, eps: float, device: str, template):
  lr_t, ref_t, hr_t = (torch_peers.nchw(torch, a, device) for a in (lr, ref, hr))
  sr = net(lr_t, ref_t)
  loss = torch_peers.charbonnier(torch, sr, hr_t, eps)
  loss.backward()
  grads = {k: p.grad.cpu().numpy() for k, p in net.named_parameters()}
  return float(loss.item()), _nhwc(sr), convert.state_dict_to_params(grads, template)


def psnr(a: np.ndarray, b: np.ndarray) -> Optional[float]:
  """PSNR (dB, peak 1) between two images in [0, 1]; None where they are identical."""
  mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
  return None if mse == 0 else float(10 * np.log10(1.0 / mse))


def bench_model_parity(repeats: int, tiny: bool, torch=None, pause: float = 0.0,
                       torch_device: str = 'cpu', lr_size: Optional[Sequence[int]] = None,
                       batch: Optional[int] = None, config_spec: str = inputs.DEFAULT_CONFIG,
                       **unused) -> Dict[str, Any]:
  """The model against its PyTorch twin with the same weights: output, loss, every gradient."""
  del repeats, pause, unused
  config = inputs.load_config(config_spec, 'tiny' if tiny else '')
  h, w = lr_size or (TINY_PARITY_LR if tiny else PARITY_LR)
  n, scale, eps = batch or PARITY_BATCH, config.model.scale, config.loss.charbonnier_eps
  model, params = inputs.model_and_params(config)
  lr, ref, hr = inputs.images(np.random.default_rng(2), n, h, w, scale)
  net = torch_peers.torch_model(torch, config, params).train().to(torch_device)
  with precision(torch, 'float32'):
    loss_j, sr_j, grads_j = _loss_and_grads_jax(model, params, lr, ref, hr, eps)
    loss_t, sr_t, grads_t = _loss_and_grads_torch(torch, net, lr, ref, hr, eps, torch_device,
                                                  params)
  rows = [difference('float32', 'SR output', sr_j, sr_t),
          difference('float32', 'Charbonnier loss', loss_j, loss_t)]
  flat_t = dict(jax.tree_util.tree_flatten_with_path(grads_t)[0])
  grad_rows = [difference('float32', 'd/d' + '/'.join(str(getattr(k, 'key', k)) for k in path),
                          g, flat_t[path])
               for path, g in jax.tree_util.tree_flatten_with_path(grads_j)[0]]
  # The non-local blocks' phi bias adds theta_i . b to every logit of query i, which the softmax
  # ignores: its gradient is zero but for rounding, so it is reported on its own, in absolute terms.
  zero = [r for r in grad_rows if r['compared'].endswith('phi/bias')]
  worst = max((r for r in grad_rows if r not in zero), key=lambda r: r['max_rel'])
  rows.append(dict(worst, compared=f'worst of {len(grad_rows) - len(zero)} parameter gradients: '
                                    f"{worst['compared'][3:]}"))
  if zero:
    rows.append(dict(max(zero, key=lambda r: r['max_abs']),
                     compared=f'{len(zero)} phi biases (gradient 0 in exact arithmetic)'))
  clipped_psnr = psnr(np.clip(sr_j, 0, 1), np.clip(sr_t, 0, 1))
  ratios = [harness.ratio('model output, max relative difference (float32)', rows[0]['max_rel'],
                          MODEL_OUTPUT_TARGET),
            harness.ratio('model gradients, worst max relative difference (float32)',
                          worst['max_rel'], MODEL_GRAD_TARGET)]
  if clipped_psnr is not None:
    ratios.append(harness.ratio('PSNR between the JAX and PyTorch outputs, dB', clipped_psnr,
                                '>= 80'))
  settings = (f"{config_spec}{' + tiny' if tiny else ''} model ({config.model.variant}, "
              f'{config.dtype}) with random weights (offsets of a few pixels), the same weights '
              f'in its PyTorch twin (torch on {torch_device}); batch {n}, LR {h}x{w} -> '
              f'{scale * h}x{scale * w}, random images; Charbonnier loss (eps {eps:g}) and its '
              'gradient w.r.t. every parameter; both frameworks in full float32.')
  return dict(settings=settings, parity=rows, ratios=ratios,
              key_figures=dict(psnr_db=clipped_psnr, output_max_abs=rows[0]['max_abs'],
                               output_mean_abs=rows[0]['mean_abs'],
                               worst_grad_rel=worst['max_rel'],
                               grad_tensors=len(grad_rows) - len(zero)),
              notes=['PSNR between the two outputs (clipped to [0, 1], peak 1): '
                     + ('identical' if clipped_psnr is None else f'{clipped_psnr:.1f} dB'),
                     f'loss: JAX {loss_j:.7g}, PyTorch {loss_t:.7g}'])
