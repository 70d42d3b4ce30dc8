"""The PyTorch peers: torch set-up, the reference network holding our weights, devices.

torch is optional (the `test` extra) and imported only with `--compare torch`.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import numpy as np

from ssen_jax.interop import convert


def import_torch(threads: Optional[int] = None):
  """torch, with its thread count pinned; exits with one line if it is not installed."""
  try:
    import torch
    import torchvision  # noqa: F401  (before tensorflow: docs/conventions.md, "Environment")
  except ImportError as e:
    sys.exit(f'error: --compare torch needs torch and torchvision ({e.name} is not installed; '
             "pip install -e '.[test]').")
  torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
  return torch


def torch_model(torch, config, params):
  """The reference network of config.model holding `params` (converted by interop.convert)."""
  from ssen_jax.interop import torch_reference  # pylint: disable=import-outside-toplevel
  m = config.model
  # The correlation prior exists in the RefSR networks only (as in `ssen_jax.models.create_model`).
  prior = ({'match_radius': m.get('match_radius', 0)} if m.variant in ('ssen', 'baseline')
           else {})
  net = torch_reference.build(
      m.variant, features=m.features, num_extract_blocks=m.num_extract_blocks,
      num_recon_blocks=m.num_recon_blocks, num_dcn_layers=m.num_dcn_layers,
      use_nonlocal=m.use_nonlocal, offset_groups=m.offset_groups, scale=m.scale, **prior)
  state = {k: torch.from_numpy(v) for k, v in convert.params_to_state_dict(params).items()}
  net.load_state_dict(state, strict=True)
  return net


def nchw(torch, x, device='cpu'):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))).to(device)


def charbonnier(torch, sr, hr, eps: float):
  """The training loss, mean(sqrt((sr - hr)^2 + eps^2)), in torch (`optim.charbonnier_loss`)."""
  return torch.sqrt((sr - hr) ** 2 + eps ** 2).mean()


def sync(torch, device):
  """Waits for the queued GPU work (torch calls return before a CUDA kernel has run)."""
  if device == 'cuda':
    torch.cuda.synchronize()


def resolve_torch_device(torch, requested: str) -> str:
  """'cpu' or 'cuda'; 'auto' follows JAX's backend, so both frameworks use the same chip."""
  import jax
  if requested == 'auto':
    requested = 'cuda' if jax.default_backend() == 'gpu' else 'cpu'
  if requested == 'cuda' and not torch.cuda.is_available():
    sys.exit('error: --torch_device cuda, but torch sees no CUDA device.')
  return requested


