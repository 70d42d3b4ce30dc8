"""Building blocks shared by the networks: convolutions with explicit padding, residual blocks,
the non-local block, the modulated deformable convolution layer, RCAN's attention blocks, and the
optional correlation prior of SSEN's first deformable layer.

Every module names its children explicitly (`conv1`, `blocks_3`, ...). The PyTorch reference in
`ssen_jax/interop/torch_reference.py` uses the same attribute names, so `ssen_jax.interop.convert`
maps a state_dict key such as `ssen.dcn_0.conv.weight` to the flax path `ssen/dcn_0/conv/kernel` by
rule, not by table.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssen_jax import ops
from ssen_jax.ops.attention import DEFAULT_CHUNK, DEFAULT_DENSE_MAX

Dtype = Any
Initializer = Callable[..., jax.Array]

# PyTorch's default `Conv2d` kernel initialisation: uniform within +-1/sqrt(fan_in), a third of
# lecun-normal's variance. RCAN's convolutions use it (docs/choices.md, "Initialisation"): with
# lecun-normal its 200 unscaled residual branches multiply the features' spread by ~1e8 at
# initialisation and the first update explodes; with this, by ~5 over the ten groups.
TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def conv(features: int, kernel: int = 3, stride: int = 1, *, name: Optional[str] = None,
         dtype: Dtype = jnp.float32, zero_init: bool = False, use_bias: bool = True,
         kernel_init: Optional[Initializer] = None) -> nn.Conv:
  """A 2-D convolution padded like PyTorch's `Conv2d(k, stride, padding=k // 2)`.

  Flax's 'SAME' padding puts the extra row of a stride-2 convolution at the bottom, PyTorch's
  symmetric padding at the top; explicit padding keeps both frameworks on one sampling grid.
  Stride-1 convolutions with a bias are `SplitConv`s with the matrix-product kernel gradient of
  `ops.conv2d` (same params; faster on XLA:CPU, increasingly so with the batch). The kernel starts
  lecun-normal unless `kernel_init` (or `zero_init`: kernel and bias zero) says otherwise.
  """
  if stride == 1 and use_bias and kernel % 2 == 1:
    return SplitConv(features, kernel, zero_init=zero_init, fast_kernel_grad=True, dtype=dtype,
                     kernel_init=kernel_init, name=name)
  pad = kernel // 2
  kwargs = {} if kernel_init is None else dict(kernel_init=kernel_init)
  if zero_init:
    kwargs = dict(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32, name=name, **kwargs)


class SplitConv(nn.Module):
  """conv(concat(xs, axis=-1)) without the concatenation, optionally with padded output channels.

  Holds the same `kernel` (k, k, sum of input channels, features) and `bias` as the `conv` it
  replaces, so checkpoints and the PyTorch converter see no difference. Three speed-ups for
  XLA:CPU, all exact up to float rounding of the sum order (measured in docs/performance.md):
    - a convolution of concatenated inputs is the sum of one convolution per input with its slice of
      the kernel: no concatenated copy, and 64-channel convolutions run faster than one with 128
      input channels;
    - `pad_features_to`: the output channels are zero-padded up to a multiple (and cut off after),
      since an odd count such as the offset predictor's 27 leaves SIMD lanes idle;
    - `fast_kernel_grad`: the kernel gradient as matrix products (`ops.conv2d`).
  Stride 1 and an odd kernel size only.
  """
  features: int
  kernel_size: int = 3
  zero_init: bool = False
  pad_features_to: int = 1
  fast_kernel_grad: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Optional[Initializer] = None  # None: lecun-normal.

  @nn.compact
  def __call__(self, *xs: jax.Array) -> jax.Array:
    k = self.kernel_size
    init = (nn.initializers.zeros if self.zero_init else
            self.kernel_init or nn.initializers.lecun_normal())
    channels = [x.shape[-1] for x in xs]
    kernel = self.param('kernel', init, (k, k, sum(channels), self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    extra = -self.features % self.pad_features_to
    kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 0), (0, extra))).astype(self.dtype)
    y, start = None, 0
    for x, c in zip(xs, channels):
      part = ops.conv2d(x.astype(self.dtype), kernel[:, :, start:start + c],
                        fast_kernel_grad=self.fast_kernel_grad)
      y, start = part if y is None else y + part, start + c
    return y[..., :self.features] + bias.astype(self.dtype)


def leaky_relu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.1)


class ResBlock(nn.Module):
  """conv3x3 - ReLU - conv3x3 + skip, no batch norm (EDSR; paper Sec. 3.4)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H, W, C)."""
    y = conv(self.features, name='conv1', dtype=self.dtype)(x)
    y = conv(self.features, name='conv2', dtype=self.dtype)(nn.relu(y))
    return x + y


class NonLocalBlock(nn.Module):
  """Embedded-Gaussian non-local block (Wang et al.; paper Eq. 2-3).

  z = x + W_z(softmax_j(θ(x_i)ᵀ φ(x_j)) g(x_j)), with θ, φ, g 1x1 convolutions to C/2 channels
  (the paper halves the embedding) and W_z a zero-initialised 1x1 convolution back to C, so a new
  block is the identity. Large maps are evaluated in chunks (`ops.attention`), exactly.
  """
  features: int
  chunk: int = DEFAULT_CHUNK
  dense_max: int = DEFAULT_DENSE_MAX
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H, W, C)."""
    n, h, w, _ = x.shape
    inner = max(self.features // 2, 1)
    theta = conv(inner, 1, name='theta', dtype=self.dtype)(x).reshape(n, h * w, inner)
    phi = conv(inner, 1, name='phi', dtype=self.dtype)(x).reshape(n, h * w, inner)
    g = conv(inner, 1, name='g', dtype=self.dtype)(x).reshape(n, h * w, inner)
    y = ops.attention(theta, phi, g, chunk=self.chunk, dense_max=self.dense_max)
    y = y.reshape(n, h, w, inner)
    return x + conv(self.features, 1, name='w_z', dtype=self.dtype, zero_init=True)(y)


class ModulatedDeformConv(nn.Module):
  """A 3x3 modulated deformable convolution whose offsets and mask are predicted from `cond`.

  A zero-initialised 3x3 convolution of `cond` gives G*9*3 channels: the first G*9*2 are offsets
  laid out [group][tap][dy, dx], the rest pass through a sigmoid to give the modulation mask
  (docs/conventions.md). An untrained layer therefore samples the regular grid with mask 0.5.

  With `learned_offsets=False` the predicted offsets are replaced by zeros (the mask is kept): the
  layer samples the regular grid, moved by `offset_prior` if one is given. Parameters are the same,
  so a trained model can be probed this way (`ssen_jax.eval.probe`) and a model can be trained so
  (`model.learned_offsets=False`: no gradient reaches the offset channels).
  """
  features: int
  offset_groups: int = 1
  kernel_size: int = 3
  learned_offsets: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array, *, offset_prior: jax.Array | None = None,
               return_offsets: bool = False):
    """Deformable convolution of x (N, H, W, C) steered by cond (N, H, W, C').

    `offset_prior` (N, H, W, 2), (dy, dx), is added to every tap's predicted offset.

    Returns:
      (N, H, W, features); with `return_offsets`, also the offsets (N, H, W, G*k*k*2) and the mask
      (N, H, W, G*k*k) in float32.
    """
    k, g = self.kernel_size, self.offset_groups
    taps = k * k
    om = SplitConv(g * taps * 3, 3, zero_init=True, pad_features_to=16, dtype=self.dtype,
                   name='offset_conv')(cond)
    om = om.astype(jnp.float32)
    offsets, mask = om[..., :2 * g * taps], jax.nn.sigmoid(om[..., 2 * g * taps:])
    if not self.learned_offsets:
      offsets = jnp.zeros_like(offsets)
    if offset_prior is not None:
      offsets = offsets + jnp.tile(offset_prior.astype(jnp.float32), (1, 1, 1, g * taps))
    c = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, k, c, self.features),
                        jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    y = ops.deform_conv2d(x.astype(self.dtype), offsets, mask, kernel.astype(self.dtype),
                          bias.astype(self.dtype), padding=((k // 2, k // 2),) * 2,
                          offset_groups=g)
    if return_offsets:
      return y, offsets, mask
    return y


class ChannelAttention(nn.Module):
  """RCAN's channel attention: global average pool, 1x1 C->C/r, ReLU, 1x1 C/r->C, sigmoid."""
  features: int
  reduction: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(conv(max(self.features // self.reduction, 1), 1, name='down', dtype=self.dtype,
                     kernel_init=TORCH_DEFAULT_INIT)(s))
    s = nn.sigmoid(conv(self.features, 1, name='up', dtype=self.dtype,
                        kernel_init=TORCH_DEFAULT_INIT)(s))
    return x * s


class RCAB(nn.Module):
  """Residual channel attention block: conv-ReLU-conv, channel attention, + skip.

  RCAN's blocks (with `ChannelAttention` and `ResidualGroup`) initialise their kernels as PyTorch
  does (`TORCH_DEFAULT_INIT`).
  """
  features: int
  reduction: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = conv(self.features, name='conv1', dtype=self.dtype, kernel_init=TORCH_DEFAULT_INIT)(x)
    y = conv(self.features, name='conv2', dtype=self.dtype,
             kernel_init=TORCH_DEFAULT_INIT)(nn.relu(y))
    y = ChannelAttention(self.features, self.reduction, self.dtype, name='attention')(y)
    return x + y


class ResidualGroup(nn.Module):
  """RCAN's residual group: `num_blocks` RCABs, a 3x3 conv, + skip."""
  features: int
  num_blocks: int = 20
  reduction: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = x
    for i in range(self.num_blocks):
      y = RCAB(self.features, self.reduction, self.dtype, name=f'blocks_{i}')(y)
    return x + conv(self.features, name='conv', dtype=self.dtype,
                    kernel_init=TORCH_DEFAULT_INIT)(y)


class CorrelationPrior(nn.Module):
  """Where each LR position finds its best match in the reference, as a soft arg-max.

  Cosine similarity of `a` (LR features) with `b` (the reference's features on the LR grid, from
  the same encoder) at every displacement within `radius`, softmax with a learned temperature
  (initially `init_temperature`), expected displacement. Returns the flow (N, H, W, 2) and
  match statistics (N, H, W, 2): peak weight and best similarity. `local_radius` > 0 takes the
  expectation only within that many pixels of the best match (`ops.soft_argmax_displacement`).
  Not in the paper (docs/choices.md, "Correlation prior").
  """
  radius: int
  init_temperature: float = 50.0
  local_radius: int = 0

  @nn.compact
  def __call__(self, a: jax.Array, b: jax.Array | list[jax.Array],
               offsets: list[tuple[float, float]] | None = None) -> tuple[jax.Array, jax.Array]:
    """`b`: the reference's features, or a list of them for versions moved by `offsets` (grid
    pixels; `ops.match_flow_phases`)."""
    log_t = self.param('log_temperature',
                       nn.initializers.constant(math.log(self.init_temperature)), (),
                       jnp.float32)
    if isinstance(b, (list, tuple)):
      return ops.match_flow_phases(a, list(b), offsets, self.radius, jnp.exp(log_t),
                                   self.local_radius)
    return ops.match_flow(a, b, self.radius, jnp.exp(log_t), self.local_radius)
