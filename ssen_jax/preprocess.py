"""Bringing a user's reference image to the size the network expects (numpy only).

The RefSR network aligns a reference of exactly scale·H x scale·W with an H x W input. A reference
of another size is brought there without rescaling it — its textures must stay at HR scale, which
is the point of a reference: each dimension longer than the target is centre-cropped; each shorter
one is padded symmetrically (mirror, edge pixel repeated) on both sides, half each (the extra pixel
after). Evaluation (CUFED5 references have their own sizes), training on CUFED (refs smaller than
160 px) and `infer` all apply this one rule.
"""
from __future__ import annotations

import numpy as np


def fit_reference(ref: np.ndarray, height: int, width: int) -> np.ndarray:
  """Centre-crops or mirror-pads `ref` (H', W', C) to (height, width, C)."""
  if height < 1 or width < 1:
    raise ValueError(f'target size must be positive, got {(height, width)}')
  out = ref
  for axis, target in ((0, height), (1, width)):
    size = out.shape[axis]
    if size > target:
      start = (size - target) // 2
      out = np.take(out, np.arange(start, start + target), axis=axis)
    elif size < target:
      before = (target - size) // 2
      pad = [(0, 0)] * out.ndim
      pad[axis] = (before, target - size - before)
      out = np.pad(out, pad, mode='symmetric')
  return out


def to_rgb(img: np.ndarray) -> np.ndarray:
  """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3); alpha is dropped."""
  if img.ndim == 2:
    img = img[..., None]
  if img.shape[-1] == 1:
    return np.repeat(img, 3, axis=-1)
  if img.shape[-1] == 4:
    return img[..., :3]
  if img.shape[-1] != 3:
    raise ValueError(f'expected 1, 3 or 4 channels, got {img.shape[-1]}')
  return img
