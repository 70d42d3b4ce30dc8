"""Networks: output sizes for odd inputs, resampling operators, full-size parameter counts."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssen_jax.interop import torch_reference as tm
from ssen_jax import ops
from ssen_jax.models import RCAN, PatchDiscriminator, RefSRNet

TINY = {
    'ssen': functools.partial(RefSRNet, features=8, num_extract_blocks=1, num_recon_blocks=1,
                              num_dcn_layers=2, use_ssen=True),
    'baseline': functools.partial(RefSRNet, features=8, num_extract_blocks=1, num_recon_blocks=1,
                                  use_ssen=False),
    'selfsim': functools.partial(RCAN, features=8, num_groups=1, num_blocks=1, reduction=4,
                                 num_dcn_layers=1, use_ssen=True),
    'rcan': functools.partial(RCAN, features=8, num_groups=1, num_blocks=1, reduction=4),
}

TINY_TORCH = {'ssen': dict(features=8, num_extract_blocks=1, num_recon_blocks=1, num_dcn_layers=2)}

# Full-size models (docs/choices.md).
FULL_REFSR = dict(features=64, num_extract_blocks=5, num_recon_blocks=16, num_dcn_layers=3)
FULL_RCAN = dict(features=64, num_groups=10, num_blocks=20, reduction=16, num_dcn_layers=3)


# --------------------------------------------------------------------------------------------------
# Output sizes.


@pytest.mark.parametrize('variant', list(TINY))
@pytest.mark.parametrize('size', [(1, 1), (7, 13), (3, 2), (9, 5)])
def test_output_is_exactly_scale_times_input(variant, size):
  h, w = size
  model = TINY[variant]()
  lr = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
  ref = jax.ShapeDtypeStruct((2, 4 * h, 4 * w, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), lr, ref)
  out = jax.eval_shape(model.apply, variables, lr, ref)
  assert out.shape == (2, 4 * h, 4 * w, 3)
  assert out.dtype == jnp.float32


def test_untrained_refsr_runs_on_odd_sizes():
  rng = np.random.default_rng(0)
  model = TINY['ssen']()
  lr = rng.random((1, 3, 5, 3), dtype=np.float32)
  ref = rng.random((1, 12, 20, 3), dtype=np.float32)
  # A threefry key makes this jitted init take ~20 s to compile on 2 CPU cores; rbg takes ~4 s.
  params = jax.jit(model.init)(jax.random.key(0, impl='unsafe_rbg'), lr, ref)
  sr, offsets, masks = jax.jit(functools.partial(model.apply, return_offsets=True))(
      params, lr, ref)
  assert sr.shape == (1, 12, 20, 3)
  assert np.all(np.isfinite(sr))
  # The zero-initialised output convolution makes an untrained network exactly bicubic...
  np.testing.assert_allclose(sr, ops.bicubic_upsample(lr, 4), atol=1e-6)  # jit vs eager rounding.
  # ...and the PyTorch reference starts the same way.
  with torch.no_grad():
    sr_torch = tm.to_nhwc(tm.build('ssen', **TINY_TORCH['ssen'])(tm.to_nchw(lr), tm.to_nchw(ref)))
  np.testing.assert_allclose(sr_torch, sr, atol=1e-6)
  # Untrained SSEN samples the regular grid with mask 0.5 (zero-initialised offset convs).
  assert len(offsets) == 2 and len(masks) == 2
  np.testing.assert_array_equal(offsets[0], 0.0)
  np.testing.assert_array_equal(masks[1], 0.5)


def test_refsr_rejects_bad_reference():
  model = TINY['ssen']()
  lr = jnp.zeros((1, 4, 4, 3))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), lr, jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match='reference must be'):
    jax.eval_shape(model.apply, params, lr, jnp.zeros((1, 16, 12, 3)))
  with pytest.raises(ValueError, match='needs a reference'):
    jax.eval_shape(model.apply, params, lr)


def test_discriminator_output_shape():
  d = PatchDiscriminator(features=4)
  x = jax.ShapeDtypeStruct((2, 64, 48, 3), jnp.float32)
  out = jax.eval_shape(d.apply, jax.eval_shape(d.init, jax.random.PRNGKey(0), x), x)
  # 4x4 convs, padding 1: stride 2 halves, stride 1 loses one pixel.
  assert out.shape == (2, 6, 4, 1)


# --------------------------------------------------------------------------------------------------
# Resampling.


def _matlab_cubic(x):
  """MATLAB's `cubic` from imresize.m (a = -0.5)."""
  ax = np.abs(x)
  return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
          + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((1 < ax) & (ax <= 2)))


def _matlab_resize_axis(x, scale, axis):
  """imresize.m's `contributions` + `resizeAlongDim`, 1-based as in MATLAB, for scale >= 1."""
  in_len = x.shape[axis]
  out_len = in_len * scale
  kernel_width = 4.0
  u = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1 / scale)
  left = np.floor(u - kernel_width / 2)
  taps = int(np.ceil(kernel_width)) + 2
  indices = left[:, None] + np.arange(taps)[None, :]
  weights = _matlab_cubic(u[:, None] - indices)
  weights /= weights.sum(axis=1, keepdims=True)
  aux = np.concatenate([np.arange(1, in_len + 1), np.arange(in_len, 0, -1)])
  indices = aux[np.mod(indices - 1, len(aux)).astype(int)] - 1  # Back to 0-based.
  x = np.moveaxis(x.astype(np.float64), axis, 0)
  out = np.einsum('ot,ot...->o...', weights, x[indices])
  return np.moveaxis(out, 0, axis)


def matlab_imresize_up(x, scale):
  """Independent reference: MATLAB imresize(x, scale, 'bicubic') of NHWC x, integer scale."""
  return _matlab_resize_axis(_matlab_resize_axis(x, scale, 1), scale, 2)


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('size', [(1, 1), (2, 3), (5, 7), (8, 4)])
def test_bicubic_upsample_matches_matlab_formula(scale, size):
  x = np.random.default_rng(scale).random((2, *size, 3), dtype=np.float32)
  ref = matlab_imresize_up(x, scale)
  out = np.asarray(ops.bicubic_upsample(jnp.asarray(x), scale))
  out_torch = tm.to_nhwc(tm.bicubic_upsample(tm.to_nchw(x), scale))
  assert out.shape == ref.shape == (2, size[0] * scale, size[1] * scale, 3)
  err = np.abs(out - ref).max()
  print(f'\n[bicubic x{scale} {size}] jax {err:.2e}, torch ref {np.abs(out_torch - ref).max():.2e}')
  assert err <= 1e-5
  assert np.abs(out_torch - ref).max() <= 1e-5


def test_bicubic_upsample_preserves_constants_and_differs_from_keys_075():
  x = np.full((1, 3, 4, 2), 0.7, np.float32)
  np.testing.assert_allclose(ops.bicubic_upsample(x, 4), 0.7, atol=1e-6)
  ramp = np.random.default_rng(0).random((1, 6, 6, 1), dtype=np.float32)
  torch_a075 = F.interpolate(tm.to_nchw(ramp), scale_factor=4, mode='bicubic',
                             align_corners=False)
  assert np.abs(np.asarray(ops.bicubic_upsample(ramp, 4)) - tm.to_nhwc(torch_a075)).max() > 1e-3


def test_upsample2x_semantics():
  a, b, c = 1.0, 3.0, 4.0
  x = np.array([a, b, c], np.float32).reshape(1, 3, 1, 1)
  even = np.asarray(ops.upsample2x(x, 6, 1))[0, :, 0, 0]
  odd = np.asarray(ops.upsample2x(x, 5, 1))[0, :, 0, 0]
  np.testing.assert_array_equal(even, [a, (a + b) / 2, b, (b + c) / 2, c, c])
  np.testing.assert_array_equal(odd, [a, (a + b) / 2, b, (b + c) / 2, c])
  # Separable in 2-D, and sizes down to one pixel.
  img = np.random.default_rng(0).random((2, 3, 2, 4), dtype=np.float32)
  out = np.asarray(ops.upsample2x(img, 5, 4))
  narrow = np.asarray(ops.upsample2x(img, 5, 3))  # 2w - 1 is the 2w result cut.
  assert out.shape == (2, 5, 4, 4)
  np.testing.assert_array_equal(out[:, ::2, ::2], img)
  np.testing.assert_allclose(out[:, 1::2, ::2], (img[:, :-1] + img[:, 1:]) / 2, atol=1e-7)
  np.testing.assert_allclose(out[:, ::2, 1], (img[:, :, 0] + img[:, :, 1]) / 2, atol=1e-7)
  np.testing.assert_array_equal(out[:, ::2, 3], img[:, :, 1])  # The last sample repeated.
  np.testing.assert_array_equal(out[:, :, :3], narrow)
  np.testing.assert_array_equal(ops.upsample2x(np.ones((1, 1, 1, 2)), 1, 2), np.ones((1, 1, 2, 2)))
  # The torch reference agrees.
  np.testing.assert_array_equal(tm.to_nhwc(tm.upsample2x(tm.to_nchw(img), 5, 4)), out)
  with pytest.raises(ValueError, match='cannot upsample'):
    ops.upsample2x(img, 7, 4)


def test_pixel_shuffle_matches_torch():
  x = np.random.default_rng(0).random((2, 3, 5, 12), dtype=np.float32)
  ref = tm.to_nhwc(F.pixel_shuffle(tm.to_nchw(x), 2))
  np.testing.assert_array_equal(ops.pixel_shuffle(x, 2), ref)


# --------------------------------------------------------------------------------------------------
# Full-size parameter counts.


def _jax_param_count(model, *shapes):
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables['params']))


@pytest.mark.parametrize('variant, approx', [
    ('ssen', 2.83e6), ('baseline', 1.89e6), ('selfsim', 16.5e6), ('rcan', 15.6e6)])
def test_full_size_parameter_count_equals_torch_reference(variant, approx):
  full = FULL_REFSR if variant in ('ssen', 'baseline') else FULL_RCAN
  if variant in ('ssen', 'baseline'):
    model = RefSRNet(use_ssen=variant == 'ssen', **full)
  else:
    model = RCAN(use_ssen=variant == 'selfsim', **full)
  n_jax = _jax_param_count(model, (1, 8, 8, 3), (1, 32, 32, 3))
  with torch.device('meta'):  # Shapes only: no memory, no initialisation cost.
    n_torch = tm.num_params(tm.build(variant, **full))
  print(f'\n[params {variant}] jax {n_jax:,} torch {n_torch:,}')
  assert n_jax == n_torch
  assert abs(n_jax - approx) / approx < 0.02  # Sanity: the sizes this project quotes.


def test_discriminator_parameter_count_equals_torch_reference():
  n_jax = _jax_param_count(PatchDiscriminator(), (1, 64, 64, 3))
  n_torch = tm.num_params(tm.PatchDiscriminator())
  print(f'\n[params discriminator] jax {n_jax:,} torch {n_torch:,}')
  assert n_jax == n_torch


# --------------------------------------------------------------------------------------------------
# Initialisation.


def test_rcan_features_stay_bounded_through_its_full_depth_at_initialisation(set5_dir):
  """RCAN at the published depth (10 groups of 20 RCABs; 8 channels keep it cheap) on a real crop:
  the spread of the features after the last group stays within 20x of the head's. With
  lecun-normal kernels it grew ~5e5x here (and 1e8x at 64 channels, where selfsim's first update
  exploded: docs/choices.md, "Initialisation"); with PyTorch's default it is ~2-5x."""
  from PIL import Image
  from flax.traverse_util import flatten_dict
  img = np.asarray(Image.open(set5_dir / 'baby.png').convert('RGB'), np.float32) / 255
  lr = jnp.asarray(img[None, 100:124, 100:124])
  model = RCAN(features=8, num_groups=10, num_blocks=20, reduction=4)
  with jax.disable_jit():  # 200 blocks run op by op faster than they compile.
    params = model.init(jax.random.PRNGKey(0), lr)['params']
    _, state = model.apply({'params': params}, lr, capture_intermediates=True,
                           mutable=['intermediates'])
  features = flatten_dict(state['intermediates'])
  spread = [float(jnp.std(features[(name, '__call__')][0]))
            for name in ['head'] + [f'groups_{i}' for i in range(10)]]
  print('\n[rcan init] std after head, groups 0-9:', ' '.join(f'{s:.3g}' for s in spread))
  assert all(np.isfinite(spread)) and spread[0] > 0.1
  assert max(spread) < 20 * spread[0]
  # The blocks' kernels are PyTorch's default: uniform within +-1/sqrt(fan_in).
  kernel = params['groups_3']['blocks_7']['conv2']['kernel']
  bound = 1 / np.sqrt(np.prod(kernel.shape[:3]))
  assert float(jnp.max(jnp.abs(kernel))) <= bound
  assert float(jnp.std(kernel)) == pytest.approx(bound / np.sqrt(3), rel=0.1)
