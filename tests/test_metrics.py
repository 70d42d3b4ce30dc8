"""Published PSNR/SSIM conventions, numpy vs jax, and an independent SSIM from scikit-image."""
import math

import numpy as np
import pytest
import skimage.data
import skimage.metrics

from ssen_jax.eval import metrics


def _pair(seed=0, size=48, noise=6.0):
  hr = skimage.data.astronaut()[200:200 + size, 180:180 + size]
  rng = np.random.default_rng(seed)
  sr = np.clip(hr + rng.normal(0, noise, hr.shape), 0, 255) / 255.0
  return sr, hr


def test_rgb_to_y_bt601():
  rgb = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
  np.testing.assert_allclose(metrics.rgb_to_y(rgb), [16, 235, 16 + 65.481, 16 + 128.553,
                                                     16 + 24.966], atol=1e-9)
  np.testing.assert_allclose(metrics.rgb_to_y(rgb / 255.0), metrics.rgb_to_y(rgb))


def test_psnr_value_shave_and_uint8_rounding():
  hr = np.zeros((20, 20, 3), np.uint8) + np.array([100, 50, 30], np.uint8)  # Colour, not gray.
  sr = hr.astype(np.float64).copy()
  sr[5:15, 5:15] += 10  # Y changes by 10 * (65.481 + 128.553 + 24.966) / 255.
  dy = 10 * 219.0 / 255
  expected = 10 * math.log10(255 ** 2 / (dy * dy * 100 / 144))  # 12x12 left after a 4 shave.
  assert metrics.psnr_y(sr / 255, hr, 4) == pytest.approx(expected, abs=1e-9)
  # Differences inside the shaved border do not count.
  sr_border = hr.copy()
  sr_border[:4] = 7
  assert metrics.psnr_y(sr_border, hr, 4) == math.inf
  # SR is rounded to uint8 first: +0.4 levels vanish, +0.6 levels count as one level.
  assert metrics.psnr_y(hr / 255 + 0.4 / 255, hr, 4) == math.inf
  assert metrics.psnr_rgb(hr / 255 + 0.6 / 255, hr, 4) == pytest.approx(20 * math.log10(255))


def test_ssim_matches_scikit_image_gaussian_ssim():
  sr, hr = _pair()
  y_sr, y_hr = metrics.rgb_to_y(metrics.to_uint8(sr)), metrics.rgb_to_y(hr)
  ours = metrics.ssim_y(sr, hr, 4)
  ref = skimage.metrics.structural_similarity(
      y_sr[4:-4, 4:-4], y_hr[4:-4, 4:-4], gaussian_weights=True, sigma=1.5,
      use_sample_covariance=False, data_range=255)
  assert ours == pytest.approx(ref, abs=1e-10)
  assert 0.3 < ours < 0.99
  assert metrics.ssim_y(hr, hr, 4) == pytest.approx(1.0)


def test_gray_follows_the_channel_count_not_the_content():
  gray = skimage.data.camera()[100:160, 100:160]
  rng = np.random.default_rng(1)
  sr = np.clip(gray + rng.normal(0, 5, gray.shape), 0, 255).astype(np.uint8)
  diff = (sr.astype(float) - gray)[4:-4, 4:-4]
  own = 10 * math.log10(255 ** 2 / np.mean(diff ** 2))
  # BT.601 Y of equal channels is 16 + 219/255 x: errors shrink by 219/255.
  bt601 = 10 * math.log10(255 ** 2 / np.mean((diff * 219 / 255) ** 2))
  assert metrics.psnr_y(sr, gray, 4) == pytest.approx(own)
  assert metrics.psnr_y(sr[..., None], gray[..., None], 4) == pytest.approx(own)
  rep = lambda x: np.repeat(x[..., None], 3, axis=-1)
  # A three-channel image is scored on Y even when its channels are equal (MATLAB's rule) ...
  assert metrics.psnr_y(rep(sr), rep(gray), 4) == pytest.approx(bt601)
  assert bt601 - own == pytest.approx(20 * math.log10(255 / 219))
  # ... unless the caller says its file had one channel.
  assert metrics.psnr_y(rep(sr), rep(gray), 4, gray=True) == pytest.approx(own)
  assert metrics.ssim_y(rep(sr), rep(gray), 4, gray=True) == pytest.approx(
      metrics.ssim_y(sr, gray, 4))
  assert metrics.ssim_y(rep(sr), rep(gray), 4) != pytest.approx(metrics.ssim_y(sr, gray, 4))


def test_errors():
  with pytest.raises(ValueError, match='differ'):
    metrics.psnr_y(np.zeros((20, 20, 3)), np.zeros((24, 20, 3), np.uint8), 4)
  with pytest.raises(ValueError, match='shave'):
    metrics.psnr_y(np.zeros((8, 8, 3)), np.zeros((8, 8, 3), np.uint8), 4)
