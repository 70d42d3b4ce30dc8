"""A stride-1 'same' 2-D convolution whose kernel gradient is computed as per-tap matrix products.

XLA:CPU differentiates a convolution's kernel as another convolution, with the output gradient as
its (large) window. For the wide convolutions of the sub-pixel upsampler (C -> 4C channels, e.g.
64 -> 256 at 80x80, batch 4) that kernel gradient took 4x the forward pass here (153 ms against
37 ms). Written as what it is, one matrix product per kernel tap,

    dK[i, j] = sum over positions p of x_pad[p + (i, j)]ᵀ · dy[p]        (C_in x C_out)

and with the position sum split in two halves per image (a batch of products, so both cores get
work), the same gradient took 63 ms. For C -> C convolutions XLA's own gradient was as fast (9 ms
both at 64 -> 64, 40x40, batch 4) and for a few output channels it was faster, so `conv2d` with
`fast_kernel_grad=False` is just `lax.conv_general_dilated`; the models enable the product form only
for the upsampler (measured with `python -m ssen_jax.benchmark --what train`).

Only jax is imported here.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _same_padding(kernel_shape):
  kh, kw = kernel_shape[:2]
  return ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2))


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), _same_padding(kernel.shape),
                                      dimension_numbers=_DIMS)


def _kernel_grad_by_taps(x: jax.Array, dy: jax.Array, kernel_shape) -> jax.Array:
  """sum_p x_pad[p + tap]ᵀ dy[p] for every tap, as (kh, kw, C_in, C_out) in x's dtype."""
  kh, kw, c, o = kernel_shape
  n, h, w, _ = x.shape
  (top, bottom), (left, right) = _same_padding(kernel_shape)
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  # Each image's positions in two halves where the row count allows: the product batch is then
  # 2N, enough independent work for two cores even at batch 1.
  split = 2 if h % 2 == 0 else 1
  g = dy.reshape(n * split, (h // split) * w, o)
  taps = []
  for i in range(kh):
    for j in range(kw):
      xs = xp[:, i:i + h, j:j + w, :].reshape(n * split, (h // split) * w, c)
      taps.append(jax.lax.dot_general(xs, g, (((1,), (1,)), ((0,), (0,))),
                                      preferred_element_type=jnp.float32).sum(axis=0))
  return jnp.stack(taps).reshape(kh, kw, c, o).astype(x.dtype)


@jax.custom_vjp
def _conv_taps_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _conv(x, kernel)


def _fwd(x, kernel):
  return _conv(x, kernel), (x, kernel)


def _bwd(res, dy):
  x, kernel = res
  _, input_vjp = jax.vjp(lambda x: _conv(x, kernel), x)
  (dx,) = input_vjp(dy)
  return dx, _kernel_grad_by_taps(x, dy, kernel.shape).astype(kernel.dtype)


_conv_taps_grad.defvjp(_fwd, _bwd)


@functools.partial(jax.named_call, name='conv2d')
def conv2d(x: jax.Array, kernel: jax.Array, *, fast_kernel_grad: bool = False) -> jax.Array:
  """Stride-1 convolution padded like PyTorch's `Conv2d(k, padding=k // 2)` (odd k), NHWC/HWIO.

  Args:
    x: (N, H, W, C_in).
    kernel: (kh, kw, C_in, C_out).
    fast_kernel_grad: on the CPU backend, differentiate the kernel by per-tap matrix products (see
      the module docstring) instead of XLA's convolution; the values are equal up to float
      rounding. Elsewhere XLA's own gradient is kept (cuDNN / TPU convolutions): the product form
      has been measured on XLA:CPU only.

  Returns:
    (N, H, W, C_out).
  """
  if fast_kernel_grad and jax.default_backend() == 'cpu':
    return _conv_taps_grad(x, kernel)
  return _conv(x, kernel)
