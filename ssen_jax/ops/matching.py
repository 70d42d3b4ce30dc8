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


def _centred_unit(x: jax.Array) -> jax.Array:
  """x (N, H, W, C) minus its spatial mean, then scaled to unit length at every position.

  A zero-mean normalised correlation: features of every position share a large common
  component, which would make all cosines ~1.
  """
  x = x.astype(jnp.float32)
  x = x - jnp.mean(x, axis=(1, 2), keepdims=True)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-6)


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
  a, b = _centred_unit(a), _centred_unit(b)
  r = radius
  bp = jnp.pad(b, ((0, 0), (r, r), (r, r), (0, 0)))

  def row(dy):  # The 2r+1 displacements (dy, -r..r) of one window row: (N, H, W, 2r+1).
    rows = jax.lax.dynamic_slice_in_dim(bp, r + dy, h, axis=1)
    return jnp.stack([jnp.sum(a * rows[:, :, r + dx:r + dx + w], axis=-1)
                      for dx in range(-r, r + 1)], axis=-1)

  # A loop over the window's rows at run time (not (2r+1)^2 traced slices): wide windows compile
  # in seconds and hold one row of products at a time.
  corr = jax.lax.map(row, jnp.arange(-r, r + 1))  # (2r+1, N, H, W, 2r+1)
  corr = jnp.moveaxis(corr, 0, 3).reshape(n, h, w, (2 * r + 1) ** 2)
  # Built from iotas, not as a constant of the program's size. Outside, b's padding gave 0.
  d = jnp.asarray(displacements(r), jnp.int32)
  ys = jnp.arange(h)[:, None, None] + d[None, None, :, 0]
  xs = jnp.arange(w)[None, :, None] + d[None, None, :, 1]
  valid = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
  return corr, valid[None]


def _weights_and_stats(corr: jax.Array, valid: jax.Array,
                       temperature: jax.Array) -> tuple[jax.Array, jax.Array]:
  """softmax(temperature * corr) over the valid candidates (last axis), and the statistics: the
  largest weight (how peaked the match is) and the largest valid similarity (how good it is)."""
  weights = jax.nn.softmax(jnp.where(valid, corr * temperature, -1e9), axis=-1)
  best = jnp.max(jnp.where(valid, corr, -1.0), axis=-1)
  return weights, jnp.stack([jnp.max(weights, axis=-1), best], axis=-1)


def _near_best(scores: jax.Array, window: jax.Array, disp_y: jax.Array, disp_x: jax.Array,
               local_radius: int) -> jax.Array:
  """The candidates within `local_radius` (per axis) of each position's best one, inside `window`.

  scores, window: (..., K); disp_y, disp_x: (..., K) candidate displacements (broadcastable)."""
  best = jnp.argmax(jnp.where(window, scores, -jnp.inf), axis=-1)[..., None]
  dy = jnp.broadcast_to(disp_y, scores.shape)
  dx = jnp.broadcast_to(disp_x, scores.shape)
  by = jnp.take_along_axis(dy, best, axis=-1)
  bx = jnp.take_along_axis(dx, best, axis=-1)
  return window & (jnp.abs(dy - by) <= local_radius) & (jnp.abs(dx - bx) <= local_radius)


def soft_argmax_displacement(corr: jax.Array, valid: jax.Array, radius: int,
                             temperature: jax.Array,
                             local_radius: int = 0) -> tuple[jax.Array, jax.Array]:
  """Expected displacement under softmax(temperature * corr) over the valid displacements.

  With `local_radius` l > 0 the expectation is taken only over the displacements within l grid
  pixels (per axis) of the best one: a sub-pixel estimate around the arg max, which a wide window's
  many weak candidates no longer pull towards the window's centre (docs/choices.md, "Local soft
  arg-max"). The statistics are those of the whole window either way.

  Returns:
    flow (N, H, W, 2) float32 as (dy, dx) in grid pixels, and the match statistics
    (N, H, W, 2): the largest softmax weight (how peaked the match is) and the largest valid
    similarity (how good it is).
  """
  weights, stats = _weights_and_stats(corr, valid, temperature)
  d = jnp.asarray(displacements(radius))
  if local_radius:
    near = _near_best(corr, valid, d[:, 0], d[:, 1], local_radius)
    weights, _ = _weights_and_stats(corr, near, temperature)
  flow = weights @ d
  return flow, stats


def dense_match(a: jax.Array, b: jax.Array, radius: int, temperature: jax.Array,
                local_radius: int = 0) -> tuple[jax.Array, jax.Array]:
  """`match_flow` through the full (H W) x (H W) similarity matrix of each image, masked to the
  window: one matrix product instead of (2r+1)^2 shifted products. The same flow and statistics
  as `local_correlation` + `soft_argmax_displacement` (up to float rounding)."""
  n, h, w, c = a.shape
  a = _centred_unit(a).reshape(n, h * w, c)
  b = _centred_unit(b).reshape(n, h * w, c)
  corr = jnp.einsum('npc,nqc->npq', a, b)
  ys, xs = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing='ij')
  pos = jnp.stack([ys.ravel(), xs.ravel()], axis=-1).astype(jnp.float32)  # (P, 2) as (y, x).
  window = jnp.all(jnp.abs(pos[None, :, :] - pos[:, None, :]) <= radius, axis=-1)  # (P, Q).
  weights, stats = _weights_and_stats(corr, window, temperature)
  if local_radius:
    near = _near_best(corr, window[None], pos[None, None, :, 0], pos[None, None, :, 1],
                      local_radius)
    weights, _ = _weights_and_stats(corr, near, temperature)
  flow = weights @ pos - pos  # sum_q w_q (q - p), as the weights sum to 1.
  return flow.reshape(n, h, w, 2), stats.reshape(n, h, w, 2)


def match_flow(a: jax.Array, b: jax.Array, radius: int, temperature: jax.Array,
               local_radius: int = 0) -> tuple[jax.Array, jax.Array]:
  """Soft arg-max displacement of each position of `a` in `b` within `radius`, and its statistics.

  Args:
    a, b: (N, H, W, C) features on the same grid.
    radius: r >= 1, the search window's half side in grid pixels.
    temperature: scalar; the softmax is over temperature * cosine similarity.
    local_radius: 0, the expectation over the whole window; l > 0, over the displacements within
      l grid pixels of the best match (`soft_argmax_displacement`).

  Returns:
    As `soft_argmax_displacement`. Maps of at most four times the window's positions go through
    `dense_match` (a matrix product wastes less than (2r+1)^2 shifted products there: a window
    wider than the map is mostly outside it); larger ones through `local_correlation`, whose
    memory grows with the window, not with the map squared.
  """
  _, h, w, _ = a.shape
  if h * w <= 4 * (2 * radius + 1) ** 2:
    return dense_match(a, b, radius, temperature, local_radius)
  corr, valid = local_correlation(a, b, radius)
  return soft_argmax_displacement(corr, valid, radius, temperature, local_radius)


def warp_by_flow(image: jax.Array, flow: jax.Array, factor: int) -> jax.Array:
  """image (N, f*H, f*W, C) resampled at each pixel q + f * flow[q // f] (bilinear, edges extended).

  `flow` (N, H, W, 2) is a coarse-grid displacement (dy, dx) in coarse pixels, as `match_flow`
  gives: out[q] = image[q + f * flow(q // f)], so content that the flow says lies d coarse pixels
  away is brought to q, at the fine grid's resolution (a shift of half a coarse pixel moves the
  image by f / 2 fine pixels, which resampling features on the coarse grid cannot reproduce).
  Differentiable in both arguments.
  """
  n, hh, ww, c = image.shape
  h, w = flow.shape[1:3]
  if (hh, ww) != (factor * h, factor * w):
    raise ValueError(f'image {(hh, ww)} is not {factor}x the flow\'s grid {(h, w)}')
  fine = jnp.repeat(jnp.repeat(flow.astype(jnp.float32), factor, axis=1), factor, axis=2)
  ys = jnp.arange(hh, dtype=jnp.float32)[None, :, None] + factor * fine[..., 0]
  xs = jnp.arange(ww, dtype=jnp.float32)[None, None, :] + factor * fine[..., 1]
  ys, xs = jnp.clip(ys, 0, hh - 1), jnp.clip(xs, 0, ww - 1)
  y0, x0 = jnp.floor(ys), jnp.floor(xs)
  wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  y1, x1 = jnp.minimum(y0 + 1, hh - 1), jnp.minimum(x0 + 1, ww - 1)
  flat = image.reshape(n, hh * ww, c)

  def at(y, x):
    idx = (y * ww + x).reshape(n, hh * ww, 1)
    return jnp.take_along_axis(flat, idx, axis=1).reshape(n, hh, ww, c)

  top = (1 - wx) * at(y0, x0) + wx * at(y0, x1)
  bottom = (1 - wx) * at(y1, x0) + wx * at(y1, x1)
  return ((1 - wy) * top + wy * bottom).astype(image.dtype)


def match_flow_phases(a: jax.Array, bs: list[jax.Array], offsets: list[tuple[float, float]],
                      radius: int, temperature: jax.Array,
                      local_radius: int = 0) -> tuple[jax.Array, jax.Array]:
  """`match_flow` over several versions of the reference at once, each moved by a known fraction
  of a grid pixel: candidate displacement d of version i stands for d + offsets[i].

  With the reference's sub-pixel phases as versions (the HR reference moved by whole HR pixels
  before it is brought to the LR grid), one search compares every displacement at HR-pixel
  resolution: the soft arg-max (whole window, or `local_radius` around the best candidate) and the
  statistics run over all versions' candidates together.

  Args:
    a: (N, H, W, C) features.
    bs: features (N, H, W, C) of each version of the reference.
    offsets: (dy, dx) in grid pixels, one per version.
    radius, temperature, local_radius: as `match_flow`.
  """
  n, h, w, c = a.shape
  if len(bs) != len(offsets) or not bs:
    raise ValueError(f'{len(bs)} reference versions but {len(offsets)} offsets')
  corrs, valids, dys, dxs = [], [], [], []
  if h * w <= 4 * (2 * radius + 1) ** 2:  # Dense, as `dense_match`: one product per version.
    au = _centred_unit(a).reshape(n, h * w, c)
    ys, xs = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing='ij')
    pos = jnp.stack([ys.ravel(), xs.ravel()], axis=-1).astype(jnp.float32)
    rel = pos[None, :, :] - pos[:, None, :]  # (P, Q, 2): q - p.
    window = jnp.all(jnp.abs(rel) <= radius, axis=-1)[None]
    for b, (oy, ox) in zip(bs, offsets):
      corrs.append(jnp.einsum('npc,nqc->npq', au, _centred_unit(b).reshape(n, h * w, c)))
      valids.append(window)
      dys.append(rel[None, ..., 0] + oy)
      dxs.append(rel[None, ..., 1] + ox)
  else:
    d = jnp.asarray(displacements(radius))
    for b, (oy, ox) in zip(bs, offsets):
      corr, valid = local_correlation(a, b, radius)
      corrs.append(corr)
      valids.append(valid)
      dys.append(d[:, 0] + oy)
      dxs.append(d[:, 1] + ox)
  corr = jnp.concatenate(corrs, axis=-1)
  shape = corr.shape[:-1]
  valid = jnp.concatenate([jnp.broadcast_to(v, shape + v.shape[-1:]) for v in valids], axis=-1)
  dy = jnp.concatenate([jnp.broadcast_to(x, shape + x.shape[-1:]) for x in dys], axis=-1)
  dx = jnp.concatenate([jnp.broadcast_to(x, shape + x.shape[-1:]) for x in dxs], axis=-1)
  weights, stats = _weights_and_stats(corr, valid, temperature)
  if local_radius:
    weights, _ = _weights_and_stats(corr, _near_best(corr, valid, dy, dx, local_radius),
                                    temperature)
  flow = jnp.stack([jnp.sum(weights * dy, -1), jnp.sum(weights * dx, -1)], axis=-1)
  return flow.reshape(n, h, w, 2), stats.reshape(n, h, w, 2)


def shift_image(x: jax.Array, dy: int, dx: int) -> jax.Array:
  """x (N, H, W, C) with out[i, j] = x[i + dy, j + dx] (dy, dx >= 0), the edge repeated."""
  h, w = x.shape[1:3]
  if dy == 0 and dx == 0:
    return x
  x = jnp.pad(x, ((0, 0), (0, dy), (0, dx), (0, 0)), mode='edge')
  return x[:, dy:dy + h, dx:dx + w]
