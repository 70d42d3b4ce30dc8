"""`data_prep.reference_views`: a CUFED5-style set of synthetic views from any HR folder."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ssen_jax.data import datasets
from ssen_jax.data_prep import reference_views


def _photos(folder, sizes):
  rng = np.random.default_rng(0)
  folder.mkdir()
  for i, (h, w) in enumerate(sizes):
    # Smooth random photos: a bilinear upsampling of noise, so that views resemble their source.
    small = rng.uniform(0, 255, size=(h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)
    img = Image.fromarray(small).resize((w + 16, h + 16), Image.BILINEAR)
    Image.fromarray(np.asarray(img)[8:8 + h, 8:8 + w]).save(folder / f'p{i}.png')


def test_groups_are_cufed5_and_ordered_by_similarity(tmp_path):
  _photos(tmp_path / 'hr', [(120, 130), (100, 140), (110, 110)])
  assert reference_views.write(tmp_path / 'hr', tmp_path / 'views', 64) == 3
  groups = datasets.load_cufed5(tmp_path / 'views', 4)
  assert [g['name'] for g in groups] == ['000', '001', '002']
  for i, g in enumerate(groups):
    assert g['hr'].shape == (64, 64, 3) and len(g['refs']) == 5
    err = [np.mean(np.abs(r.astype(float) - g['hr'])) for r in g['refs']]
    assert err[0] < err[3] and err[0] < err[4], err  # XH is the closest, L and XL the furthest.
    # XL is the next photo's HR crop, XH a real view (neither a copy of the HR nor of another).
    np.testing.assert_array_equal(g['refs'][4], groups[(i + 1) % 3]['hr'])
    assert 0 < err[0] < 0.5 * err[4]
  assert (tmp_path / 'views' / 'views.json').exists()


def test_bad_inputs_are_one_line_and_nothing_is_overwritten(tmp_path):
  _photos(tmp_path / 'hr', [(120, 130), (60, 200)])
  with pytest.raises(ValueError, match='photo 1 is 60x200; --size 64 needs at least 96'):
    reference_views.write(tmp_path / 'hr', tmp_path / 'views', 64)
  out = tmp_path / 'mine'
  out.mkdir()
  (out / 'keep.txt').write_text('user data')
  cmd = [sys.executable, '-m', 'ssen_jax.data_prep.reference_views', '--hr_dir',
         str(tmp_path / 'hr'), '--out_dir', str(out), '--size', '32']
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      f'error: {out} exists and is not an empty folder; pass --overwrite to write into it']
  assert sorted(p.name for p in out.iterdir()) == ['keep.txt']


def test_a_gray_photo_gives_rgb_files_with_equal_channels(tmp_path):
  _photos(tmp_path / 'hr', [(100, 100), (100, 100)])
  Image.open(tmp_path / 'hr' / 'p1.png').convert('L').save(tmp_path / 'hr' / 'p1.png')
  assert reference_views.write(tmp_path / 'hr', tmp_path / 'views', 48) == 2
  gray = np.asarray(Image.open(tmp_path / 'views' / '001_0.png'))
  assert gray.shape == (48, 48, 3)
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
  color = np.asarray(Image.open(tmp_path / 'views' / '000_0.png'))
  assert not np.array_equal(color[..., 0], color[..., 2])


def test_subpixel_views_are_small_moves_of_the_same_photo(tmp_path):
  _photos(tmp_path / 'hr', [(120, 130), (100, 140)])
  reference_views.write(tmp_path / 'hr', tmp_path / 'views', 64, views='subpixel')
  default = reference_views.make_groups(
      [np.asarray(Image.open(tmp_path / 'hr' / f'p{i}.png')) for i in range(2)], 64)
  for g, d in zip(datasets.load_cufed5(tmp_path / 'views', 4), default):
    err = [np.mean(np.abs(r.astype(float) - g['hr'])) for r in g['refs']]
    assert max(err[:3]) < 0.5 * err[4], err  # XH, H, M: the same content, nearly aligned.
    assert 0 < err[0] < np.mean(np.abs(d[1].astype(float) - g['hr']))  # Closer than default XH.
  assert '"views": "subpixel"' in (tmp_path / 'views' / 'views.json').read_text()
