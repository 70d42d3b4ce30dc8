"""Flax networks of SSEN. Imports jax, flax and numpy only."""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from ssen_jax.models.layers import ModulatedDeformConv, NonLocalBlock, ResBlock
from ssen_jax.models.networks import RCAN, PatchDiscriminator, RefSRNet
from ssen_jax.models.ssen import SSEN, DynamicOffsetEstimator

VARIANTS = ('ssen', 'baseline', 'selfsim', 'rcan')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def create_model(cfg: Mapping[str, Any], dtype: str = 'float32'):
  """Builds the generator named by `cfg.variant` from a model config (see configs/refsr.py).

  Args:
    cfg: the `config.model` section: variant, scale, features and the variant's own fields.
    dtype: compute dtype, 'float32' or 'bfloat16' (parameters stay float32).
  """
  variant = cfg['variant']
  if dtype not in _DTYPES:
    raise ValueError(f'dtype must be one of {sorted(_DTYPES)}, got {dtype!r}')
  common = dict(features=cfg['features'], scale=cfg['scale'], dtype=_DTYPES[dtype],
                nonlocal_chunk=cfg['nonlocal_chunk'], nonlocal_dense_max=cfg['nonlocal_dense_max'])
  ssen = dict(num_dcn_layers=cfg['num_dcn_layers'], use_nonlocal=cfg['use_nonlocal'],
              offset_groups=cfg['offset_groups'])
  if variant in ('ssen', 'baseline'):
    return RefSRNet(num_extract_blocks=cfg['num_extract_blocks'],
                    num_recon_blocks=cfg['num_recon_blocks'], use_ssen=variant == 'ssen',
                    match_radius=cfg.get('match_radius', 0),
                    match_local_radius=cfg.get('match_local_radius', 0),
                    learned_offsets=cfg.get('learned_offsets', True),
                    ref_prewarp=cfg.get('ref_prewarp', False),
                    match_phases=cfg.get('match_phases', 1), **ssen, **common)
  if variant in ('selfsim', 'rcan'):
    return RCAN(num_groups=cfg['rcan_groups'], num_blocks=cfg['rcan_blocks'],
                reduction=cfg['rcan_reduction'], use_ssen=variant == 'selfsim', **ssen, **common)
  raise ValueError(f'unknown model variant {variant!r}; expected one of {VARIANTS}')


def uses_reference(variant: str) -> bool:
  """Whether the variant consumes an external reference image."""
  return variant == 'ssen'


def init_inputs(cfg: Mapping[str, Any], lr_side: int):
  """Zero inputs for `model.init`: (lr (1, n, n, 3), ref (1, s*n, s*n, 3) or None), n = lr_side.

  Parameter shapes do not depend on n; references only for variants that take one.
  """
  lr = jnp.zeros((1, lr_side, lr_side, 3), jnp.float32)
  side = cfg['scale'] * lr_side
  ref = jnp.zeros((1, side, side, 3), jnp.float32) if uses_reference(cfg['variant']) else None
  return lr, ref


__all__ = ['DynamicOffsetEstimator', 'ModulatedDeformConv', 'NonLocalBlock', 'PatchDiscriminator',
           'RCAN', 'RefSRNet', 'ResBlock', 'SSEN', 'VARIANTS', 'create_model', 'init_inputs',
           'uses_reference']
