"""PSNR and SSIM with the conventions of the published SR tables.

Protocol (the one of RCAN/EDSR/SRNTT/SSEN's MATLAB scripts):

* The SR image is rounded to uint8 first (floats in [0, 1] become round(255 x), half away from
  zero, saturated); the HR image is uint8 (or floats in [0, 1], rounded the same way).
* Luma is BT.601 `Y = 16 + 65.481 R + 128.553 G + 24.966 B` with R, G, B in [0, 1], so Y lies in
  [16, 235]; it is not rounded again.
* Which images count as gray follows the file, as MATLAB's `size(im, 3) == 3` test does: every
  three-channel image is scored on BT.601 Y, even when its channels are equal; only a
  single-channel file is scored on its own values (in [0, 255]). The numpy functions decide from
  the HR array ((H, W) or (H, W, 1): gray) unless told with `gray=` (the evaluation passes the
  file's channel count, `ssen_jax.data.images.ImageFile.gray`, since it loads every file as
  RGB). The SR image of a gray HR is reduced to its channel mean (its single channel for a bicubic result).
* `scale` pixels are shaved from each border before comparing.
* PSNR = 10 log10(255^2 / MSE). SSIM: 11x11 Gaussian window, sigma 1.5, normalised, 'valid'
  filtering (no padding), K1 = 0.01, K2 = 0.03, L = 255, mean of the SSIM map (no downsampling).

The functions take one image and compute in float64 (numpy).
"""
import numpy as np

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966])
_K1, _K2, _L = 0.01, 0.03, 255.0
_C1, _C2 = (_K1 * _L) ** 2, (_K2 * _L) ** 2
SSIM_WINDOW = 11


def min_image_size(shave: int) -> int:
  """The smallest height and width that can be scored: the SSIM window after `shave` pixels are
  cut from each border."""
  return SSIM_WINDOW + 2 * max(shave, 0)


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = 1.5) -> np.ndarray:
  """Normalised 1-D Gaussian; its outer product is MATLAB's `fspecial('gaussian', size, sigma)`."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-x * x / (2 * sigma * sigma))
  return g / g.sum()


def to_uint8(img: np.ndarray) -> np.ndarray:
  """uint8 passes through; floats in [0, 1] -> round(255 x) half away from zero, saturated."""
  img = np.asarray(img)
  if img.dtype == np.uint8:
    return img
  if not np.issubdtype(img.dtype, np.floating):
    raise TypeError(f'expected a uint8 or float image, got {img.dtype}')
  return np.clip(np.floor(img.astype(np.float64) * 255 + 0.5), 0, 255).astype(np.uint8)


def is_single_channel(img: np.ndarray) -> bool:
  """True for (H, W) and (H, W, 1) arrays: the only images scored on their own channel."""
  img = np.asarray(img)
  return img.ndim == 2 or img.shape[-1] == 1


def rgb_to_y(img: np.ndarray) -> np.ndarray:
  """BT.601 luma.

  Args:
    img: (..., 3) RGB, uint8 or float in [0, 1].

  Returns:
    (...) float64 Y in [16, 235].
  """
  img = np.asarray(img)
  rgb = img / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
  return 16.0 + rgb @ _Y_WEIGHTS


def _luma_pair(sr: np.ndarray, hr: np.ndarray,
               gray: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(Y_sr, Y_hr) in [0, 255] float64 after uint8 rounding, following the grayscale rule."""
  sr, hr = to_uint8(sr), to_uint8(hr)
  if sr.shape[:2] != hr.shape[:2]:
    raise ValueError(f'SR {sr.shape} and HR {hr.shape} differ in size')
  if is_single_channel(hr) if gray is None else gray:
    y_hr = (hr if hr.ndim == 2 else hr[..., 0]).astype(np.float64)
    y_sr = sr.astype(np.float64) if sr.ndim == 2 else sr.astype(np.float64).mean(axis=-1)
    return y_sr, y_hr
  if sr.ndim != 3 or sr.shape[-1] != 3:
    raise ValueError(f'colour HR {hr.shape} needs an RGB SR image, got {sr.shape}')
  return rgb_to_y(sr), rgb_to_y(hr)


def _shave(img: np.ndarray, border: int) -> np.ndarray:
  if border <= 0:
    return img
  if img.shape[0] <= 2 * border or img.shape[1] <= 2 * border:
    raise ValueError(f'image {img.shape} too small to shave {border} pixels per border')
  return img[border:-border, border:-border]


def _psnr_from_mse(mse: float) -> float:
  return float('inf') if mse == 0 else float(10 * np.log10(_L * _L / mse))


def psnr_y(sr: np.ndarray, hr: np.ndarray, scale: int, *, gray: bool | None = None) -> float:
  """PSNR (dB) on BT.601 luma with `scale` pixels shaved from each border.

  Args:
    sr: (H, W, 3) or (H, W) SR image, uint8 or float in [0, 1] (rounded to uint8 first).
    hr: HR image of the same size, uint8 or float in [0, 1].
    scale: the SR factor, also the border shave.
    gray: whether the HR file has a single channel (its own values are scored); None decides
      from the HR array's shape.

  Returns:
    PSNR in dB (inf for identical images).
  """
  y_sr, y_hr = _luma_pair(sr, hr, gray)
  diff = _shave(y_sr, scale) - _shave(y_hr, scale)
  return _psnr_from_mse(float(np.mean(diff * diff)))


def psnr_rgb(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
  """PSNR (dB) over all RGB channels (uint8 levels), `scale` pixels shaved. Same inputs as psnr_y."""
  sr, hr = to_uint8(sr).astype(np.float64), to_uint8(hr).astype(np.float64)
  if sr.shape != hr.shape:
    raise ValueError(f'SR {sr.shape} and HR {hr.shape} differ in shape')
  diff = _shave(sr, scale) - _shave(hr, scale)
  return _psnr_from_mse(float(np.mean(diff * diff)))


def _filter_valid(img: np.ndarray, window: np.ndarray) -> np.ndarray:
  """Separable 'valid' correlation of (H, W) with the 1-D `window` on both axes."""
  k = window.size
  h, w = img.shape
  rows = sum(window[i] * img[i:h - k + 1 + i] for i in range(k))
  return sum(window[j] * rows[:, j:w - k + 1 + j] for j in range(k))


def ssim_gray(x: np.ndarray, y: np.ndarray) -> float:
  """Wang et al.'s SSIM of two (H, W) float images in [0, 255] (Gaussian 11/1.5, 'valid')."""
  if min(x.shape) < SSIM_WINDOW:
    raise ValueError(f'SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} after shaving, '
                     f'got {x.shape}')
  win = gaussian_window_1d()
  mu_x, mu_y = _filter_valid(x, win), _filter_valid(y, win)
  sxx = _filter_valid(x * x, win) - mu_x * mu_x
  syy = _filter_valid(y * y, win) - mu_y * mu_y
  sxy = _filter_valid(x * y, win) - mu_x * mu_y
  num = (2 * mu_x * mu_y + _C1) * (2 * sxy + _C2)
  den = (mu_x * mu_x + mu_y * mu_y + _C1) * (sxx + syy + _C2)
  return float(np.mean(num / den))


def ssim_y(sr: np.ndarray, hr: np.ndarray, scale: int, *, gray: bool | None = None) -> float:
  """SSIM on BT.601 luma with `scale` pixels shaved. Same inputs as `psnr_y`."""
  y_sr, y_hr = _luma_pair(sr, hr, gray)
  return ssim_gray(_shave(y_sr, scale), _shave(y_hr, scale))
