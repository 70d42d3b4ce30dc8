"""MATLAB imresize: a literal transcription of MATLAB's algorithm as the oracle, plus properties."""
import math

import numpy as np
import pytest
import skimage.data

from ssen_jax.data import imresize as ir
from ssen_jax.ops.resize import cubic_kernel


def _matlab_contributions(in_len, out_len, scale):
  """MATLAB's `contributions` transcribed line by line (1-based indices, `aux` mirror array)."""
  kernel_width = 4.0
  h = lambda x: cubic_kernel(x)
  if scale < 1:
    h = lambda x: scale * cubic_kernel(scale * x)
    kernel_width = kernel_width / scale
  weights, indices = [], []
  aux = list(range(1, in_len + 1)) + list(range(in_len, 0, -1))
  for x in range(1, out_len + 1):
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = math.floor(u - kernel_width / 2)
    p = math.ceil(kernel_width) + 2
    idx = [left + k for k in range(p)]
    w = np.array([float(h(u - i)) for i in idx])
    weights.append(w / w.sum())
    indices.append([aux[(i - 1) % len(aux)] - 1 for i in idx])
  return weights, indices


def _matlab_resize_axis(img, axis, scale, is_uint8):
  in_len = img.shape[axis]
  out_len = math.ceil(in_len * scale)
  weights, indices = _matlab_contributions(in_len, out_len, scale)
  moved = np.moveaxis(img, axis, 0)
  out = np.stack([sum(w * moved[i] for w, i in zip(ws, ids)) for ws, ids in zip(weights, indices)])
  out = np.moveaxis(out, 0, axis)
  if is_uint8:
    out = np.clip(np.floor(out + 0.5), 0, 255)
  return out


def _matlab_imresize(img, scale):
  is_uint8 = img.dtype == np.uint8
  out = img.astype(np.float64)
  for axis in (0, 1):
    out = _matlab_resize_axis(out, axis, scale, is_uint8)
  return out.astype(np.uint8) if is_uint8 else out


@pytest.mark.parametrize('shape,scale', [((17, 23, 3), 0.25), ((16, 12), 4), ((9, 14, 2), 0.5),
                                         ((11, 7, 3), 1 / 3), ((5, 6, 1), 2.5), ((3, 4), 0.25)])
def test_float_matches_matlab_transcription(shape, scale):
  img = np.random.default_rng(0).normal(size=shape)
  out = ir.imresize(img, scale)
  assert out.dtype == np.float64
  assert out.shape[:2] == (math.ceil(shape[0] * scale), math.ceil(shape[1] * scale))
  np.testing.assert_allclose(out, _matlab_imresize(img, scale), atol=1e-12)


@pytest.mark.parametrize('scale', [0.25, 4])
def test_uint8_rounds_after_each_axis_like_matlab(scale):
  img = skimage.data.astronaut()[100:164, 200:260]
  if scale > 1:
    img = img[:16, :15]
  out = ir.imresize(img, scale)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, _matlab_imresize(img, scale))
  # Rounding only once at the end differs somewhere: the intermediate rounding is real.
  once = ir.round_uint8(ir.imresize(img.astype(np.float64), scale))
  assert np.any(once != out) and np.max(np.abs(once.astype(int) - out)) <= 1


def test_sampling_grid_reproduces_ramps_in_the_interior():
  # Keys' cubic reproduces linear functions, so the output is the ramp evaluated at MATLAB's
  # sample positions u = x / s + (1 - 1 / s) / 2 (1-based); a shifted grid would fail this.
  ramp = np.arange(1, 65, dtype=np.float64)[:, None] * np.ones((1, 3))
  down = ir.imresize(ramp, 0.5)[:, 0]
  x = np.arange(1, 33)
  np.testing.assert_allclose(down[3:-3], (2 * x - 0.5)[3:-3], atol=1e-12)
  up = ir.imresize(ramp[:16], 4)[:, 0]
  x = np.arange(1, 65)
  np.testing.assert_allclose(up[8:-8], (x / 4 + 0.375)[8:-8], atol=1e-12)


def test_weights_rows_sum_to_one_and_mirror_at_borders():
  w = ir.resize_weights(10, 3, 0.25)
  assert w.shape == (3, 10)
  np.testing.assert_allclose(w.sum(axis=1), 1, atol=1e-14)
  # u = 0.5 * (1 - 4) + 4 = 2.5 for the first output: taps left of the image fold back onto
  # samples 1, 2, ... (0-based 0, 1), which therefore carry extra weight.
  assert w[0, 0] > w[0, 3] > 0
  np.testing.assert_array_equal(ir.resize_weights(8, 8, 1.0), np.eye(8))


def test_constant_image_stays_constant_and_identity_scale():
  img = np.full((21, 13, 3), 77, np.uint8)
  np.testing.assert_array_equal(ir.imresize(img, 0.25), np.full((6, 4, 3), 77, np.uint8))
  rgb = skimage.data.chelsea()[:40, :40]
  np.testing.assert_array_equal(ir.imresize(rgb, 1), rgb)


def test_rejects_bad_input():
  with pytest.raises(ValueError):
    ir.imresize(np.zeros((2, 3, 4, 5)), 0.5)
  with pytest.raises(TypeError):
    ir.imresize(np.zeros((4, 4), np.int32), 0.5)
