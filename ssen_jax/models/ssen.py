"""The Similarity Search and Extraction Network (paper Sec. 3.2-3.3, Fig. 2-3).

SSEN aligns reference features to the input with `num_dcn_layers` stacked modulated deformable
convolutions. Layer l predicts its offsets and mask from DOE_l(concat(F_lr, R_{l-1})) and computes
R_l = DCN_l(R_{l-1}), with R_0 = F_ref. There is no skip connection inside the stack: each layer's
features are aligned differently (paper Sec. 4.4). LeakyReLU(0.1) sits between layers, none after the
last (our choice; the paper is silent).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssen_jax import ops
from ssen_jax.models.layers import (DEFAULT_CHUNK, DEFAULT_DENSE_MAX, ModulatedDeformConv,
                                    NonLocalBlock, SplitConv, conv, leaky_relu)

Dtype = Any


class DynamicOffsetEstimator(nn.Module):
  """Multi-scale offset estimator with non-local blocks (paper Fig. 3).

  concat(F_lr, R) -> conv3x3 -> three stride-2 conv3x3 (1/2, 1/4, 1/8) -> non-local at 1/8 ->
  up to 1/4, + skip -> non-local -> up to 1/2, + skip -> non-local -> up to 1/1, + skip -> conv3x3.
  Every H, W >= 1 works: stride-2 convolutions give ceil(H/2) and `ops.upsample2x` cuts its result
  back to the skip connection's exact size.
  """
  features: int
  use_nonlocal: bool = True
  nonlocal_chunk: int = DEFAULT_CHUNK
  nonlocal_dense_max: int = DEFAULT_DENSE_MAX
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, f_lr: jax.Array, r: jax.Array, match: jax.Array | None = None) -> jax.Array:
    """conv_in(concat(F_lr, R[, match])) (N, H, W, 2C[+4]) -> ... -> (N, H, W, C)."""
    c = self.features
    inputs = (f_lr, r) if match is None else (f_lr, r, match.astype(f_lr.dtype))
    skips = [leaky_relu(SplitConv(c, dtype=self.dtype, name='conv_in')(*inputs))]
    for i in range(3):
      skips.append(leaky_relu(conv(c, 3, 2, name=f'down_{i}', dtype=self.dtype)(skips[-1])))
    y = skips.pop()  # 1/8 scale.
    for i in range(3):
      if self.use_nonlocal:
        y = NonLocalBlock(c, self.nonlocal_chunk, self.nonlocal_dense_max, self.dtype,
                          name=f'nonlocal_{i}')(y)
      skip = skips.pop()
      y = ops.upsample2x(y, skip.shape[1], skip.shape[2]) + skip
    return conv(c, name='conv_out', dtype=self.dtype)(y)


class SSEN(nn.Module):
  """Stacked deformable convolutions steered by dynamic offset estimators.

  Attributes:
    features: C, channels of F_lr and F_ref.
    num_dcn_layers: L, 0-4 (paper Tab. 4; 3 is the paper's choice). With 0, SSEN returns F_ref.
    use_nonlocal: the non-local blocks of the estimators (paper Tab. 4, bottom).
    offset_groups: deformable groups of each layer (DCNv2's default, 1; the paper is silent).
    learned_offsets: False replaces every layer's predicted offsets by zeros, masks kept (the
      "prior only" control, or a test-time ablation; `ModulatedDeformConv`).
  """
  features: int = 64
  num_dcn_layers: int = 3
  use_nonlocal: bool = True
  offset_groups: int = 1
  learned_offsets: bool = True
  nonlocal_chunk: int = DEFAULT_CHUNK
  nonlocal_dense_max: int = DEFAULT_DENSE_MAX
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, f_lr: jax.Array, f_ref: jax.Array, *, prior: tuple | None = None,
               flow_in_offsets: bool = True, return_offsets: bool = False):
    """Aligns f_ref (N, H, W, C) to f_lr (N, H, W, C).

    `prior`: optional (flow (N, H, W, 2), match statistics (N, H, W, 2)) of a correlation prior
    (`CorrelationPrior`): the flow is added to the first layer's offsets (the later layers refine
    features already moved), and flow and statistics join every estimator's input; statistics
    None: a flow alone (the probe's constant `fixed_flow` on a model without a prior), added to
    the offsets only.
    `flow_in_offsets=False`: the flow was applied already (the reference pre-warp of
    `RefSRNet(ref_prewarp=True)`); it only informs the estimators.

    Returns:
      R_L (N, H, W, C); with `return_offsets`, also lists of each layer's offsets
      (N, H, W, G*9*2) and masks (N, H, W, G*9).
    """
    r = f_ref
    flow, match = (None, None)
    if prior is not None:
      flow, stats = prior
      match = None if stats is None else jnp.concatenate([flow, stats], -1)
    offsets, masks = [], []
    for l in range(self.num_dcn_layers):
      cond = DynamicOffsetEstimator(self.features, self.use_nonlocal, self.nonlocal_chunk,
                                    self.nonlocal_dense_max, self.dtype,
                                    name=f'doe_{l}')(f_lr, r, match)
      r, off, mask = ModulatedDeformConv(self.features, self.offset_groups,
                                         learned_offsets=self.learned_offsets, dtype=self.dtype,
                                         name=f'dcn_{l}')(
                                             r, cond,
                                             offset_prior=flow if l == 0 and flow_in_offsets
                                             else None,
                                             return_offsets=True)
      offsets.append(off)
      masks.append(mask)
      if l < self.num_dcn_layers - 1:
        r = leaky_relu(r)
    if return_offsets:
      return r, offsets, masks
    return r
