"""PyTorch (NCHW) reference implementation of the SSEN networks, for parity tests and benchmarks.

An optional module: nothing in the runtime imports it, and it needs torch and torchvision (the
`test` extra).

Every network here computes what its flax counterpart in `ssen_jax.models` computes. Attribute names
mirror the flax module names, with flax's `name_i` children held in `nn.ModuleList`s called `name`,
so that a state_dict key maps to a flax parameter path by rule (see `ssen_jax.interop.convert`):

  'ssen.doe.0.nonlocal.1.theta.weight'  ->  ('ssen', 'doe_0', 'nonlocal_1', 'theta', 'kernel')

and a (O, C, kh, kw) weight becomes a (kh, kw, C, O) kernel.

The implementation is written independently of the JAX code: resampling uses index gathers rather
than shifted slices, attention is a dense softmax, deformable convolution is torchvision's, and the
correlation prior's window is gathered with `F.unfold`.
"""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, zero_init: bool = False
         ) -> nn.Conv2d:
  """Conv2d with symmetric padding kernel // 2, optionally zero-initialised."""
  layer = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)
  if zero_init:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
  return layer


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
  return F.leaky_relu(x, 0.1)


# --------------------------------------------------------------------------------------------------
# Resampling.


def _cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
  """Keys' cubic convolution kernel."""
  t = np.abs(t)
  inner = (a + 2) * t**3 - (a + 3) * t**2 + 1
  outer = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
  return np.where(t <= 1, inner, np.where(t < 2, outer, 0.0))


def _mirror(index: np.ndarray, length: int) -> np.ndarray:
  """MATLAB's 'symmetric' boundary: ... 1 0 | 0 1 ... L-1 | L-1 L-2 ... (period 2L)."""
  m = np.mod(index, 2 * length)
  return np.where(m >= length, 2 * length - 1 - m, m)


def _bicubic_axis(x: torch.Tensor, scale: int, dim: int) -> torch.Tensor:
  """MATLAB bicubic upsampling of one axis of x by an integer factor, via index gathers."""
  length = x.shape[dim]
  out_pos = (np.arange(length * scale) + 0.5) / scale - 0.5  # Input coordinate of each output.
  left = np.floor(out_pos).astype(np.int64)
  out = 0
  weight_sum = 0
  for t in range(-1, 3):
    idx = left + t
    w = _cubic(out_pos - idx)
    weight_sum = weight_sum + w
    gathered = x.index_select(dim, torch.from_numpy(_mirror(idx, length)))
    shape = [1] * x.dim()
    shape[dim] = -1
    out = out + gathered * torch.from_numpy(w.astype(np.float32)).view(shape)
  assert np.allclose(weight_sum, 1.0)
  return out


def bicubic_upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
  """MATLAB `imresize(x, scale, 'bicubic')` for integer scale, (N, C, H, W) -> (N, C, sH, sW)."""
  if scale == 1:
    return x
  return _bicubic_axis(_bicubic_axis(x, scale, 2), scale, 3)


def _upsample2x_axis(x: torch.Tensor, out_len: int, dim: int) -> torch.Tensor:
  length = x.shape[dim]
  nxt = torch.cat([x.narrow(dim, 1, length - 1), x.narrow(dim, length - 1, 1)], dim=dim)
  out = torch.stack([x, 0.5 * (x + nxt)], dim=dim + 1)
  shape = list(x.shape)
  shape[dim] = 2 * length
  return out.reshape(shape).narrow(dim, 0, out_len)


def upsample2x(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
  """out[2j] = x[j], out[2j+1] = (x[j] + x[j+1]) / 2 (last repeated), cut to (height, width)."""
  return _upsample2x_axis(_upsample2x_axis(x, height, 2), width, 3)


# --------------------------------------------------------------------------------------------------
# Layers.


class ResBlock(nn.Module):
  """conv3x3 - ReLU - conv3x3 + skip."""

  def __init__(self, features: int):
    super().__init__()
    self.conv1 = conv(features, features)
    self.conv2 = conv(features, features)

  def forward(self, x):
    return x + self.conv2(F.relu(self.conv1(x)))


class NonLocalBlock(nn.Module):
  """Embedded-Gaussian non-local block with a dense softmax; W_z zero-initialised."""

  def __init__(self, features: int):
    super().__init__()
    inner = max(features // 2, 1)
    self.theta = conv(features, inner, 1)
    self.phi = conv(features, inner, 1)
    self.g = conv(features, inner, 1)
    self.w_z = conv(inner, features, 1, zero_init=True)

  def forward(self, x):
    n, _, h, w = x.shape
    theta = self.theta(x).flatten(2).transpose(1, 2)  # (N, HW, C/2)
    phi = self.phi(x).flatten(2)  # (N, C/2, HW)
    g = self.g(x).flatten(2).transpose(1, 2)  # (N, HW, C/2)
    attn = torch.softmax(torch.bmm(theta, phi), dim=-1)
    y = torch.bmm(attn, g).transpose(1, 2).reshape(n, -1, h, w)
    return x + self.w_z(y)


class ModulatedDeformConv(nn.Module):
  """DCNv2 whose offsets (first G*k*k*2 channels) and sigmoid mask come from a conv of `cond`."""

  def __init__(self, c_in: int, features: int, cond_features: int, offset_groups: int = 1,
               kernel_size: int = 3):
    super().__init__()
    self.offset_groups = offset_groups
    self.kernel_size = kernel_size
    taps = kernel_size * kernel_size
    self.offset_conv = conv(cond_features, offset_groups * taps * 3, 3, zero_init=True)
    self.weight = nn.Parameter(torch.empty(features, c_in, kernel_size, kernel_size))
    self.bias = nn.Parameter(torch.zeros(features))
    nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

  def forward(self, x, cond, offset_prior: Optional[torch.Tensor] = None,
              return_offsets: bool = False):
    """`offset_prior` (N, 2, H, W), (dy, dx), is added to every tap's offset."""
    taps = self.offset_groups * self.kernel_size**2
    n_off = 2 * taps
    om = self.offset_conv(cond)
    offsets, mask = om[:, :n_off], torch.sigmoid(om[:, n_off:])
    if offset_prior is not None:  # Offsets are laid out [group][tap][dy, dx] (torchvision).
      offsets = offsets + offset_prior.repeat(1, taps, 1, 1)
    pad = self.kernel_size // 2
    y = torchvision.ops.deform_conv2d(x, offsets, self.weight, self.bias, padding=(pad, pad),
                                      mask=mask)
    if return_offsets:
      return y, offsets, mask
    return y


class DynamicOffsetEstimator(nn.Module):
  """conv_in, three stride-2 convs, non-local + 2x upsampling + skip at each scale, conv_out.

  conv_in reads concat(F_lr, R), plus `extra_inputs` channels (the correlation prior's 4).
  """

  def __init__(self, features: int, use_nonlocal: bool = True, extra_inputs: int = 0):
    super().__init__()
    c = features
    self.use_nonlocal = use_nonlocal
    self.conv_in = conv(2 * c + extra_inputs, c)
    self.down = nn.ModuleList([conv(c, c, 3, 2) for _ in range(3)])
    if use_nonlocal:
      # `nonlocal` is a Python keyword: registered by name, read with getattr.
      self.add_module('nonlocal', nn.ModuleList([NonLocalBlock(c) for _ in range(3)]))
    self.conv_out = conv(c, c)

  def forward(self, x):
    skips = [leaky_relu(self.conv_in(x))]
    for down in self.down:
      skips.append(leaky_relu(down(skips[-1])))
    y = skips.pop()
    for i in range(3):
      if self.use_nonlocal:
        y = getattr(self, 'nonlocal')[i](y)
      skip = skips.pop()
      y = upsample2x(y, skip.shape[2], skip.shape[3]) + skip
    return self.conv_out(y)


class SSEN(nn.Module):
  """Stacked DOE-steered deformable convolutions; LeakyReLU(0.1) between layers.

  With `use_prior`, forward takes a correlation prior (flow (N, 2, H, W), statistics
  (N, 2, H, W)): the flow moves the first layer's samples, and both join every estimator's input.
  """

  def __init__(self, features: int, num_dcn_layers: int = 3, use_nonlocal: bool = True,
               offset_groups: int = 1, use_prior: bool = False):
    super().__init__()
    c = features
    self.doe = nn.ModuleList([DynamicOffsetEstimator(c, use_nonlocal, 4 if use_prior else 0)
                              for _ in range(num_dcn_layers)])
    self.dcn = nn.ModuleList([ModulatedDeformConv(c, c, c, offset_groups)
                              for _ in range(num_dcn_layers)])

  def forward(self, f_lr, f_ref, prior: Optional[tuple] = None):
    r = f_ref
    for l, (doe, dcn) in enumerate(zip(self.doe, self.dcn)):
      if prior is None:
        r = dcn(r, doe(torch.cat([f_lr, r], dim=1)))
      else:
        flow, stats = prior
        r = dcn(r, doe(torch.cat([f_lr, r, flow, stats], dim=1)),
                offset_prior=flow if l == 0 else None)
      if l < len(self.dcn) - 1:
        r = leaky_relu(r)
    return r


class CorrelationPrior(nn.Module):
  """Soft arg-max displacement of the best match of `a` in `b` within `radius` (not in the paper).

  Each (N, C, H, W) map is centred on its spatial mean, each position's vector scaled to unit
  norm; the cosine of a[i] and b[i + d] for every d in [-r, r]^2 (row-major, dy outer) is read off
  an `F.unfold` of b (zero padding, so 0 outside the image, where d is also excluded from the
  softmax). softmax(exp(log_temperature) * cosine) weights the displacements.

  Returns:
    flow (N, 2, H, W) as (dy, dx), and statistics (N, 2, H, W): the largest weight and the largest
    valid cosine.
  """

  def __init__(self, radius: int, init_temperature: float = 50.0):
    super().__init__()
    self.radius = radius
    self.log_temperature = nn.Parameter(torch.tensor(math.log(init_temperature)))

  @staticmethod
  def _unit(x):
    x = x - x.mean(dim=(2, 3), keepdim=True)
    return x * torch.rsqrt((x * x).sum(dim=1, keepdim=True) + 1e-6)

  def forward(self, a, b):
    n, c, h, w = a.shape
    size = 2 * self.radius + 1
    window = dict(kernel_size=size, padding=self.radius)
    a, b = self._unit(a), self._unit(b)
    # (N, C*K, H*W), channel-major: entry (c, k) at i is b[c, i + d_k] (0 outside).
    patches = F.unfold(b, **window).view(n, c, size * size, h, w)
    corr = (a.unsqueeze(2) * patches).sum(dim=1)  # (N, K, H, W)
    valid = F.unfold(torch.ones(1, 1, h, w, dtype=a.dtype, device=a.device),
                     **window).view(1, size * size, h, w) > 0.5
    logits = torch.where(valid, corr * self.log_temperature.exp(), torch.full_like(corr, -1e9))
    weights = torch.softmax(logits, dim=1)
    steps = torch.arange(-self.radius, self.radius + 1, dtype=a.dtype, device=a.device)
    dy = steps.repeat_interleave(size).view(1, -1, 1, 1)  # Displacement k = (k // size, k % size).
    dx = steps.repeat(size).view(1, -1, 1, 1)
    flow = torch.cat([(weights * dy).sum(1, keepdim=True), (weights * dx).sum(1, keepdim=True)], 1)
    best = torch.where(valid, corr, torch.full_like(corr, -1.0)).amax(dim=1, keepdim=True)
    stats = torch.cat([weights.amax(dim=1, keepdim=True), best], dim=1)
    return flow, stats


def _log2_scale(scale: int) -> int:
  steps = int(round(math.log2(scale)))
  assert scale >= 2 and 2**steps == scale
  return steps


class Upsampler(nn.Module):
  """[conv3x3(C -> 4C), pixel shuffle x2] x log2(scale), conv3x3(C -> 3)."""

  def __init__(self, features: int, scale: int = 4):
    super().__init__()
    self.conv = nn.ModuleList([conv(features, 4 * features) for _ in range(_log2_scale(scale))])
    self.conv_out = conv(features, 3, zero_init=True)  # Untrained network == bicubic.

  def forward(self, x):
    for layer in self.conv:
      x = F.pixel_shuffle(layer(x), 2)
    return self.conv_out(x)


# --------------------------------------------------------------------------------------------------
# Networks.


class RefSRNet(nn.Module):
  """Reference-based SR network; `use_ssen=False` is the baseline.

  `match_radius` r > 0 (SSEN only) adds the correlation prior: the reference, box-averaged to the
  LR grid and encoded like the LR image (conv_lr + the shared blocks), is matched against F_lr
  within r LR pixels by `matcher`, which steers SSEN's first layer.
  """

  def __init__(self, features: int = 64, num_extract_blocks: int = 5, num_recon_blocks: int = 16,
               num_dcn_layers: int = 3, use_nonlocal: bool = True, use_ssen: bool = True,
               offset_groups: int = 1, match_radius: int = 0, scale: int = 4):
    super().__init__()
    c = features
    self.scale = scale
    self.use_ssen = use_ssen
    self.use_prior = use_ssen and match_radius > 0
    self.conv_lr = conv(3, c)
    self.extract = nn.ModuleList([ResBlock(c) for _ in range(num_extract_blocks)])
    if use_ssen:  # The baseline has no reference branch at all.
      self.ref_down = nn.ModuleList([conv(3 if i == 0 else c, c, 3, 2)
                                     for i in range(_log2_scale(scale))])
      self.ssen = SSEN(c, num_dcn_layers, use_nonlocal, offset_groups, self.use_prior)
      if self.use_prior:
        self.matcher = CorrelationPrior(match_radius)
    self.fuse = conv(2 * c if use_ssen else c, c, 1)
    self.recon = nn.ModuleList([ResBlock(c) for _ in range(num_recon_blocks)])
    self.conv_recon = conv(c, c)
    self.upsampler = Upsampler(c, scale)

  def _extract(self, x):
    for block in self.extract:
      x = block(x)
    return x

  def forward(self, lr, ref: Optional[torch.Tensor] = None):
    """lr (N, 3, H, W), ref (N, 3, sH, sW) -> (N, 3, sH, sW)."""
    f_lr = self._extract(self.conv_lr(lr))
    if self.use_ssen:
      prior = None
      if self.use_prior:
        ref_lr = F.avg_pool2d(ref, self.scale)  # Mean of each scale x scale block.
        prior = self.matcher(f_lr, self._extract(self.conv_lr(ref_lr)))
      x = ref
      for down in self.ref_down:
        x = leaky_relu(down(x))
      aligned = self.ssen(f_lr, self._extract(x), prior)
      x = self.fuse(torch.cat([f_lr, aligned], dim=1))
    else:
      x = self.fuse(f_lr)
    for block in self.recon:
      x = block(x)
    x = self.conv_recon(x) + f_lr
    return self.upsampler(x) + bicubic_upsample(lr, self.scale)


class ChannelAttention(nn.Module):

  def __init__(self, features: int, reduction: int):
    super().__init__()
    inner = max(features // reduction, 1)
    self.down = conv(features, inner, 1)
    self.up = conv(inner, features, 1)

  def forward(self, x):
    s = x.mean(dim=(2, 3), keepdim=True)
    return x * torch.sigmoid(self.up(F.relu(self.down(s))))


class RCAB(nn.Module):

  def __init__(self, features: int, reduction: int):
    super().__init__()
    self.conv1 = conv(features, features)
    self.conv2 = conv(features, features)
    self.attention = ChannelAttention(features, reduction)

  def forward(self, x):
    return x + self.attention(self.conv2(F.relu(self.conv1(x))))


class ResidualGroup(nn.Module):

  def __init__(self, features: int, num_blocks: int, reduction: int):
    super().__init__()
    self.blocks = nn.ModuleList([RCAB(features, reduction) for _ in range(num_blocks)])
    self.conv = conv(features, features)

  def forward(self, x):
    y = x
    for block in self.blocks:
      y = block(y)
    return x + self.conv(y)


class RCAN(nn.Module):
  """RCAN with a global bicubic skip, optionally with SSEN on its head features (selfsim)."""

  def __init__(self, features: int = 64, num_groups: int = 10, num_blocks: int = 20,
               reduction: int = 16, use_ssen: bool = False, num_dcn_layers: int = 3,
               use_nonlocal: bool = True, offset_groups: int = 1, scale: int = 4):
    super().__init__()
    c = features
    self.scale = scale
    self.use_ssen = use_ssen
    self.head = conv(3, c)
    if use_ssen:
      self.ssen = SSEN(c, num_dcn_layers, use_nonlocal, offset_groups)
      self.fuse = conv(2 * c, c, 1)
    self.groups = nn.ModuleList([ResidualGroup(c, num_blocks, reduction)
                                 for _ in range(num_groups)])
    self.conv_body = conv(c, c)
    self.upsampler = Upsampler(c, scale)

  def forward(self, lr, ref: Optional[torch.Tensor] = None):
    """lr (N, 3, H, W) -> (N, 3, sH, sW); ref is ignored."""
    del ref
    head = self.head(lr)
    x = head
    if self.use_ssen:
      x = self.fuse(torch.cat([head, self.ssen(head, head)], dim=1))
    for group in self.groups:
      x = group(x)
    x = self.conv_body(x) + head
    return self.upsampler(x) + bicubic_upsample(lr, self.scale)


class PatchDiscriminator(nn.Module):
  """PatchGAN: 4x4 convs (padding 1) 64/128/256 stride 2, 512 stride 1, LeakyReLU 0.2, 4x4 -> 1."""

  def __init__(self, features: int = 64):
    super().__init__()
    chans = [3, features, 2 * features, 4 * features, 8 * features]
    strides = [2, 2, 2, 1]
    self.conv = nn.ModuleList([nn.Conv2d(chans[i], chans[i + 1], 4, stride=strides[i], padding=1)
                               for i in range(4)])
    self.conv_out = nn.Conv2d(chans[-1], 1, 4, padding=1)

  def forward(self, x):
    for layer in self.conv:
      x = F.leaky_relu(layer(x), 0.2)
    return self.conv_out(x)


def build(variant: str, **kwargs) -> nn.Module:
  """The torch network of a model variant ('ssen', 'baseline', 'selfsim', 'rcan')."""
  if variant in ('ssen', 'baseline'):
    return RefSRNet(use_ssen=variant == 'ssen', **kwargs)
  if variant in ('selfsim', 'rcan'):
    return RCAN(use_ssen=variant == 'selfsim', **kwargs)
  raise ValueError(variant)


def randomize_(model: nn.Module, gain: float = 1.0, bias_std: float = 0.05,
               offset_gain: float = 3.0, seed: int = 0) -> nn.Module:
  """Redraws every parameter, the zero-initialised ones included, in place.

  Weights are N(0, (gain / sqrt(fan_in))²), which keeps activations of order one through the
  network; biases N(0, bias_std²). The convolutions that predict deformable offsets get
  `offset_gain` times more, so that offsets are of the order of pixels and a fair share of the
  samples fall between pixels, on other pixels, and outside the image. A 0-d parameter (the
  correlation prior's log-temperature) is a log-scale: it keeps its value plus N(0, bias_std²).
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.dim() == 0:
        p.add_(torch.randn((), generator=gen) * bias_std)
        continue
      if p.dim() > 1:
        std = gain / math.sqrt(p[0].numel())
        if 'offset_conv' in name:
          std *= offset_gain
      else:
        std = bias_std
      p.copy_(torch.randn(p.shape, generator=gen) * std)
  return model


def num_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def state_dict_numpy(model: nn.Module) -> dict:
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def to_nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def to_nhwc(x: torch.Tensor) -> np.ndarray:
  return x.detach().permute(0, 2, 3, 1).cpu().numpy()


__all__: List[str] = ['ResBlock', 'NonLocalBlock', 'ModulatedDeformConv',
                      'DynamicOffsetEstimator', 'CorrelationPrior', 'SSEN', 'Upsampler',
                      'RefSRNet', 'RCAN', 'PatchDiscriminator', 'bicubic_upsample', 'upsample2x',
                      'build', 'randomize_', 'num_params', 'state_dict_numpy', 'to_nchw', 'to_nhwc']
