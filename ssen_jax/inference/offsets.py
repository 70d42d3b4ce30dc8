"""Where SSEN looks: the sampling locations of the stacked deformable layers (paper Fig. 7).

For each chosen LR pixel, every sampling location of the L stacked deformable convolutions (9^L
per pixel, (9G)^L with G offset groups) is drawn on the reference, one colour per point, beside the
input with the points marked (`sampling_figure`; the command: `python -m ssen_jax.visualize_offsets`).

Composition (`compose_samples`): the output R_L at pixel p reads R_{L-1} at the nine positions
p + p_k + dp^L_k(p) (p_k the 3x3 grid, dp the predicted offsets). Each of those is a fractional
position q of R_{L-1}, which itself read R_{L-2} at q + p_k + dp^{L-1}_k(q), where dp^{L-1}(q) is
the offset map of layer L-1 bilinearly interpolated at q (edge values beyond the border). Going down
to R_0 = F_ref gives 9^L positions on the LR grid. (Exactly, a fractional q mixes four integer
pixels, each with its own nine samples; interpolating the offsets keeps one set of nine.) Each
location carries the product of the modulation masks along its path, zero once a sample falls
outside the zero-padded feature map (-1 < y < H, -1 < x < W fails): dots are drawn with opacity
proportional to that weight, and weight-0 dots are left out.

Coordinates: F_ref[i, j] comes from two stride-2 convolutions (padding 1), which centre output i
on input 2i, so it is centred on reference pixel (scale*i, scale*j): LR coordinates times scale.
For the self-similarity model (the input is its own reference) the reference panel is the
bicubic-upscaled input and LR pixel i is centred on HR pixel scale*i + (scale-1)/2.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw

from ssen_jax.data import images

# Tableau-10: distinguishable colours for up to ten points (then they repeat).
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
_TAPS = np.array([(i - 1, j - 1) for i in range(3) for j in range(3)], np.float64)  # tap=i*3+j
# The figure runs the model untiled (the offset maps of the whole image) and draws two panels at
# scale x the input: inputs are limited to this many LR pixels (crop the region of interest).
MAX_LR_PIXELS = 512 * 512
MIN_PANEL = 320  # Small images are enlarged (nearest) so that each panel is at least this wide.


def bilinear(field: np.ndarray, pos: np.ndarray) -> np.ndarray:
  """Samples field (H, W, C) at fractional positions pos (P, 2) [y, x], edges extended -> (P, C)."""
  h, w = field.shape[:2]
  y = np.clip(pos[:, 0], 0, h - 1)
  x = np.clip(pos[:, 1], 0, w - 1)
  y0 = np.minimum(np.floor(y).astype(int), max(h - 2, 0))
  x0 = np.minimum(np.floor(x).astype(int), max(w - 2, 0))
  y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
  fy, fx = (y - y0)[:, None], (x - x0)[:, None]
  return ((1 - fy) * ((1 - fx) * field[y0, x0] + fx * field[y0, x1]) +
          fy * ((1 - fx) * field[y1, x0] + fx * field[y1, x1]))


def compose_samples(offsets: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                    point: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """All sampling locations, on F_ref's LR grid, that feed R_L at `point`.

  Args:
    offsets: per layer (H, W, G*9*2), laid out [group][tap][dy, dx].
    masks: per layer (H, W, G*9), after the sigmoid.
    point: (y, x) LR pixel.

  Returns:
    positions ((9G)^L, 2) [y, x] in LR pixels and weights ((9G)^L,): the product of the masks along
    each path, 0 once a sample left the valid box.
  """
  h, w = offsets[0].shape[:2]
  pos = np.array([point], np.float64)
  weight = np.ones(1)
  for off, mask in zip(reversed(offsets), reversed(masks)):
    groups = mask.shape[-1] // 9
    d = bilinear(off.astype(np.float64), pos).reshape(-1, groups, 9, 2)
    m = bilinear(mask.astype(np.float64), pos).reshape(-1, groups, 9)
    new = pos[:, None, None, :] + _TAPS[None, None] + d  # (P, G, 9, 2)
    valid = (new[..., 0] > -1) & (new[..., 0] < h) & (new[..., 1] > -1) & (new[..., 1] < w)
    weight = (weight[:, None, None] * m * valid).reshape(-1)
    pos = new.reshape(-1, 2)
  return pos, weight


def _splat(canvas: np.ndarray, pos: np.ndarray, alpha: np.ndarray, colour, radius: float):
  """Draws discs (radius px) at pos (M, 2) [y, x] with per-disc opacity onto canvas (H, W, 3)."""
  h, w = canvas.shape[:2]
  r = int(math.ceil(radius))
  cover = np.zeros((h, w))
  centre = np.round(pos).astype(int)
  for dy in range(-r, r + 1):
    for dx in range(-r, r + 1):
      if dy * dy + dx * dx > radius * radius + 0.25:
        continue
      yy, xx = centre[:, 0] + dy, centre[:, 1] + dx
      keep = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
      np.maximum.at(cover, (yy[keep], xx[keep]), alpha[keep])
  cover = cover[..., None]
  canvas *= 1 - cover
  canvas += cover * np.asarray(colour, np.float64) / 255.0


def render(input_panel: np.ndarray, ref_panel: np.ndarray, points: Sequence[tuple[int, int]],
           samples: Sequence[tuple[np.ndarray, np.ndarray]], scale: int, centre: float,
           num_layers: int) -> Image.Image:
  """The figure: input with the points marked | reference with their sampling locations.

  Args:
    input_panel: (sH, sW, 3) in [0, 1], the upscaled input.
    ref_panel: (sH, sW, 3) in [0, 1], the reference the network saw.
    points: LR pixels.
    samples: per point, (positions (M, 2) in LR units, weights (M,)).
    scale: SR factor.
    centre: HR coordinate of LR pixel 0 on the reference panel (0, or (scale-1)/2).
    num_layers: L, for the caption.
  """
  sh, sw = ref_panel.shape[:2]
  f = max(1, math.ceil(MIN_PANEL / max(sh, sw)))
  enlarge = lambda img: np.repeat(np.repeat(img, f, axis=0), f, axis=1)
  luma = ref_panel @ np.array([0.299, 0.587, 0.114])
  canvas = enlarge(np.repeat((0.25 + 0.5 * luma)[..., None], 3, axis=-1))  # Dimmed gray.
  radius = max(1.0, 0.4 * f * scale / 2)
  for i, (pos, weight) in enumerate(samples):
    keep = weight > 0
    if keep.any():
      alpha = 0.35 + 0.65 * weight[keep] / weight[keep].max()
      hr = (pos[keep] * scale + centre + 0.5) * f - 0.5
      _splat(canvas, hr, alpha, COLOURS[i % len(COLOURS)], radius)
  left = Image.fromarray(np.round(enlarge(np.clip(input_panel, 0, 1)) * 255).astype(np.uint8))
  right = Image.fromarray(np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8))
  header, gap = 16, 8
  fig = Image.new('RGB', (2 * sw * f + gap, sh * f + header), (255, 255, 255))
  fig.paste(left, (0, header))
  fig.paste(right, (sw * f + gap, header))
  draw = ImageDraw.Draw(fig)
  draw.text((2, 2), 'input, chosen pixels', fill=(0, 0, 0))
  count = samples[0][1].size if samples else 0
  per_layer = round(count ** (1 / num_layers)) if count else 9
  draw.text((sw * f + gap + 2, 2), f'reference: {per_layer}^{num_layers} = {count} samples per '
            f'pixel through {num_layers} deformable layers', fill=(0, 0, 0))
  ring = max(4.0, 1.5 * f * scale / 2)
  for i, (y, x) in enumerate(points):
    cy, cx = ((y * scale + (scale - 1) / 2 + 0.5) * f, (x * scale + (scale - 1) / 2 + 0.5) * f)
    colour = COLOURS[i % len(COLOURS)]
    draw.ellipse((cx - ring, cy + header - ring, cx + ring, cy + header + ring), outline=colour,
                 width=2)
    draw.line((cx - 2 * ring, cy + header, cx + 2 * ring, cy + header), fill=colour)
    draw.line((cx, cy + header - 2 * ring, cx, cy + header + 2 * ring), fill=colour)
  return fig


def check_size(h: int, w: int) -> None:
  """Raises ValueError (one line naming the limit) for inputs over MAX_LR_PIXELS."""
  if h * w > MAX_LR_PIXELS:
    raise ValueError(f'the LR image is {h}x{w} = {h * w:,} pixels, over the offsets figure\'s '
                     f'limit of {MAX_LR_PIXELS:,} (512x512; the model runs untiled): crop the '
                     'region of interest')


def sampling_figure(gen: Any, lr: np.ndarray, ref: np.ndarray | None,
                    points: Sequence[tuple[int, int]]):
  """Runs the model on lr (H, W, 3) and draws the sampling locations of `points`.

  Args:
    gen: an `ssen_jax.inference.restore.Generator` with SSEN ('ssen' or 'selfsim').
    lr: (H, W, 3) in [0, 1].
    ref: (h, w, 3) in [0, 1] of any size (fitted here), or None for the self-reference.
    points: LR pixels (y, x).

  Returns:
    (figure, [(positions (M, 2) on the LR grid, weights (M,)) per point]).
  """
  check_size(*lr.shape[:2])
  s = gen.scale
  if gen.uses_ref:
    ref, centre = images.prepare_reference(ref, lr, s), 0.0
  else:  # Self-similarity: SSEN aligns the input's own features.
    ref, centre = images.self_reference(lr, s), (s - 1) / 2
  apply = jax.jit(lambda p, x, r: gen.model.apply({'params': p}, x, r, return_offsets=True))
  _, offsets, masks = apply(gen.params, lr[None], ref[None] if gen.uses_ref else None)
  offsets = [np.asarray(o)[0] for o in offsets]
  masks = [np.asarray(k)[0] for k in masks]
  samples = [compose_samples(offsets, masks, p) for p in points]
  fig = render(images.self_reference(lr, s), ref, points, samples, s, centre, len(offsets))
  return fig, samples
