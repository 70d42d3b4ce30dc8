"""Modulated deformable convolution (DCNv2), channels last.

`deform_conv2d` computes exactly what `torchvision.ops.deform_conv2d` computes, with channels moved
last (DESIGN.md §2):

  Y(p) = sum_k w_k · X(p + p_k + Δp_k) · Δm_k                                   (paper, Eq. 1)

X(y, x) is bilinear interpolation with zero padding: a sample is zero unless -1 < y < H and
-1 < x < W, and inside that box every corner that falls outside the image contributes zero.

How it is computed (one gather, no Python loop over pixels or taps):
  1. The zero-padded input is rearranged once into a "quad" tensor whose entry (y, x) holds the 2x2
     neighbourhood X[y..y+1, x..x+1] of the padded image, so the four bilinear corners of every
     sample come from a single gather of 4·C/G contiguous values.
  2. Samples outside the box get zero weight and have their (otherwise arbitrary) corner indices
     clamped into range; corners outside the image land on the zero padding. JAX gathers clamp
     out-of-range indices silently, so relying on them would be wrong: here every index is in range
     by construction, and the scatter-add of the backward pass therefore sends the gradient of an
     outside corner into the padding, where the VJP of `jnp.pad` drops it.
  3. The bilinear weights, the validity mask and the modulation mask are folded into one weight per
     corner; the weighted corners form im2col columns (N, Ho, Wo, K·C) and one matmul with the kernel
     gives the output.
Gradients come from JAX's autodiff of these steps; they match torchvision's hand-written kernels
(tested, including samples exactly on integer and boundary coordinates).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

Padding = Sequence[Tuple[int, int]]


def _pair(v) -> Tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  return tuple(v)  # type: ignore[return-value]


def output_size(size: int, kernel: int, stride: int, pad: Tuple[int, int], dilation: int) -> int:
  """Spatial output length of a convolution, as in torchvision."""
  return (size + pad[0] + pad[1] - dilation * (kernel - 1) - 1) // stride + 1


def _quad(inputs: jax.Array, groups: int) -> jax.Array:
  """2x2 neighbourhoods of the zero-padded input, flattened for a per-group gather.

  Args:
    inputs: (N, H, W, C).
    groups: offset groups G; C must be divisible by G.

  Returns:
    (N, G, (H+1)*(W+1), 4*C/G): entry [n, g, (y+1)*(W+1) + (x+1)] holds, for y, x in [-1, H-1] x
    [-1, W-1], the corners (y, x), (y, x+1), (y+1, x), (y+1, x+1) of group g (zero outside the image).
  """
  n, h, w, c = inputs.shape
  padded = jnp.pad(inputs, ((0, 0), (1, 1), (1, 1), (0, 0)))
  corners = jnp.stack([padded[:, :-1, :-1], padded[:, :-1, 1:],
                       padded[:, 1:, :-1], padded[:, 1:, 1:]], axis=3)  # (N, H+1, W+1, 4, C)
  corners = corners.reshape(n, h + 1, w + 1, 4, groups, c // groups)
  corners = jnp.transpose(corners, (0, 4, 1, 2, 3, 5))
  return corners.reshape(n, groups, (h + 1) * (w + 1), 4 * (c // groups))


def deform_conv2d(inputs: jax.Array,
                  offsets: jax.Array,
                  mask: Optional[jax.Array],
                  kernel: jax.Array,
                  bias: Optional[jax.Array] = None,
                  *,
                  strides=(1, 1),
                  padding: Padding = ((1, 1), (1, 1)),
                  dilation=(1, 1),
                  offset_groups: int = 1) -> jax.Array:
  """Modulated deformable 2-D convolution with torchvision's semantics, NHWC.

  Args:
    inputs: (N, H, W, C).
    offsets: (N, Ho, Wo, G*kh*kw*2), laid out [group][tap = i*kw + j][dy, dx]
      (`offsets_torch.permute(0, 2, 3, 1)`).
    mask: (N, Ho, Wo, G*kh*kw) modulation, multiplied as given (no sigmoid here), or None for 1.
    kernel: (kh, kw, C, O).
    bias: (O,) or None.
    strides: (sh, sw) or an int.
    padding: ((top, bottom), (left, right)) zero padding of the sampling grid, or an int.
    dilation: (dh, dw) or an int.
    offset_groups: G; C must be divisible by G.

  Returns:
    (N, Ho, Wo, O), in the result dtype of `inputs` and `kernel`.
  """
  n, h, w, c = inputs.shape
  kh, kw, kc, out_ch = kernel.shape
  sh, sw = _pair(strides)
  dh, dw = _pair(dilation)
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  (pt, pb), (pl, pr) = padding
  g = offset_groups
  taps = kh * kw
  if kc != c:
    raise ValueError(f'kernel expects {kc} input channels, inputs have {c}')
  if c % g:
    raise ValueError(f'channels ({c}) must be divisible by offset_groups ({g})')
  ho = output_size(h, kh, sh, (pt, pb), dh)
  wo = output_size(w, kw, sw, (pl, pr), dw)
  if offsets.shape != (n, ho, wo, g * taps * 2):
    raise ValueError(f'offsets must have shape {(n, ho, wo, g * taps * 2)}, got {offsets.shape}')
  if mask is not None and mask.shape != (n, ho, wo, g * taps):
    raise ValueError(f'mask must have shape {(n, ho, wo, g * taps)}, got {mask.shape}')

  # Sampling coordinates stay float32 even when the features are bf16 (DESIGN.md §1).
  coord_dtype = jnp.promote_types(offsets.dtype, jnp.float32)
  offsets = offsets.astype(coord_dtype).reshape(n, ho, wo, g, taps, 2)
  tap_y = (jnp.arange(kh) * dh).repeat(kw)  # (K,): i*dh for tap i*kw + j
  tap_x = jnp.tile(jnp.arange(kw) * dw, kh)
  grid_y = (jnp.arange(ho) * sh - pt)[:, None] + tap_y[None, :]  # (Ho, K)
  grid_x = (jnp.arange(wo) * sw - pl)[:, None] + tap_x[None, :]  # (Wo, K)
  y = grid_y[None, :, None, None, :].astype(coord_dtype) + offsets[..., 0]  # (N, Ho, Wo, G, K)
  x = grid_x[None, None, :, None, :].astype(coord_dtype) + offsets[..., 1]

  # torchvision's forward is zero unless -1 < y < H; at y == -1 exactly our bilinear weights already
  # give zero (all weight on the padding row), and keeping that sample lets the offset gradient
  # match torchvision's, which there is v(0, ·) - 0 rather than 0.
  inside = (y >= -1) & (y < h) & (x >= -1) & (x < w)
  y0 = jnp.floor(y)
  x0 = jnp.floor(x)
  ly = y - y0  # Gradients w.r.t. offsets flow through these fractions only.
  lx = x - x0
  hy = 1 - ly
  hx = 1 - lx
  weights = jnp.stack([hy * hx, hy * lx, ly * hx, ly * lx], axis=-1)  # (N, Ho, Wo, G, K, 4)
  scale = inside.astype(coord_dtype)
  if mask is not None:
    scale = scale * mask.astype(coord_dtype).reshape(n, ho, wo, g, taps)
  weights = weights * scale[..., None]

  # Inside the box y0 is in [-1, H-1]; outside it the clamped index is harmless (weight 0).
  iy = jnp.clip(y0, -1, h - 1).astype(jnp.int32) + 1
  ix = jnp.clip(x0, -1, w - 1).astype(jnp.int32) + 1
  flat = iy * (w + 1) + ix  # (N, Ho, Wo, G, K)
  flat = jnp.transpose(flat, (0, 3, 1, 2, 4)).reshape(n, g, ho * wo * taps, 1)

  cg = c // g
  quad = _quad(inputs, g)  # (N, G, (H+1)(W+1), 4*C/G)
  sampled = jnp.take_along_axis(quad, flat, axis=2, mode='promise_in_bounds')
  sampled = sampled.reshape(n, g, ho, wo, taps, 4, cg)
  weights = jnp.transpose(weights, (0, 3, 1, 2, 4, 5)).astype(sampled.dtype)
  cols = jnp.einsum('nghwkqc,nghwkq->nhwkgc', sampled, weights)  # (N, Ho, Wo, K, G, C/G)
  cols = cols.reshape(n, ho, wo, taps * c)
  out = jnp.dot(cols, kernel.reshape(taps * c, out_ch).astype(cols.dtype))
  if bias is not None:
    out = out + bias.astype(out.dtype)
  return out
