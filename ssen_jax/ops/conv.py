"""A stride-1 'same' 2-D convolution whose kernel gradient is computed as matrix products.

XLA:CPU differentiates a convolution's kernel as another convolution, with the output gradient as
its (large) window; for the sub-pixel upsampler's convolutions that was the slowest part of a train
step. Written as what it is,

    dK[i, j] = sum over positions p of x_pad[p + (i, j)]ᵀ · dy[p]        (C_in x C_out per tap),

the gradient is a few large matrix products. Whichever of x and dy has fewer channels is shifted:
  - C_out >= C_in: one product per tap of the shifted x with dy;
  - C_out < C_in: the nine shifted copies of the thin dy side by side, (P, 9 C_out), and a single
    product with x, since sum_p x_pad[p + t] dy[p] = sum_q x[q] dy_pad[q - t + pad].
Each image's positions are split in two halves (a batch of products, so both cores get work). For
C -> C convolutions the gain depends on the batch (XLA's kernel gradient grows superlinearly with
it; at batch 4 whole train steps were within noise either way), so `fast_kernel_grad` takes the
products when C_out != C_in or the batch is at least `MIN_BATCH_SQUARE` (8), and XLA's gradient
otherwise. The models ask for it on every stride-1 convolution (`ssen_jax.models.layers.conv`).
The measurements behind these choices are in docs/performance.md ("Convolution kernel gradients").

Only jax is imported here.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_DIMS = ('NHWC', 'HWIO', 'NHWC')
# Smallest batch at which a C -> C convolution's kernel gradient is taken as products (see above).
MIN_BATCH_SQUARE = 8


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  kh, kw = kernel.shape[:2]  # Odd (conv2d checks): padding k // 2 on both sides.
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((kh // 2,) * 2, (kw // 2,) * 2),
                                      dimension_numbers=_DIMS)


def _kernel_grad_by_products(x: jax.Array, dy: jax.Array, kernel_shape) -> jax.Array:
  """sum_p x_pad[p + tap]ᵀ dy[p] for every tap, as (kh, kw, C_in, C_out) in x's dtype."""
  kh, kw, c, o = kernel_shape
  n, h, w, _ = x.shape
  pad = ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0))
  # Each image's positions in two halves where the row count allows: the product batch is then
  # 2N, enough independent work for two cores even at batch 1.
  split = 2 if h % 2 == 0 else 1
  rows = n * split, (h // split) * w

  def product(a, b):  # sum over positions of aᵀ b, batched over the image halves.
    return jax.lax.dot_general(a.reshape(*rows, -1), b.reshape(*rows, -1),
                               (((1,), (1,)), ((0,), (0,))),
                               preferred_element_type=jnp.float32).sum(axis=0)

  if o < c:  # Shift the thin dy: one product with x, (C_in, taps * C_out).
    dyp = jnp.pad(dy, pad)
    shifted = jnp.concatenate([dyp[:, kh - 1 - i:kh - 1 - i + h, kw - 1 - j:kw - 1 - j + w]
                               for i in range(kh) for j in range(kw)], axis=-1)
    grad = product(x, shifted).reshape(c, kh, kw, o).transpose(1, 2, 0, 3)
  else:  # Shift x: one product per tap with dy.
    xp = jnp.pad(x, pad)
    grad = jnp.stack([product(xp[:, i:i + h, j:j + w], dy)
                      for i in range(kh) for j in range(kw)]).reshape(kh, kw, c, o)
  return grad.astype(x.dtype)


@jax.custom_vjp
def _conv_product_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _conv(x, kernel)


def _fwd(x, kernel):
  return _conv(x, kernel), (x, kernel)


def _bwd(res, dy):
  x, kernel = res
  # The input gradient is XLA's transposed convolution (no forward pass traced again).
  (dx,) = jax.linear_transpose(lambda x: _conv(x, kernel), x)(dy)
  return dx, _kernel_grad_by_products(x, dy, kernel.shape).astype(kernel.dtype)


_conv_product_grad.defvjp(_fwd, _bwd)


@functools.partial(jax.named_call, name='conv2d')
def conv2d(x: jax.Array, kernel: jax.Array, *, fast_kernel_grad: bool = False) -> jax.Array:
  """Stride-1 convolution padded like PyTorch's `Conv2d(k, padding=k // 2)` (odd k), NHWC/HWIO.

  Args:
    x: (N, H, W, C_in).
    kernel: (kh, kw, C_in, C_out).
    fast_kernel_grad: on the CPU backend, differentiate the kernel by matrix products (see
      the module docstring) instead of XLA's convolution where that was measured faster
      (C_out != C_in, or a batch of at least MIN_BATCH_SQUARE); the values are equal up to float
      rounding. Elsewhere XLA's own gradient is kept (cuDNN / TPU convolutions): the product form
      has been measured on XLA:CPU only.

  Returns:
    (N, H, W, C_out).
  """
  if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
    raise ValueError(f'conv2d takes odd kernel sizes, got {kernel.shape[:2]}')
  wins = kernel.shape[2] != kernel.shape[3] or x.shape[0] >= MIN_BATCH_SQUARE
  if fast_kernel_grad and wins and jax.default_backend() == 'cpu':
    return _conv_product_grad(x, kernel)
  return _conv(x, kernel)
