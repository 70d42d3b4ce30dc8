"""The super-resolution networks: RefSR with SSEN (and its baseline), RCAN, RCAN + SSEN for
self-similarity SR, and the PatchGAN discriminator (paper Sec. 3.4-3.5, Fig. 2 and 4; docs/choices.md).

All take images NHWC in [0, 1] and return `scale`x larger images (not clipped). Every LR size
H, W >= 1 gives exactly (scale*H, scale*W).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssen_jax import ops
from ssen_jax.models.layers import (DEFAULT_CHUNK, DEFAULT_DENSE_MAX, CorrelationPrior, ResBlock,
                                    ResidualGroup, conv, leaky_relu)
from ssen_jax.models.ssen import SSEN

Dtype = Any


def _log2_scale(scale: int) -> int:
  steps = int(round(math.log2(scale)))
  if scale < 2 or 2**steps != scale:
    raise ValueError(f'scale must be a power of two >= 2, got {scale}')
  return steps


class Upsampler(nn.Module):
  """[conv3x3(C -> 4C), pixel shuffle x2] repeated log2(scale) times, then conv3x3(C -> 3).

  The last convolution starts at zero (our choice), so an untrained network outputs exactly the
  bicubic global skip: training starts from the bicubic baseline instead of from noise.
  """
  features: int
  scale: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(_log2_scale(self.scale)):
      x = ops.pixel_shuffle(conv(4 * self.features, name=f'conv_{i}', dtype=self.dtype)(x), 2)
    return conv(3, name='conv_out', dtype=self.dtype, zero_init=True)(x)


class RefSRNet(nn.Module):
  """Reference-based SR (paper Fig. 2); `use_ssen=False` is the paper's "Baseline" row.

  F_lr = ResBlocks(conv3x3(LR)); F_ref = ResBlocks(two stride-2 conv3x3 + LeakyReLU(ref)) with the
  same (shared) residual blocks; R = SSEN(F_lr, F_ref); conv1x1(concat(F_lr, R)) -> ResBlocks ->
  conv3x3 -> + F_lr -> Upsampler -> + bicubic(LR). The baseline fuses F_lr alone.

  `match_radius` r > 0 adds a correlation prior (not in the paper; docs/choices.md): the reference
  is box-averaged to the LR grid and encoded like the LR image (conv_lr + the shared blocks), and
  the soft arg-max of its cosine similarity to F_lr within r LR pixels steers SSEN's first layer.

  `learned_offsets` / `prior_flow` (default True) switch off SSEN's own offsets / the prior's flow
  without changing the parameters, and `fixed_flow` replaces the flow by a constant (`SSEN`): the
  reference-use probe's ablations (`ssen_jax.eval.probe`) and the "prior only" training control.

  `ref_prewarp` (with the prior; not in the paper, docs/choices.md): the HR reference image is
  resampled by scale x the prior's flow (`ops.warp_by_flow`) before its features are extracted,
  instead of moving the LR-grid features by the flow in SSEN's first layer: a displacement of a
  fraction of an LR pixel then moves the reference at HR resolution, which resampling stride-4
  features cannot reproduce.

  `match_phases` p > 1 (with the prior; not in the paper): the prior searches at 1/p LR pixel
  resolution, matching F_lr against the reference moved by 0, s/p, ..., (p-1)s/p HR pixels per
  axis (p^2 versions, s the scale) before it is brought to the LR grid (`ops.match_flow_phases`).
  """
  features: int = 64
  num_extract_blocks: int = 5
  num_recon_blocks: int = 16
  num_dcn_layers: int = 3
  use_nonlocal: bool = True
  use_ssen: bool = True
  offset_groups: int = 1
  match_radius: int = 0
  match_local_radius: int = 0
  learned_offsets: bool = True
  prior_flow: bool = True
  fixed_flow: tuple[float, float] | None = None
  ref_prewarp: bool = False
  match_phases: int = 1
  scale: int = 4
  nonlocal_chunk: int = DEFAULT_CHUNK
  nonlocal_dense_max: int = DEFAULT_DENSE_MAX
  dtype: Dtype = jnp.float32

  def setup(self):
    c, d = self.features, self.dtype
    self.conv_lr = conv(c, dtype=d)
    self.ref_down = [conv(c, 3, 2, dtype=d) for _ in range(_log2_scale(self.scale))]
    self.extract = [ResBlock(c, d) for _ in range(self.num_extract_blocks)]
    if self.use_ssen:
      self.ssen = SSEN(c, self.num_dcn_layers, self.use_nonlocal, self.offset_groups,
                       self.learned_offsets, self.nonlocal_chunk, self.nonlocal_dense_max, d)
      if self.match_radius:
        self.matcher = CorrelationPrior(self.match_radius, local_radius=self.match_local_radius)
    self.fuse = conv(c, 1, dtype=d)
    self.recon = [ResBlock(c, d) for _ in range(self.num_recon_blocks)]
    self.conv_recon = conv(c, dtype=d)
    self.upsampler = Upsampler(c, self.scale, d)

  def _extract(self, x: jax.Array) -> jax.Array:
    for block in self.extract:
      x = block(x)
    return x

  def _prior(self, f_lr: jax.Array, ref: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The correlation prior's (flow, statistics): F_lr against the encoded, box-averaged
    reference, or against each of its `match_phases`^2 sub-pixel versions."""
    p = self.match_phases
    if p <= 1:
      return self.matcher(f_lr, self.lr_features(ops.box_downsample(ref, self.scale)))
    if self.scale % p:
      raise ValueError(f'match_phases {p} does not divide the scale {self.scale}')
    step = self.scale // p
    shifts = [(i * step, j * step) for i in range(p) for j in range(p)]
    n = ref.shape[0]
    versions = jnp.concatenate([ops.box_downsample(ops.shift_image(ref, sy, sx), self.scale)
                                for sy, sx in shifts], axis=0)
    feats = self.lr_features(versions)  # One pass for every version: (p^2 N, h, w, C).
    return self.matcher(f_lr, [feats[i * n:(i + 1) * n] for i in range(len(shifts))],
                        [(sy / self.scale, sx / self.scale) for sy, sx in shifts])

  def _used_flow(self, prior: tuple | None, f_lr: jax.Array) -> jax.Array | None:
    """The flow SSEN's first layer (or the reference pre-warp) applies: the constant `fixed_flow`,
    else the prior's (zeros with `prior_flow=False`); None without either. The one place these
    switches are resolved."""
    if self.fixed_flow is not None:
      return jnp.broadcast_to(jnp.asarray(self.fixed_flow, jnp.float32), f_lr.shape[:3] + (2,))
    if prior is None:
      return None
    return prior[0] if self.prior_flow else jnp.zeros_like(prior[0])

  def lr_features(self, lr: jax.Array) -> jax.Array:
    """F_lr (N, H, W, C) of an LR image (N, H, W, 3)."""
    return self._extract(self.conv_lr(lr.astype(self.dtype)))

  def ref_features(self, ref: jax.Array) -> jax.Array:
    """F_ref (N, H, W, C) of a reference (N, scale*H, scale*W, 3), on the LR grid."""
    x = ref.astype(self.dtype)
    for down in self.ref_down:
      x = leaky_relu(down(x))
    return self._extract(x)

  def __call__(self, lr: jax.Array, ref: Optional[jax.Array] = None, *,
               return_offsets: bool = False):
    """Super-resolves lr (N, H, W, 3) with ref (N, scale*H, scale*W, 3).

    Returns:
      (N, scale*H, scale*W, 3) float32; with `return_offsets` (SSEN only), also SSEN's per-layer
      offsets and masks.
    """
    n, h, w, _ = lr.shape
    f_lr = self.lr_features(lr)
    offsets = masks = None
    if self.use_ssen:
      if ref is None:
        raise ValueError('the SSEN variant needs a reference image')
      if ref.shape[1:3] != (self.scale * h, self.scale * w):
        raise ValueError(f'reference must be {self.scale}x the LR size {(h, w)}, got '
                         f'{ref.shape[1:3]}; see ssen_jax.data.images.fit_reference')
      prior = None
      if self.match_radius:
        prior = self._prior(f_lr, ref.astype(jnp.float32))
        self.sow('intermediates', 'prior_flow', prior[0])  # The probe reads it (as computed).
      flow = self._used_flow(prior, f_lr)
      prewarp = self.ref_prewarp and flow is not None
      if prewarp:
        ref = ops.warp_by_flow(ref.astype(jnp.float32), flow, self.scale)
      used = None if flow is None else (flow, None if prior is None else prior[1])
      aligned, offsets, masks = self.ssen(f_lr, self.ref_features(ref), prior=used,
                                          flow_in_offsets=not prewarp, return_offsets=True)
      # Kept only when applied with mutable=['intermediates'] (the alignment loss of training).
      self.sow('intermediates', 'aligned', aligned)
      fused = self.fuse(jnp.concatenate([f_lr, aligned], axis=-1))
    else:
      fused = self.fuse(f_lr)
    x = fused
    for block in self.recon:
      x = block(x)
    x = self.conv_recon(x) + f_lr
    sr = self.upsampler(x).astype(jnp.float32) + ops.bicubic_upsample(
        lr.astype(jnp.float32), self.scale)
    if return_offsets:
      return sr, offsets, masks
    return sr


class RCAN(nn.Module):
  """RCAN (Zhang et al. 2018), optionally with SSEN on its own features (paper Fig. 4).

  head conv3x3 -> [SSEN(F, F) fused by conv1x1(concat(F, R))] -> residual groups -> conv3x3 ->
  + head features -> Upsampler -> + bicubic(LR). We replace RCAN's fixed mean shift by the same
  global bicubic skip as the RefSR network: both centre the signal the body learns, and this one
  makes the two families share one output convention. SSEN is fused right after the head (our
  choice, docs/choices.md).
  """
  features: int = 64
  num_groups: int = 10
  num_blocks: int = 20
  reduction: int = 16
  use_ssen: bool = False
  num_dcn_layers: int = 3
  use_nonlocal: bool = True
  offset_groups: int = 1
  scale: int = 4
  nonlocal_chunk: int = DEFAULT_CHUNK
  nonlocal_dense_max: int = DEFAULT_DENSE_MAX
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, lr: jax.Array, ref: Optional[jax.Array] = None, *,
               return_offsets: bool = False):
    """Super-resolves lr (N, H, W, 3); `ref` is ignored (the input is its own reference).

    Returns:
      (N, scale*H, scale*W, 3) float32; with `return_offsets` (SSEN only), also offsets and masks.
    """
    del ref
    c, d = self.features, self.dtype
    head = conv(c, name='head', dtype=d)(lr.astype(d))
    x = head
    offsets = masks = None
    if self.use_ssen:
      aligned, offsets, masks = SSEN(c, self.num_dcn_layers, self.use_nonlocal,
                                     self.offset_groups, nonlocal_chunk=self.nonlocal_chunk,
                                     nonlocal_dense_max=self.nonlocal_dense_max, dtype=d,
                                     name='ssen')(
                                         head, head, return_offsets=True)
      x = conv(c, 1, name='fuse', dtype=d)(jnp.concatenate([head, aligned], axis=-1))
    for i in range(self.num_groups):
      x = ResidualGroup(c, self.num_blocks, self.reduction, d, name=f'groups_{i}')(x)
    x = conv(c, name='conv_body', dtype=d)(x) + head
    sr = Upsampler(c, self.scale, d, name='upsampler')(x).astype(jnp.float32)
    sr = sr + ops.bicubic_upsample(lr.astype(jnp.float32), self.scale)
    if return_offsets:
      return sr, offsets, masks
    return sr


class PatchDiscriminator(nn.Module):
  """PatchGAN discriminator (Isola et al.; paper Eq. 5).

  4x4 convolutions with padding 1: 64 (stride 2), 128 (stride 2), 256 (stride 2), 512 (stride 1),
  each followed by LeakyReLU(0.2), then a 4x4 convolution to one logit per patch. No normalisation
  layers (our choice: batch statistics would couple the examples of a sharded batch).
  """
  features: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, 3) in [0, 1] -> logits (N, h, w, 1), float32."""
    x = x.astype(self.dtype)
    for i, (mult, stride) in enumerate([(1, 2), (2, 2), (4, 2), (8, 1)]):
      x = nn.Conv(self.features * mult, (4, 4), strides=(stride, stride),
                  padding=((1, 1), (1, 1)), dtype=self.dtype, name=f'conv_{i}')(x)
      x = nn.leaky_relu(x, negative_slope=0.2)
    x = nn.Conv(1, (4, 4), padding=((1, 1), (1, 1)), dtype=self.dtype, name='conv_out')(x)
    return x.astype(jnp.float32)
