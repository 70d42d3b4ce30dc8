"""Local feature matching: cosine correlation over a window and its soft arg-max displacement.

Used by the correlation prior of SSEN's first deformable layer (`RefSRNet(match_radius=r)`,
docs/choices.md, "Correlation prior"): the LR features are compared with the features of the
reference brought down to the LR grid by the same encoder, at every displacement within r LR
pixels, and the expected displacement under a softmax of the similarities is where the first
deformable convolution starts to sample.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def displacements(radius: int) -> np.ndarray:
  """The (2r+1)^2 displacements (dy, dx) of a window, row-major, as float32 (K, 2)."""
  d = np.arange(-radius, radius + 1, dtype=np.float32)
  dy, dx = np.meshgrid(d, d, indexing='ij')
  return np.stack([dy.ravel(), dx.ravel()], axis=-1)


def box_downsample(x: jax.Array, factor: int) -> jax.Array:
  """Mean over factor x factor blocks of x (N, f*H, f*W, C) -> (N, H, W, C)."""
  n, h, w, c = x.shape
  if h % factor or w % factor:
    raise ValueError(f'spatial size {(h, w)} is not a multiple of {factor}')
  return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def local_correlation(a: jax.Array, b: jax.Array, radius: int) -> tuple[jax.Array, jax.Array]:
  """Cosine similarity of a[i] and b[i + d] (maps centred) for each displacement within `radius`.

  Args:
    a, b: (N, H, W, C) features on the same grid.
    radius: r >= 1; displacements (dy, dx) in [-r, r]^2, ordered as `displacements(r)`.

  Returns:
    corr (N, H, W, K) float32 in [-1, 1] (0 where i + d is outside b), and valid (1, H, W, K)
    bool: whether i + d lies inside the image.
  """
  n, h, w, _ = a.shape
  eps = 1e-6
  # Each feature map centred on its own spatial mean first (a zero-mean normalised correlation):
  # features of every position share a large common component, which would make all cosines ~1.
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  a = a - jnp.mean(a, axis=(1, 2), keepdims=True)
  b = b - jnp.mean(b, axis=(1, 2), keepdims=True)
  a = a * jax.lax.rsqrt(jnp.sum(a * a, axis=-1, keepdims=True) + eps)
  b = b * jax.lax.rsqrt(jnp.sum(b * b, axis=-1, keepdims=True) + eps)
  r = radius
  bp = jnp.pad(b, ((0, 0), (r, r), (r, r), (0, 0)))
  inside = jnp.pad(jnp.ones((1, h, w), bool), ((0, 0), (r, r), (r, r)))
  corr, valid = [], []
  for dy, dx in displacements(r).astype(int):
    corr.append(jnp.sum(a * bp[:, r + dy:r + dy + h, r + dx:r + dx + w], axis=-1))
    valid.append(inside[:, r + dy:r + dy + h, r + dx:r + dx + w])
  return jnp.stack(corr, axis=-1), jnp.stack(valid, axis=-1)


def soft_argmax_displacement(corr: jax.Array, valid: jax.Array, radius: int,
                             temperature: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Expected displacement under softmax(temperature * corr) over the valid displacements.

  Returns:
    flow (N, H, W, 2) float32 as (dy, dx) in grid pixels, and the match statistics
    (N, H, W, 2): the largest softmax weight (how peaked the match is) and the largest valid
    similarity (how good it is).
  """
  logits = jnp.where(valid, corr * temperature, -1e9)
  weights = jax.nn.softmax(logits, axis=-1)
  flow = weights @ jnp.asarray(displacements(radius))
  best = jnp.max(jnp.where(valid, corr, -1.0), axis=-1)
  stats = jnp.stack([jnp.max(weights, axis=-1), best], axis=-1)
  return flow, stats
