"""`ssen_jax.ops.deform_conv2d` against `torchvision.ops.deform_conv2d`: forward and gradients."""
import dataclasses
import functools
import re
from typing import Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from ssen_jax import ops
from ssen_jax.ops import deform_conv

FWD_TOL = 1e-5  # max |jax - torch| <= FWD_TOL * (1 + max |torch|), float32.
GRAD_TOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  n: int = 1
  c: int = 4
  h: int = 7
  w: int = 6
  o: int = 3
  kh: int = 3
  kw: int = 3
  stride: Tuple[int, int] = (1, 1)
  padding: Tuple[Tuple[int, int], Tuple[int, int]] = ((1, 1), (1, 1))
  dilation: Tuple[int, int] = (1, 1)
  groups: int = 1
  bias: bool = True
  mask: bool = True
  offset_std: float = 3.0  # Large enough that many samples leave the image.
  # None: N(0, offset_std²) offsets; 'integer': integer and half-integer offsets; 'boundary':
  # every sample exactly at y in {-1, 0, H-1, H} and x in {-1, 0, W-1, W}.
  exact: Optional[str] = None


CASES = [
    Case('basic', n=2, c=4, h=7, w=6, o=5),
    Case('stride2', c=4, h=9, w=8, stride=(2, 2), bias=False),
    Case('dilation2_nomask', c=3, h=8, w=7, o=4, padding=((2, 2), (2, 2)), dilation=(2, 2),
         mask=False),
    Case('groups2', n=2, c=4, h=6, w=7, o=4, groups=2),
    Case('1x1', c=4, h=5, w=6, kh=1, kw=1, padding=((0, 0), (0, 0)), groups=2),
    Case('3x1', c=2, h=6, w=5, kh=3, kw=1, padding=((1, 1), (0, 0)), bias=False),
    Case('asym_pad_stride2', c=3, h=6, w=6, o=2, stride=(2, 1), padding=((0, 2), (1, 0)),
         offset_std=2.0),
    Case('all', n=2, c=4, h=9, w=7, o=3, stride=(2, 2), padding=((2, 2), (2, 2)),
         dilation=(2, 2), groups=2, mask=False),
    Case('integer_offsets', c=3, h=5, w=4, exact='integer'),
    Case('integer_offsets_1x1', c=2, h=4, w=5, kh=1, kw=1, padding=((0, 0), (0, 0)),
         exact='integer'),
    Case('boundary', n=2, c=3, h=5, w=4, o=2, exact='boundary'),
    Case('boundary_groups2_nomask', c=4, h=4, w=4, groups=2, mask=False, exact='boundary'),
]


def _out_size(size, k, s, pad, d):
  return (size + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


def _make_inputs(case: Case, seed: int):
  rng = np.random.default_rng(seed)
  ho = _out_size(case.h, case.kh, case.stride[0], case.padding[0], case.dilation[0])
  wo = _out_size(case.w, case.kw, case.stride[1], case.padding[1], case.dilation[1])
  taps = case.kh * case.kw
  x = rng.standard_normal((case.n, case.h, case.w, case.c)).astype(np.float32)
  kernel = (rng.standard_normal((case.kh, case.kw, case.c, case.o)) * 0.3).astype(np.float32)
  bias = rng.standard_normal(case.o).astype(np.float32) if case.bias else None
  mask = (rng.random((case.n, ho, wo, case.groups * taps)).astype(np.float32)
          if case.mask else None)
  off_shape = (case.n, ho, wo, case.groups, taps, 2)
  if case.exact is None:
    offsets = rng.normal(0.0, case.offset_std, off_shape)
  elif case.exact == 'integer':
    offsets = rng.integers(-3, 4, off_shape) + rng.choice([0.0, 0.5], off_shape)
  else:  # Sample positions exactly on -1, 0, H-1, H (and the same for x).
    base_y = (np.arange(ho)[:, None] * case.stride[0] - case.padding[0][0]
              + (np.arange(case.kh) * case.dilation[0]).repeat(case.kw)[None, :])  # (Ho, K)
    base_x = (np.arange(wo)[:, None] * case.stride[1] - case.padding[1][0]
              + np.tile(np.arange(case.kw) * case.dilation[1], case.kh)[None, :])  # (Wo, K)
    ty = rng.choice([-1, 0, case.h - 1, case.h], off_shape[:-1])
    tx = rng.choice([-1, 0, case.w - 1, case.w], off_shape[:-1])
    offsets = np.stack([ty - base_y[None, :, None, None, :],
                        tx - base_x[None, None, :, None, :]], axis=-1)
  offsets = offsets.reshape(case.n, ho, wo, -1).astype(np.float32)
  cot = rng.standard_normal((case.n, ho, wo, case.o)).astype(np.float32)
  return x, offsets, mask, kernel, bias, cot


def _torch_reference(case: Case, x, offsets, mask, kernel, bias, cot):
  """torchvision forward and input/offset/mask/kernel/bias gradients, returned NHWC."""
  (pt, pb), (pl, pr) = case.padding
  t = lambda a: torch.tensor(a, requires_grad=True)  # noqa: E731
  tx = t(np.transpose(x, (0, 3, 1, 2)))
  toff = t(np.transpose(offsets, (0, 3, 1, 2)))
  tmask = t(np.transpose(mask, (0, 3, 1, 2))) if mask is not None else None
  tw = t(np.transpose(kernel, (3, 2, 0, 1)))
  tb = t(bias) if bias is not None else None
  if pt == pb and pl == pr:
    inp, pad = tx, (pt, pl)
  else:  # torchvision pads symmetrically: pad the image with zeros explicitly instead.
    inp, pad = torch.nn.functional.pad(tx, (pl, pr, pt, pb)), (0, 0)
  out = torchvision.ops.deform_conv2d(inp, toff, tw, tb, stride=case.stride, padding=pad,
                                      dilation=case.dilation, mask=tmask)
  out.backward(torch.tensor(np.transpose(cot, (0, 3, 1, 2))))
  nhwc = lambda a: np.transpose(a.detach().numpy(), (0, 2, 3, 1))  # noqa: E731
  grads = {'inputs': nhwc(tx.grad), 'offsets': nhwc(toff.grad),
           'kernel': np.transpose(tw.grad.numpy(), (2, 3, 1, 0))}
  if tmask is not None:
    grads['mask'] = nhwc(tmask.grad)
  if tb is not None:
    grads['bias'] = tb.grad.numpy()
  return nhwc(out), grads


def _jax(case: Case, x, offsets, mask, kernel, bias, cot):
  fn = functools.partial(ops.deform_conv2d, strides=case.stride, padding=case.padding,
                         dilation=case.dilation, offset_groups=case.groups)
  args = {'inputs': x, 'offsets': offsets, 'kernel': kernel}
  if mask is not None:
    args['mask'] = mask
  if bias is not None:
    args['bias'] = bias

  def f(a):
    return fn(a['inputs'], a['offsets'], a.get('mask'), a['kernel'], a.get('bias'))

  @jax.jit  # One compilation per case rather than one per primitive.
  def forward_and_vjp(a, cot):
    out, vjp = jax.vjp(f, a)
    return out, vjp(cot)[0]

  out, grads = forward_and_vjp(args, cot)
  return np.asarray(out), {k: np.asarray(v) for k, v in grads.items()}


def _err(a, b):
  return float(np.abs(a - b).max()) if a.size else 0.0


@pytest.mark.parametrize('case', CASES, ids=lambda c: c.name)
def test_matches_torchvision(case):
  worst = {}
  for seed in range(2):
    data = _make_inputs(case, seed)
    out_t, grads_t = _torch_reference(case, *data)
    out_j, grads_j = _jax(case, *data)
    assert out_j.shape == out_t.shape
    assert set(grads_j) == set(grads_t)
    scale = 1 + np.abs(out_t).max()
    err = _err(out_j, out_t)
    assert err <= FWD_TOL * scale, f'forward: max abs error {err}'
    worst['forward'] = max(worst.get('forward', 0.0), err)
    for k, g_t in grads_t.items():
      err = _err(grads_j[k], g_t)
      assert err <= GRAD_TOL * (1 + np.abs(g_t).max()), f'd/d{k}: max abs error {err}'
      worst[k] = max(worst.get(k, 0.0), err)
  print(f'\n[deform_conv2d {case.name}] max abs error: '
        + ', '.join(f'{k} {v:.2e}' for k, v in worst.items()))


FORMULATION_CASES = [c for c in CASES if c.name in ('basic', 'groups2', 'stride2', 'boundary')]
FORMULATION_CASES.append(Case('groups2_narrow_out', n=2, c=8, h=6, w=7, o=3, groups=2))


@pytest.mark.parametrize('transform_first', [True, False], ids=['transform_first', 'im2col'])
@pytest.mark.parametrize('case', FORMULATION_CASES, ids=lambda c: c.name)
def test_formulations_and_blocks_match_torchvision(case, transform_first, monkeypatch):
  """Both formulations, with the backward pass (and the im2col forward) split into many blocks."""
  monkeypatch.setattr(deform_conv, '_transform_first', lambda *_: transform_first)
  monkeypatch.setattr(deform_conv, 'BACKWARD_BLOCK', 7)  # Positions are not a multiple of 7.
  monkeypatch.setattr(deform_conv, 'FORWARD_MAX_BYTES', 1000)
  data = _make_inputs(case, 0)
  out_t, grads_t = _torch_reference(case, *data)
  out_j, grads_j = _jax(case, *data)
  assert _err(out_j, out_t) <= FWD_TOL * (1 + np.abs(out_t).max())
  for k, g_t in grads_t.items():
    assert _err(grads_j[k], g_t) <= GRAD_TOL * (1 + np.abs(g_t).max()), k


def _fused_computations(hlo: str):
  """The bodies of the fused computations of an optimised HLO module, by name."""
  return dict(re.findall(r'^(%fused_computation[\w.]*) .*?\{\n(.*?)\n\}', hlo, re.M | re.S))


@pytest.mark.parametrize('transform_first', [True, False], ids=['transform_first', 'im2col'])
def test_sampling_is_not_recomputed_per_channel(transform_first, monkeypatch):
  """No gather shares a fusion with the sampling arithmetic (which it would redo per channel)."""
  monkeypatch.setattr(deform_conv, '_transform_first', lambda *_: transform_first)
  case = Case('perf', n=2, c=16, h=12, w=10, o=16)
  x, offsets, mask, kernel, bias, cot = _make_inputs(case, 0)

  def forward_backward(*a):
    out, vjp = jax.vjp(ops.deform_conv2d, *a)
    return out, vjp(cot)

  hlo = jax.jit(forward_backward).lower(x, offsets, mask, kernel, bias).compile().as_text()
  bodies = [b for b in _fused_computations(hlo).values() if ' gather(' in b]
  assert bodies
  for body in bodies:
    assert ' floor(' not in body and ' clamp(' not in body


def test_batch_sharded_over_devices_needs_no_gathers():
  """Data parallelism: each device samples its own images (no all-gather, no permutes)."""
  if jax.device_count() < 2:
    pytest.skip('needs several devices (conftest simulates 8)')
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  case = Case('sharded', n=jax.device_count(), c=8, h=12, w=10, o=8)
  x, offsets, mask, kernel, bias, _ = _make_inputs(case, 0)

  def loss(x, offsets, mask, kernel):
    return jnp.sum(ops.deform_conv2d(x, offsets, mask, kernel) ** 2)

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)),
                 in_shardings=(batch, batch, batch, replicated))
  hlo = step.lower(x, offsets, mask, kernel).compile().as_text()
  assert 'all-gather' not in hlo and 'collective-permute' not in hlo and 'all-to-all' not in hlo


def test_samples_leave_the_image():
  """The random cases really exercise outside and partially outside samples."""
  case = CASES[0]
  _, offsets, *_ = _make_inputs(case, 0)
  dy = offsets.reshape(-1, 2)[:, 0]
  assert (np.abs(dy) > case.h).mean() > 0.01


def test_boundary_case_hits_every_edge():
  case = [c for c in CASES if c.name == 'boundary'][0]
  _, offsets, *_ = _make_inputs(case, 0)
  ho, wo = 5, 4
  base_y = (np.arange(ho)[:, None] - 1 + np.arange(3).repeat(3)[None, :])
  y = offsets.reshape(case.n, ho, wo, 9, 2)[..., 0] + base_y[None, :, None, :]
  assert set(np.unique(y)) == {-1.0, 0.0, case.h - 1.0, float(case.h)}


def test_mask_is_multiplied_as_given():
  """No sigmoid inside: a mask of 2 doubles the (bias-free) output."""
  case = CASES[0]
  x, offsets, mask, kernel, _, _ = _make_inputs(case, 0)
  conv = jax.jit(ops.deform_conv2d)
  one = conv(x, offsets, np.ones_like(mask), kernel)
  two = conv(x, offsets, 2 * np.ones_like(mask), kernel)
  none = conv(x, offsets, None, kernel)
  np.testing.assert_allclose(two, 2 * one, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(none, one)


def test_zero_offsets_equal_plain_convolution():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 6, 5, 3)).astype(np.float32)
  kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
  out = ops.deform_conv2d(x, np.zeros((1, 3, 3, 18), np.float32), None, kernel, strides=2)
  ref = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize('change, message', [
    (dict(offsets=(1, 4, 4, 17)), 'offsets must have shape'),
    (dict(offsets=(1, 5, 4, 18)), 'offsets must have shape'),
    (dict(mask=(1, 4, 4, 18)), 'mask must have shape'),
    (dict(kernel=(3, 3, 2, 3)), 'input channels'),
    (dict(groups=3), 'divisible by offset_groups'),
])
def test_shape_errors(change, message):
  shapes = dict(x=(1, 4, 4, 4), offsets=(1, 4, 4, 18), mask=(1, 4, 4, 9), kernel=(3, 3, 4, 3))
  groups = change.pop('groups', 1)
  if groups != 1:
    shapes['offsets'] = (1, 4, 4, 18 * groups)
    shapes['mask'] = (1, 4, 4, 9 * groups)
  shapes.update(change)
  z = {k: jnp.zeros(v) for k, v in shapes.items()}
  with pytest.raises(ValueError, match=message):
    ops.deform_conv2d(z['x'], z['offsets'], z['mask'], z['kernel'], offset_groups=groups)


def test_jit_matches_eager_and_traces_once():
  case = CASES[1]  # stride 2
  x, offsets, mask, kernel, bias, _ = _make_inputs(case, 0)
  kernel_args = dict(strides=case.stride, padding=case.padding)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(x, offsets, mask, kernel):
    return ops.deform_conv2d(x, offsets, mask, kernel, **kernel_args)

  eager = ops.deform_conv2d(x, offsets, mask, kernel, **kernel_args)
  np.testing.assert_allclose(f(x, offsets, mask, kernel), eager, atol=1e-6)
  x2, offsets2, mask2, kernel2, _, _ = _make_inputs(case, 1)
  np.testing.assert_allclose(f(x2, offsets2, mask2, kernel2),
                             ops.deform_conv2d(x2, offsets2, mask2, kernel2, **kernel_args),
                             atol=1e-6)
  chex.clear_trace_counter()
