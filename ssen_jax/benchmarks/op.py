"""The deformable convolution against a plain 3x3 convolution and torchvision's op (`--what op`)."""
from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from ssen_jax import ops
from ssen_jax.benchmarks import harness
from ssen_jax.benchmarks import torch_peers

OP_SHAPE = dict(n=4, c=64, h=40, w=40, offset_std=3.0)
TINY_OP_SHAPE = dict(n=1, c=8, h=12, w=12, offset_std=3.0)


def op_arrays(shape: Dict[str, Any], seed: int = 0) -> Dict[str, np.ndarray]:
  """Random inputs of one 3x3 deformable convolution, NHWC, float32.

  Args:
    shape: n, c, h, w (C -> C channels) and offset_std (pixels), as OP_SHAPE.
    seed: numpy seed.

  Returns:
    x (N, H, W, C), offsets (N, H, W, 18) ~ N(0, offset_std^2), mask (N, H, W, 9) ~ U(0, 1),
    kernel (3, 3, C, C) of unit output scale, bias (C,), and cot (N, H, W, C): an output cotangent.
  """
  n, c, h, w = shape['n'], shape['c'], shape['h'], shape['w']
  rng = np.random.default_rng(seed)
  return dict(
      x=rng.standard_normal((n, h, w, c)).astype(np.float32),
      offsets=(rng.standard_normal((n, h, w, 18)) * shape['offset_std']).astype(np.float32),
      mask=rng.random((n, h, w, 9), dtype=np.float32),
      kernel=(rng.standard_normal((3, 3, c, c)) / np.sqrt(9 * c)).astype(np.float32),
      bias=rng.standard_normal(c).astype(np.float32),
      cot=rng.standard_normal((n, h, w, c)).astype(np.float32))


def torch_op_args(torch, arrays: Dict[str, np.ndarray], device: str = 'cpu') -> list:
  """`op_arrays` as torchvision.ops.deform_conv2d's x, offset, mask, weight, bias (NCHW, OIHW)."""
  nchw = lambda a: torch_peers.nchw(torch, a, device)
  weight = np.ascontiguousarray(np.transpose(arrays['kernel'], (3, 2, 0, 1)))
  return [nchw(arrays['x']), nchw(arrays['offsets']), nchw(arrays['mask']),
          torch.from_numpy(weight).to(device), torch.from_numpy(arrays['bias']).to(device)]


def torchvision_op(x, offset, mask, weight, bias):
  """torchvision's deform_conv2d with the arguments of `torch_op_args` (3x3, padding 1)."""
  import torchvision  # pylint: disable=import-outside-toplevel
  return torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask)


def bench_op(repeats: int, tiny: bool, torch=None, pause: float = 0.0, torch_device: str = 'cpu',
             **unused) -> Dict[str, Any]:
  """deform_conv2d against a plain 3x3 convolution of the same shape and torchvision's op."""
  s = TINY_OP_SHAPE if tiny else OP_SHAPE
  n, c, h, w = s['n'], s['c'], s['h'], s['w']
  arrays = op_arrays(s)
  args = [jnp.asarray(arrays[k]) for k in ('x', 'offsets', 'mask', 'kernel', 'bias')]
  cot_j = jnp.asarray(arrays['cot'])

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
    dev = torch_device
    t = torch_op_args(torch, arrays, dev)
    t_grad = [a.clone().requires_grad_(True) for a in t]
    t_cot = torch_peers.nchw(torch, arrays['cot'], dev)

    def tv_forward():
      with torch.inference_mode():
        torchvision_op(*t)
      torch_peers.sync(torch, dev)

    def tv_forward_backward():
      for a in t_grad:
        a.grad = None
      torchvision_op(*t_grad).backward(t_cot)
      torch_peers.sync(torch, dev)

    cases['torchvision deform_conv2d forward'] = tv_forward
    cases['torchvision deform_conv2d forward+backward'] = tv_forward_backward
    frameworks.update(dict.fromkeys(list(cases)[-2:], 'torch'))
    with torch.inference_mode():
      err = np.abs(np.transpose(torchvision_op(*t).cpu().numpy(), (0, 2, 3, 1))
                   - np.asarray(dcn_fwd(*args))).max()
    notes.append(f'max |deform_conv2d - torchvision| = {err:.1e} (forward)')

  times = harness.interleaved(cases, repeats, pause=pause)
  med = {k: float(np.median(v)) for k, v in times.items()}
  ratios = [
      harness.ratio('deform_conv2d forward / conv forward',
             med['deform_conv2d forward'] / med['conv 3x3 forward'], '<= 2'),
      harness.ratio('deform_conv2d fwd+bwd / conv fwd+bwd',
             med['deform_conv2d forward+backward'] / med['conv 3x3 forward+backward'], '<= 3')]
  if torch is not None:
    ratios.insert(0, harness.ratio('torchvision fwd+bwd / deform_conv2d fwd+bwd',
                            med['torchvision deform_conv2d forward+backward']
                            / med['deform_conv2d forward+backward'], '>= 6'))
    ratios.insert(1, harness.ratio('torchvision forward / deform_conv2d forward',
                            med['torchvision deform_conv2d forward']
                            / med['deform_conv2d forward']))
  settings = (f"deform_conv2d N={n}, C={c}->{c}, {h}x{w}, 3x3, offsets ~ N(0, {s['offset_std']:g}) "
              f"px, mask ~ U(0, 1), bias; backward = VJP w.r.t. every input; plain conv = "
              f"lax.conv_general_dilated NHWC (+ bias); float32; {harness.rounds(repeats, pause)}.")
  return dict(settings=settings, timings=harness.timing_rows(times, frameworks), ratios=ratios,
              notes=notes)
