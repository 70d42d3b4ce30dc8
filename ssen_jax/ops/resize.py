"""Fixed-stencil resampling used inside the networks (all sizes static, no dense resize matrices).

`jax.image.resize` builds a dense (out, in) weight matrix per axis; at 4096 output pixels per side
that alone is tens of GFLOPs. The networks only ever need three fixed-ratio operations, and each is
a handful of shifted slices:

* `bicubic_upsample`: MATLAB's `imresize(x, scale, 'bicubic')` for an integer upscaling factor —
  Keys cubic with a = -0.5, half-pixel centres, symmetric (mirror) boundary. It is the global skip of
  the RefSR network (paper Sec. 3.4), so an untrained network starts at exactly the bicubic baseline
  that the evaluation tables report (docs/conventions.md: LR is made with the same kernel).
* `upsample2x`: the dynamic offset estimator's upsampling (the paper is silent: docs/choices.md).
  Our stride-2 convolutions (3x3, padding 1) centre output j on input 2j, so the inverse places
  low-resolution sample j at high-resolution position 2j: out[2j] = x[j], out[2j+1] = (x[j] + x[j+1]) / 2, the last
  sample repeated past the edge. The result is cut to the skip connection's size (2h or 2h-1), so
  every size down to 1 works and no padding is ever blended into the crop a user gets back.
* `pixel_shuffle`: sub-pixel convolution with PyTorch's channel order.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def cubic_kernel(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  """Keys cubic convolution kernel (MATLAB's `cubic`, a = -0.5): the one of the package.

  Used by the networks' bicubic skip (`bicubic_upsample`) and by `ssen_jax.data.imresize`.

  Args:
    x: array of any shape, distances in pixels.
    a: the Keys parameter; MATLAB uses -0.5.

  Returns:
    Kernel values, same shape as `x`, float64.
  """
  absx = np.abs(np.asarray(x, np.float64))
  absx2 = absx * absx
  absx3 = absx2 * absx
  near = ((a + 2) * absx3 - (a + 3) * absx2 + 1) * (absx <= 1)
  far = (a * absx3 - 5 * a * absx2 + 8 * a * absx - 4 * a) * ((absx > 1) & (absx <= 2))
  return near + far


def bicubic_phase_weights(scale: int) -> np.ndarray:
  """(scale, 4) taps of MATLAB bicubic upsampling by an integer factor.

  Output pixel i = scale*j + p sits at input coordinate j + (p + 0.5)/scale - 0.5; its four taps are
  inputs floor(that) - 1 ... floor(that) + 2.
  """
  weights = np.zeros((scale, 4))
  for p in range(scale):
    pos = (p + 0.5) / scale - 0.5
    base = np.floor(pos)
    taps = base + np.arange(-1, 3)
    weights[p] = cubic_kernel(pos - taps)
    weights[p] /= weights[p].sum()
  return weights


def _upsample_axis(x: jax.Array, scale: int, axis: int) -> jax.Array:
  """Bicubic (MATLAB) upsampling of one spatial axis (1 or 2) of an NHWC array."""
  length = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (2, 2)
  padded = jnp.pad(x, pad, mode='symmetric')  # MATLAB: index -1 -> 0, -2 -> 1.
  weights = bicubic_phase_weights(scale)
  phases = []
  for p in range(scale):
    base = int(np.floor((p + 0.5) / scale - 0.5))  # -1 or 0
    acc = 0.0
    for t in range(4):
      start = base - 1 + t + 2  # Offset into the padded axis.
      acc = acc + float(weights[p, t]) * jax.lax.slice_in_dim(padded, start, start + length,
                                                                axis=axis)
    phases.append(acc)
  out = jnp.stack(phases, axis=axis + 1)
  shape = list(x.shape)
  shape[axis] = length * scale
  return out.reshape(shape)


def bicubic_upsample(x: jax.Array, scale: int) -> jax.Array:
  """MATLAB-compatible bicubic upsampling by an integer factor.

  Args:
    x: (N, H, W, C).
    scale: integer factor >= 1.

  Returns:
    (N, scale*H, scale*W, C), not clipped.
  """
  if scale == 1:
    return x
  return _upsample_axis(_upsample_axis(x, scale, 1), scale, 2)


def _upsample2x_axis(x: jax.Array, out_len: int, axis: int) -> jax.Array:
  last = jax.lax.slice_in_dim(x, x.shape[axis] - 1, x.shape[axis], axis=axis)
  nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, x.shape[axis], axis=axis), last], axis=axis)
  out = jnp.stack([x, 0.5 * (x + nxt)], axis=axis + 1)
  shape = list(x.shape)
  shape[axis] = 2 * x.shape[axis]
  return jax.lax.slice_in_dim(out.reshape(shape), 0, out_len, axis=axis)


def upsample2x(x: jax.Array, height: int, width: int) -> jax.Array:
  """Linear 2x upsampling aligned with stride-2 convolutions, cut to (height, width).

  Args:
    x: (N, h, w, C) with h = ceil(height / 2), w = ceil(width / 2).
    height: target height (2h or 2h - 1).
    width: target width (2w or 2w - 1).

  Returns:
    (N, height, width, C).
  """
  if x.shape[1] != -(-height // 2) or x.shape[2] != -(-width // 2):
    raise ValueError(f'cannot upsample {x.shape[1:3]} to {(height, width)}')
  return _upsample2x_axis(_upsample2x_axis(x, height, 1), width, 2)


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
  """(N, H, W, C*r*r) -> (N, H*r, W*r, C), channel c*r*r + i*r + j going to (i, j) as in PyTorch."""
  n, h, w, c = x.shape
  c_out = c // (factor * factor)
  x = x.reshape(n, h, w, c_out, factor, factor)
  x = jnp.transpose(x, (0, 1, 4, 2, 5, 3))
  return x.reshape(n, h * factor, w * factor, c_out)
