"""Modulated deformable convolution (DCNv2), channels last.

`deform_conv2d` computes exactly what `torchvision.ops.deform_conv2d` computes, with channels moved
last (docs/conventions.md):

  Y(p) = sum_k w_k · X(p + p_k + Δp_k) · Δm_k                                   (paper, Eq. 1)

X(y, x) is bilinear interpolation with zero padding: a sample is zero unless -1 < y < H and
-1 < x < W, and inside that box every corner that falls outside the image contributes zero.

How it is computed. For every output position p, tap k and offset group g, the sampling step
(cheap, per sample) finds the top-left corner (y0, x0) of the sample's 2x2 neighbourhood in the
input padded by one pixel, and four weights: the bilinear weights folded with the validity box and
the modulation mask. Every corner of a sample inside the box is then in range, and samples outside
it have zero weight and a window clamped into range. (JAX gathers clamp out-of-range indices
silently; nothing here relies on it.) Then one of two equivalent formulations, chosen statically:

  * transform first (when G·O <= C, e.g. SSEN's C -> C layers): Z = X_pad · W_k for all taps at
    once (one matmul, (rows, K·G·O): 9x the input for a 3x3 C -> C layer, 2.4 GB for a 1024x1024
    map of 64 channels), then Y(p) = Σ_{k,g,corner} weight · Z[corner, k, g], one XLA fusion that
    gathers the 2x2 windows and sums them straight into the output.
  * im2col (otherwise): gather the 2x2 windows of X_pad and combine them into im2col columns
    (P, K·C) in one fusion, then one matmul with the kernel. Very large outputs are done in blocks
    of positions (`lax.map`), so the columns of a 1024x1024 input are never held whole.

Either way the gathered corners (K·G·4 vectors per position) are never written to memory. The
VJP is written by hand (`_deform_conv`): autodiff of the gather would materialise the corners and
their cotangents. The backward pass runs over blocks of output positions (`lax.scan`), so that what
a block gathers and scatters stays in cache: per block it gathers the windows of X_pad again and
reduces them against the column cotangents (out_grad · W_kᵀ) to the gradient of the four weights,
from which those of the offsets and mask follow in closed form; it scatter-adds weight x column
cotangent into the gradient of X_pad and accumulates columnsᵀ · out_grad into the kernel's.
Gradients match torchvision's hand-written kernels (tested, including samples exactly on integer and
boundary coordinates).

Every image is processed on its own (`jax.vmap` over the batch), so that a batch sharded over
devices needs no collectives but the final sum of the kernel gradient.

The layout choices follow XLA:CPU's code generation (profiled on a 2-core x86 machine): a fusion
whose output is (positions, K·C) is emitted as a scalar loop, while one whose minor dimension is a
channel vector is vectorised; gathers must not share a fusion with the sampling arithmetic; and
large buffers written once cost page faults. The block sizes of the backward pass are tuned for
CPU caches; other backends take blocks as large as a 256 MB budget allows (untested there).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax

Padding = Sequence[Tuple[int, int]]

# Output positions per block of the backward pass: the corners it gathers and the updates it
# scatters (BLOCK · K · G · 4 vectors) then stay in the CPU's cache.
BACKWARD_BLOCK = 256
# Largest im2col matrix (bytes) the im2col forward pass builds in one piece.
FORWARD_MAX_BYTES = 1 << 28

_IN_BOUNDS = lax.GatherScatterMode.PROMISE_IN_BOUNDS
# Operand (H+2, W+2, K', G, D) of one image, index (row, column, tap, group): one 2x2 window of
# one tap and group. K' is K for a transformed input Z, 1 for the padded input itself.
_GATHER_DIMS = lax.GatherDimensionNumbers(offset_dims=(1, 2, 3), collapsed_slice_dims=(2, 3),
                                          start_index_map=(0, 1, 2, 3))
_SCATTER_DIMS = lax.ScatterDimensionNumbers(update_window_dims=(1, 2, 3),
                                            inserted_window_dims=(2, 3),
                                            scatter_dims_to_operand_dims=(0, 1, 2, 3))


class _Geometry(NamedTuple):
  """Static shape parameters of one call."""
  h: int
  w: int
  ho: int
  wo: int
  kh: int
  kw: int
  strides: Tuple[int, int]
  padding: Tuple[Tuple[int, int], Tuple[int, int]]
  dilation: Tuple[int, int]
  groups: int
  transform_first: bool


def _pair(v) -> Tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  return tuple(v)  # type: ignore[return-value]


def output_size(size: int, kernel: int, stride: int, pad: Tuple[int, int], dilation: int) -> int:
  """Spatial output length of a convolution, as in torchvision."""
  return (size + pad[0] + pad[1] - dilation * (kernel - 1) - 1) // stride + 1


def _transform_first(channels: int, out_channels: int, groups: int) -> bool:
  """Whether to transform first: it gathers K·G·O values per output position, im2col K·C."""
  return groups * out_channels <= channels


# -- Sampling -------------------------------------------------------------------------------------


def _sample_coordinates(geom: _Geometry, offsets, mask):
  """Fractions, validity and modulation of every sample, (N, Ho, Wo, K, G) each, float32."""
  n = offsets.shape[0]
  g, taps = geom.groups, geom.kh * geom.kw
  (sh, sw), (dh, dw) = geom.strides, geom.dilation
  (pt, _), (pl, _) = geom.padding
  # Sampling coordinates stay float32 even when the features are bf16 (docs/conventions.md).
  dtype = jnp.promote_types(offsets.dtype, jnp.float32)
  # Columns and taps are tap-major, then group: (N, Ho, Wo, K, G, 2).
  offsets = jnp.swapaxes(offsets.astype(dtype).reshape(n, geom.ho, geom.wo, g, taps, 2), 3, 4)
  tap_y = (jnp.arange(geom.kh) * dh).repeat(geom.kw)  # (K,): i*dh for tap i*kw + j
  tap_x = jnp.tile(jnp.arange(geom.kw) * dw, geom.kh)
  grid_y = (jnp.arange(geom.ho) * sh - pt)[:, None] + tap_y[None, :]  # (Ho, K)
  grid_x = (jnp.arange(geom.wo) * sw - pl)[:, None] + tap_x[None, :]  # (Wo, K)
  y = grid_y[None, :, None, :, None].astype(dtype) + offsets[..., 0]
  x = grid_x[None, None, :, :, None].astype(dtype) + offsets[..., 1]
  # torchvision's forward is zero unless -1 < y < H; at y == -1 exactly our bilinear weights
  # already give zero (all weight on the padding row), and keeping that sample makes the offset
  # gradient match torchvision's, which there is v(0, ·) - 0 rather than 0.
  inside = ((y >= -1) & (y < geom.h) & (x >= -1) & (x < geom.w)).astype(dtype)
  scale = inside
  if mask is not None:
    scale = inside * jnp.swapaxes(mask.astype(dtype).reshape(n, geom.ho, geom.wo, g, taps), 3, 4)
  y0, x0 = jnp.floor(y), jnp.floor(x)
  return y0, x0, y - y0, x - x0, inside, scale


def _sampling(geom: _Geometry, offsets, mask):
  """Window index (N, Ho·Wo, K·G, 4) int32 and corner weights (N, Ho·Wo, K·G, 4) float32.

  The index is (row, column, tap, group) into one image's padded input (or its Z).
  """
  n = offsets.shape[0]
  y0, x0, ly, lx, _, scale = _sample_coordinates(geom, offsets, mask)
  hy, hx = 1 - ly, 1 - lx
  weights = jnp.stack([hy * hx * scale, hy * lx * scale, ly * hx * scale, ly * lx * scale], -1)
  # Inside the box y0 is in [-1, H-1], i.e. row y0 + 1 of the padded input; outside it the
  # clamped window is harmless (weight 0).
  row = jnp.clip(y0, -1, geom.h - 1).astype(jnp.int32) + 1
  col = jnp.clip(x0, -1, geom.w - 1).astype(jnp.int32) + 1
  shape = row.shape
  taps = geom.kh * geom.kw
  tap = jnp.broadcast_to(jnp.arange(taps, dtype=jnp.int32)[:, None], shape[3:])
  if not geom.transform_first:
    tap = jnp.zeros_like(tap)
  group = jnp.broadcast_to(jnp.arange(geom.groups, dtype=jnp.int32), shape[3:])
  index = jnp.stack([row, col, jnp.broadcast_to(tap, shape), jnp.broadcast_to(group, shape)], -1)
  positions = geom.ho * geom.wo
  kg = taps * geom.groups
  # Both are stacks (concatenations) of their parts, which XLA computes in fusions of their own
  # rather than in the gathers that read them once per channel (where the floor/clip/bilinear
  # arithmetic would be recomputed C/G times; `test_sampling_is_not_recomputed` checks this).
  return index.reshape(n, positions, kg, 4), weights.reshape(n, positions, kg, 4)


def _sampling_vjp(geom: _Geometry, offsets, mask, weights_grad):
  """Gradients of offsets and mask from that of the corner weights (N, Ho·Wo, K·G, 4)."""
  n = offsets.shape[0]
  g, taps = geom.groups, geom.kh * geom.kw
  _, _, ly, lx, inside, scale = _sample_coordinates(geom, offsets, mask)
  hy, hx = 1 - ly, 1 - lx
  gw = weights_grad.reshape(ly.shape + (4,))
  g00, g01, g10, g11 = gw[..., 0], gw[..., 1], gw[..., 2], gw[..., 3]
  # weights = (hy·hx, hy·lx, ly·hx, ly·lx) · scale; y and x enter through ly and lx only.
  grad_y = scale * (hx * (g10 - g00) + lx * (g11 - g01))
  grad_x = scale * (hy * (g01 - g00) + ly * (g11 - g10))
  offsets_grad = jnp.swapaxes(jnp.stack([grad_y, grad_x], -1), 3, 4).reshape(offsets.shape)
  mask_grad = None
  if mask is not None:
    mask_grad = inside * (hy * hx * g00 + hy * lx * g01 + ly * hx * g10 + ly * lx * g11)
    mask_grad = jnp.swapaxes(mask_grad, 3, 4).reshape(n, geom.ho, geom.wo, g * taps)
    mask_grad = mask_grad.astype(mask.dtype)
  return offsets_grad.astype(offsets.dtype), mask_grad


# -- Gathering and combining windows ---------------------------------------------------------------


def _windows(operand: jax.Array, index: jax.Array) -> jax.Array:
  """The 2x2 windows (M, 2, 2, D) of operand (H+2, W+2, K', G, D) at index (M, 4)."""
  return lax.gather(operand, index, _GATHER_DIMS, (2, 2, 1, 1, operand.shape[-1]),
                    mode=_IN_BOUNDS)


def _combine(windows: jax.Array, weights: jax.Array) -> jax.Array:
  """Σ_corner weight · corner: (M, 2, 2, D), (M, 4) -> (M, D), written as one elementwise sum."""
  w = weights.astype(windows.dtype)
  return (windows[:, 0, 0] * w[:, 0:1] + windows[:, 0, 1] * w[:, 1:2]
          + windows[:, 1, 0] * w[:, 2:3] + windows[:, 1, 1] * w[:, 3:4])


def _transform(padded: jax.Array, kernel: jax.Array) -> jax.Array:
  """Z[r, k, g] = X_pad[r, g] · W[k, g]: (rows, G, C/G), (K, G, C/G, O) -> (rows, K, G, O)."""
  rows, g, cg = padded.shape
  k, _, _, o = kernel.shape
  if g == 1:  # A plain matmul; as a batched einsum XLA transposes both operands on CPU.
    w = jnp.transpose(kernel.reshape(k, cg, o), (1, 0, 2)).reshape(cg, k * o)
    return jnp.dot(padded.reshape(rows, cg), w).reshape(rows, k, 1, o)
  return jnp.einsum('rgc,kgco->rkgo', padded, kernel)


def _materialized(x: jax.Array) -> jax.Array:
  """x, computed in an XLA fusion of its own (exactly: its bits plus zero).

  The gathering sum must not be fused into the consumers of the output: XLA would then either
  recompute it in each (e.g. an activation and its derivative in a training step) or, to avoid
  that, write the gathered windows to memory. A reduction is never duplicated into consumers, and
  integer sums stay out of XLA:CPU's YNNPACK fusions, which would write their inputs to memory.
  """
  bits = lax.bitcast_convert_type(x, jnp.int32 if x.dtype.itemsize == 4 else jnp.int16)
  bits = jnp.sum(jnp.stack([bits, jnp.zeros_like(bits)], axis=-1), axis=-1, dtype=bits.dtype)
  return lax.bitcast_convert_type(bits, x.dtype)


def _blocks(x: jax.Array, size: int) -> jax.Array:
  """(B·size, ...) -> (B, size, ...)."""
  return x.reshape((x.shape[0] // size, size) + x.shape[1:])


def _pad_positions(x: jax.Array, total: int) -> jax.Array:
  return jnp.pad(x, ((0, total - x.shape[0]),) + ((0, 0),) * (x.ndim - 1))


def _forward_image(geom: _Geometry, padded, index, weights, kernel, block: int, own_fusion: bool):
  """Outputs (Ho·Wo, O) of one image.

  padded (H+2, W+2, G, C/G), index and weights (Ho·Wo, K·G, 4), kernel (K, G, C/G, O); `block`
  is the number of positions per block of the im2col pass (0: one block); `own_fusion` keeps the
  gathering sum out of the consumers' fusions (see `_materialized`; needed in training steps).
  """
  h2, w2, g, cg = padded.shape
  kg = index.shape[1]
  if geom.transform_first:
    z = _transform(padded.reshape(h2 * w2, g, cg), kernel)
    operand = z.reshape((h2, w2) + z.shape[1:])
    # One fusion: every (tap, group) window is gathered and added straight into the output.
    out = sum(_combine(_windows(operand, index[:, j]), weights[:, j]) for j in range(kg))
    return _materialized(out) if own_fusion else out
  operand = padded.reshape(h2, w2, 1, g, cg)
  kernel = kernel.reshape(-1, kernel.shape[-1])

  def columns_matmul(index, weights):
    b = index.shape[0]
    cols = _combine(_windows(operand, index.reshape(-1, 4)), weights.reshape(-1, 4))
    return jnp.dot(cols.reshape(b, -1), kernel)

  positions = index.shape[0]
  if not block or block >= positions:
    return columns_matmul(index, weights)
  total = -(-positions // block) * block
  out = lax.map(lambda a: columns_matmul(*a), (_blocks(_pad_positions(index, total), block),
                                               _blocks(_pad_positions(weights, total), block)))
  return out.reshape(total, -1)[:positions]


def _backward_image(geom: _Geometry, padded, index, weights, kernel, out_grad, block: int):
  """Gradients of one image's padded (H+2, W+2, G, C/G) and weights (Ho·Wo, K·G, 4), and its
  contribution to the kernel's (K, G, C/G, O), scanning blocks of `block` output positions (see
  the module docstring); out_grad is (Ho·Wo, O).
  """
  h2, w2, g, cg = padded.shape
  positions, kg, _ = index.shape
  k, out_ch = kernel.shape[0], kernel.shape[-1]
  acc = jnp.promote_types(jnp.float32, out_grad.dtype)  # Accumulate in float32 at least.
  operand = padded.reshape(h2, w2, 1, g, cg)
  kernel_2d = kernel.reshape(-1, out_ch)
  # The padded input is an operand with a single tap: zero the tap of transform-first indices.
  index = index * jnp.array([1, 1, 0, 1], index.dtype)

  def step(carry, inputs):
    grad_operand, kernel_grad = carry
    index, weights, out_grad = inputs
    b = index.shape[0]
    flat = index.reshape(-1, 4)
    windows = _windows(operand, flat).reshape(b, kg, 2, 2, cg)
    cot = jnp.dot(out_grad, kernel_2d.T.astype(out_grad.dtype)).reshape(b, kg, cg)
    # A batched product rather than `_combine`: as a fusion it would be emitted over (b, K·G·C/G),
    # which XLA:CPU cannot vectorise (the window changes every C/G elements).
    cols = jnp.einsum('mq,mqc->mc', weights.reshape(-1, 4).astype(windows.dtype),
                      windows.reshape(b * kg, 4, cg))
    kernel_grad = kernel_grad + jnp.dot(cols.reshape(b, -1).T, out_grad,
                                        preferred_element_type=acc)
    weights_grad = jnp.einsum('bjqrd,bjd->bjqr', windows, cot,
                              preferred_element_type=jnp.float32).reshape(b, kg, 4)
    updates = weights.astype(cot.dtype)[..., None] * cot[:, :, None, :]
    grad_operand = lax.scatter_add(grad_operand, flat, updates.reshape(b * kg, 2, 2, cg).astype(
        grad_operand.dtype), _SCATTER_DIMS, mode=_IN_BOUNDS)
    return (grad_operand, kernel_grad), weights_grad

  size = min(block, positions) if block else positions
  total = -(-positions // size) * size
  init = (jnp.zeros(operand.shape, acc), jnp.zeros((k * g * cg, out_ch), acc))
  (grad_operand, kernel_grad), weights_grad = lax.scan(
      step, init, tuple(_blocks(_pad_positions(a, total), size)
                        for a in (index, weights, out_grad)))
  weights_grad = weights_grad.reshape(total, kg, 4)[:positions]
  return grad_operand.reshape(padded.shape), weights_grad, kernel_grad.reshape(kernel.shape)


def _block_sizes(geom: _Geometry, n: int, channels: int, out_channels: int, itemsize: int):
  """Output positions per image in one block of the (im2col) forward and the backward pass.

  The blocks of the backward pass hold BACKWARD_BLOCK positions of the whole batch on CPU (cache);
  elsewhere as many as the memory budget allows. The im2col forward pass is blocked only above the
  budget. 0 means one block.
  """
  positions = geom.ho * geom.wo
  taps = geom.kh * geom.kw
  forward = 0
  if not geom.transform_first and n * positions * taps * channels * itemsize > FORWARD_MAX_BYTES:
    forward = max(1, FORWARD_MAX_BYTES // (n * taps * channels * itemsize))
  if jax.default_backend() == 'cpu':
    backward = max(8, -(-BACKWARD_BLOCK // n))
  else:  # Gathered windows and scattered updates: 2 x 4 x K x C/G values per sample.
    backward = max(8, FORWARD_MAX_BYTES // (n * 8 * taps * channels * itemsize))
  return forward, (0 if backward >= positions else backward)


# -- The operation ---------------------------------------------------------------------------------


def _prepare(geom: _Geometry, inputs, offsets, mask, kernel):
  n, h, w, c = inputs.shape
  g = geom.groups
  padded = jnp.pad(inputs, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(n, h + 2, w + 2, g, c // g)
  kernel = kernel.astype(inputs.dtype).reshape(geom.kh * geom.kw, g, c // g, kernel.shape[-1])
  index, weights = _sampling(geom, offsets, mask)
  return padded, kernel, index, weights


def _outputs(geom: _Geometry, inputs, offsets, mask, kernel, own_fusion: bool):
  padded, kernel_r, index, weights = _prepare(geom, inputs, offsets, mask, kernel)
  block, _ = _block_sizes(geom, inputs.shape[0], inputs.shape[-1], kernel.shape[-1],
                          inputs.dtype.itemsize)
  out = jax.vmap(lambda p, i, w: _forward_image(geom, p, i, w, kernel_r, block, own_fusion))(
      padded, index, weights)
  out = out.reshape(inputs.shape[0], geom.ho, geom.wo, -1)
  return out, (offsets, mask, kernel, padded, index, weights)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _deform_conv(inputs, offsets, mask, kernel, geom: _Geometry):
  """deform_conv2d without bias: (N, Ho, Wo, O)."""
  # Without differentiation the output usually has one consumer, into which XLA may fuse the sum.
  return _outputs(geom, inputs, offsets, mask, kernel, own_fusion=False)[0]


# Each image is processed on its own (vmap), so that under data parallelism every device works on
# its own images: a gather or scan across the flattened batch would need collectives (all-gathers
# and permutes in every block of the backward pass).
def _deform_conv_fwd(inputs, offsets, mask, kernel, geom: _Geometry):
  # In a training step the output also feeds the activations' derivatives.
  return _outputs(geom, inputs, offsets, mask, kernel, own_fusion=True)


def _deform_conv_bwd(geom: _Geometry, residuals, out_grad):
  offsets, mask, kernel, padded, index, weights = residuals
  n, c, out_ch = offsets.shape[0], kernel.shape[2], kernel.shape[-1]
  kernel_r = kernel.astype(padded.dtype).reshape(geom.kh * geom.kw, geom.groups,
                                                 c // geom.groups, out_ch)
  _, block = _block_sizes(geom, n, c, out_ch, padded.dtype.itemsize)
  padded_grad, weights_grad, kernel_grad = jax.vmap(
      lambda p, i, w, g: _backward_image(geom, p, i, w, kernel_r, g, block))(
          padded, index, weights, out_grad.reshape(n, -1, out_ch))
  inputs_grad = padded_grad.reshape(n, geom.h + 2, geom.w + 2, c)[:, 1:-1, 1:-1]
  offsets_grad, mask_grad = _sampling_vjp(geom, offsets, mask, weights_grad)
  return (inputs_grad.astype(padded.dtype), offsets_grad, mask_grad,
          kernel_grad.sum(axis=0).reshape(kernel.shape).astype(kernel.dtype))


_deform_conv.defvjp(_deform_conv_fwd, _deform_conv_bwd)


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
    (N, Ho, Wo, O), in the dtype of `inputs` (the kernel is cast to it).
  """
  n, h, w, c = inputs.shape
  kh, kw, kc, out_ch = kernel.shape
  strides, dilation = _pair(strides), _pair(dilation)
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  padding = tuple(tuple(p) for p in padding)
  g = offset_groups
  taps = kh * kw
  if kc != c:
    raise ValueError(f'kernel expects {kc} input channels, inputs have {c}')
  if c % g:
    raise ValueError(f'channels ({c}) must be divisible by offset_groups ({g})')
  ho = output_size(h, kh, strides[0], padding[0], dilation[0])
  wo = output_size(w, kw, strides[1], padding[1], dilation[1])
  if offsets.shape != (n, ho, wo, g * taps * 2):
    raise ValueError(f'offsets must have shape {(n, ho, wo, g * taps * 2)}, got {offsets.shape}')
  if mask is not None and mask.shape != (n, ho, wo, g * taps):
    raise ValueError(f'mask must have shape {(n, ho, wo, g * taps)}, got {mask.shape}')
  geom = _Geometry(h, w, ho, wo, kh, kw, strides, padding, dilation, g,
                   transform_first=_transform_first(c, out_ch, g))
  out = _deform_conv(inputs, offsets, mask, kernel, geom)
  if bias is not None:
    out = out + bias.astype(out.dtype)
  return out
