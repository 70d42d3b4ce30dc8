"""MATLAB-compatible bicubic `imresize`, as used to make the LR images of the published SR tables.

MATLAB's `imresize(img, scale, 'bicubic')` (the default method) is reproduced exactly:

* Keys cubic kernel with a = -0.5, support 4 pixels.
* When shrinking (scale < 1) the kernel is widened by 1/scale and scaled by `scale` (antialiasing).
* Output pixel x (1-based) samples input position u = x / scale + 0.5 * (1 - 1 / scale).
* P = ceil(kernel_width) + 2 taps per output pixel, weights normalised to sum to 1 *before* the
  indices are folded back into the image by symmetric (mirror, edge sample repeated) boundary
  handling: the 1-based index sequence is `[1..n, n..1]` repeated.
* Output size is ceil(in_size * scale).
* The dimension with the smaller scale is resized first (rows first on ties). For uint8 input,
  MATLAB's resampling kernel returns uint8 after *each* dimension, so the intermediate image is
  rounded (half away from zero) and saturated too; float input stays float and is not clipped.

Each axis is a dense (out_len, in_len) weight matrix from `resize_weights`, so the same weights serve
numpy (here) and TensorFlow (`input_pipeline.imresize_tf`), and both give the same uint8 images
(float64 compute). The kernel is `ssen_jax.ops.resize.cubic_kernel`, the networks' bicubic skip's.
"""
import functools
import math

import numpy as np


def output_size(in_len: int, scale: float) -> int:
  """MATLAB's output length: ceil(in_len * scale)."""
  return int(math.ceil(in_len * scale))


def _mirror(indices: np.ndarray, in_len: int) -> np.ndarray:
  """Folds 0-based indices into [0, in_len) like MATLAB's `aux = [1:n, n:-1:1]`."""
  period = 2 * in_len
  folded = np.mod(indices, period)
  return np.where(folded < in_len, folded, period - 1 - folded)


@functools.lru_cache(maxsize=256)
def _resize_weights_cached(in_len: int, out_len: int, scale: float) -> np.ndarray:
  # Imported here: the numpy path should not pay for importing jax until weights are needed.
  from ssen_jax.ops.resize import cubic_kernel  # pylint: disable=import-outside-toplevel
  kernel_width = 4.0
  if scale < 1:  # Antialiasing: a wider, lower kernel when shrinking.
    kernel_width /= scale
    kernel = lambda x: scale * cubic_kernel(scale * x)
  else:
    kernel = cubic_kernel
  x = np.arange(1, out_len + 1, dtype=np.float64)  # 1-based, as in MATLAB.
  u = x / scale + 0.5 * (1 - 1 / scale)
  left = np.floor(u - kernel_width / 2)
  num_taps = int(math.ceil(kernel_width)) + 2
  indices = left[:, None] + np.arange(num_taps)[None, :]  # 1-based, (out_len, P).
  weights = kernel(u[:, None] - indices)
  weights = weights / weights.sum(axis=1, keepdims=True)
  indices = _mirror(indices.astype(np.int64) - 1, in_len)
  matrix = np.zeros((out_len, in_len), np.float64)
  rows = np.repeat(np.arange(out_len), num_taps)
  np.add.at(matrix, (rows, indices.ravel()), weights.ravel())
  matrix.setflags(write=False)
  return matrix


def resize_weights(in_len: int, out_len: int, scale: float) -> np.ndarray:
  """Dense MATLAB bicubic resampling matrix for one axis.

  Args:
    in_len: input length along the axis.
    out_len: output length, normally `output_size(in_len, scale)`.
    scale: the resize factor (e.g. 0.25 to shrink by 4, 4 to enlarge by 4).

  Returns:
    (out_len, in_len) float64 matrix W (read-only, cached) with `out = W @ in` along the axis;
    every row sums to 1.
  """
  if in_len < 1 or out_len < 1 or not scale > 0:
    raise ValueError(f'bad resize: in_len={in_len}, out_len={out_len}, scale={scale}')
  return _resize_weights_cached(int(in_len), int(out_len), float(scale))


def resize_plan(height: int, width: int, scale: float) -> list[tuple[int, np.ndarray]]:
  """The per-axis weight matrices of `imresize`, in the order MATLAB applies them.

  Args:
    height: input height H.
    width: input width W.
    scale: the resize factor, the same for both axes.

  Returns:
    [(axis, matrix), ...] with axis 0 (rows) then 1 (columns): with one scale for both axes,
    MATLAB's stable sort of the scales puts rows first. Matrix shapes are (out_len, in_len).
  """
  return [(0, resize_weights(height, output_size(height, scale), scale)),
          (1, resize_weights(width, output_size(width, scale), scale))]


def round_uint8(x: np.ndarray) -> np.ndarray:
  """MATLAB's float -> uint8 conversion: round half away from zero, saturate to [0, 255]."""
  return np.clip(np.floor(np.asarray(x, np.float64) + 0.5), 0, 255).astype(np.uint8)


def _apply(img: np.ndarray, axis: int, matrix: np.ndarray) -> np.ndarray:
  # (out, in) contracted with the image's `axis`; the other axes keep their order.
  return np.moveaxis(np.tensordot(matrix, img, axes=([1], [axis])), 0, axis)


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
  """MATLAB `imresize(img, scale, 'bicubic')`.

  Args:
    img: (H, W) or (H, W, C) image, uint8 or float (any range; floats are not clipped).
    scale: resize factor, e.g. 1/4 or 4. Output is (ceil(H * scale), ceil(W * scale)[, C]).

  Returns:
    The resized image: uint8 for uint8 input (rounded and saturated after each axis, as MATLAB
    does), float64 for float input.
  """
  img = np.asarray(img)
  if img.ndim not in (2, 3):
    raise ValueError(f'imresize expects (H, W) or (H, W, C), got shape {img.shape}')
  is_uint8 = img.dtype == np.uint8
  if not is_uint8 and not np.issubdtype(img.dtype, np.floating):
    raise TypeError(f'imresize supports uint8 and float images, got {img.dtype}')
  out = img.astype(np.float64)
  for axis, matrix in resize_plan(img.shape[0], img.shape[1], scale):
    out = _apply(out, axis, matrix)
    if is_uint8:
      out = round_uint8(out).astype(np.float64)
  return out.astype(np.uint8) if is_uint8 else out
