"""The evaluation CLI: Set5 bicubic reproduces the published figures; bad input fails cleanly."""
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from conftest import REPO_ROOT
from ssen_jax.data import datasets
from ssen_jax.data import images
from ssen_jax.data import imresize as ir
from ssen_jax.eval import metrics
from ssen_jax.eval import protocol


def _run(*args):
  return subprocess.run([sys.executable, '-m', 'ssen_jax.evaluate', *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120)


def test_set5_bicubic_matches_paper_table2(set5_dir, tmp_path):
  out = tmp_path / 'res.json'
  proc = _run('--method', 'bicubic', '--dataset_dir', str(set5_dir), '--out', str(out))
  assert proc.returncode == 0, proc.stderr
  res = json.loads(out.read_text())
  assert res['num_images'] == 5
  assert res['psnr'] == pytest.approx(28.42, abs=0.02)
  assert res['ssim'] == pytest.approx(0.810, abs=0.002)
  assert [r['name'] for r in res['per_image']] == ['baby', 'bird', 'butterfly', 'head', 'woman']
  assert res['psnr'] == pytest.approx(np.mean([r['psnr'] for r in res['per_image']]))
  assert 'shave = 4' in proc.stdout and 'BT.601' in proc.stdout
  assert f'| **mean (5 images)** | **{res["psnr"]:.3f}**' in proc.stdout
  assert '| butterfly | 22.1' in proc.stdout


def test_output_json_is_checked_before_compute_and_never_truncated(set5_dir, tmp_path):
  existing = tmp_path / 'res.json'
  existing.write_text('{"kept": true}')
  refused = _run('--dataset_dir', str(set5_dir), '--out', str(existing))
  assert refused.returncode == 1 and refused.stdout == ''  # Nothing evaluated.
  assert refused.stderr.strip() == (f'error: --out {existing} exists; pass --overwrite '
                                    'to replace it')
  assert existing.read_text() == '{"kept": true}'
  (tmp_path / 'file').write_text('')
  unwritable = _run('--dataset_dir', str(set5_dir), '--out',
                    str(tmp_path / 'file' / 'res.json'))
  assert unwritable.returncode == 1 and unwritable.stdout == ''
  assert unwritable.stderr.startswith('error: folder') and 'does not exist' in unwritable.stderr
  replaced = _run('--dataset_dir', str(set5_dir), '--out', str(existing), '--overwrite')
  assert replaced.returncode == 0, replaced.stderr
  assert json.loads(existing.read_text())['num_images'] == 5
  assert sorted(p.name for p in tmp_path.iterdir()) == ['file', 'res.json']  # No temporary left.


def test_bad_input_exits_with_one_line(tmp_path):
  missing = _run('--dataset_dir', str(tmp_path / 'nope'))
  empty_dir = tmp_path / 'empty'
  empty_dir.mkdir()
  empty = _run('--dataset_dir', str(empty_dir))
  bad_dir = tmp_path / 'bad'
  bad_dir.mkdir()
  Image.fromarray(skimage.data.chelsea()).save(bad_dir / 'ok.png')
  (bad_dir / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
  broken = _run('--dataset_dir', str(bad_dir))
  cufed5 = _run('--layout', 'cufed5', '--dataset_dir', str(bad_dir))
  for proc, words in [(missing, 'does not exist'), (empty, 'no images'),
                      (broken, 'broken.png'), (cufed5, 'XXX_0.png')]:
    assert proc.returncode != 0
    assert words in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  no_flag = _run()
  assert no_flag.returncode != 0 and 'dataset_dir' in no_flag.stderr


def test_image_smaller_than_shave_plus_ssim_window_is_one_line(tmp_path):
  """HR 12x12 at x4: 4 pixels of shave leave 4x4, less than SSIM's 11x11 window. Refused before
  anything is computed, for bicubic and (same loader) model evaluation; 19x19 is the minimum."""
  Image.fromarray(skimage.data.chelsea()[:300, :300]).save(tmp_path / 'a_big.png')
  Image.fromarray(skimage.data.chelsea()[:12, :12]).save(tmp_path / 'b_small.png')
  for args in [(), ('--workdir', str(tmp_path / 'no_such_workdir'))]:
    proc = _run('--dataset_dir', str(tmp_path), *args)
    assert proc.returncode == 1 and proc.stdout == ''
    assert proc.stderr.strip() == (
        'error: evaluation image b_small is 12x12 (HR, cropped to a multiple of 4); scoring '
        'shaves 4 pixels per border and SSIM needs an 11x11 window, so every image must be at '
        'least 19x19'), proc.stderr
  assert metrics.min_image_size(4) == 19
  ok = datasets.make_example('ok', skimage.data.coffee()[:20, :20], 4)  # 20x20: scored.
  assert protocol.evaluate_examples([ok], protocol.bicubic_sr_fn(4), scale=4)['num_images'] == 1
  small = datasets.make_example('s', skimage.data.coffee()[:16, :40], 4)
  calls = []
  with pytest.raises(datasets.DatasetError, match='s is 16x40'):
    protocol.evaluate_examples([ok, small], lambda lr, refs: calls.append(1), scale=4)
  assert not calls  # Checked before the first image is computed.


def test_grayscale_and_odd_sizes_in_folder(tmp_path):
  gray = skimage.data.camera()[:203, :150]  # Cropped to 200x148 for x4.
  Image.fromarray(gray).save(tmp_path / 'cam.png')
  (ex,) = datasets.load_folder(tmp_path, 4)
  assert ex['hr'].shape == (200, 148, 3) and ex['lr'].shape == (50, 37, 3)
  res = protocol.evaluate_examples([ex], protocol.bicubic_sr_fn(4), scale=4)
  sr = ir.imresize(ir.imresize(gray[:200, :148], 0.25), 4).astype(float)
  diff = (sr - gray[:200, :148])[4:-4, 4:-4]
  assert res['psnr'] == pytest.approx(10 * math.log10(255 ** 2 / np.mean(diff ** 2)))


def test_gray_photo_stored_as_rgb_is_scored_on_y(tmp_path):
  """The published rule: the file's channel count decides, not equal channels (MATLAB's test)."""
  gray = skimage.data.camera()[:200, :148]
  Image.fromarray(gray).save(tmp_path / 'a_gray.png')
  Image.fromarray(np.repeat(gray[..., None], 3, axis=-1)).save(tmp_path / 'b_rgb.png')
  Image.fromarray(gray).convert('LA').save(tmp_path / 'c_gray_alpha.png')
  exs = datasets.load_folder(tmp_path, 4)
  assert [ex['gray'] for ex in exs] == [True, False, True]
  np.testing.assert_array_equal(exs[0]['hr'], exs[1]['hr'])  # Same pixels, different files.
  res = protocol.evaluate_examples(exs, protocol.bicubic_sr_fn(4), scale=4)
  own, y601, own_la = (r['psnr'] for r in res['per_image'])
  sr = ir.imresize(ir.imresize(gray, 0.25), 4).astype(float)
  diff = (sr - gray)[4:-4, 4:-4]
  assert own == own_la == pytest.approx(10 * math.log10(255 ** 2 / np.mean(diff ** 2)))
  # BT.601 Y of equal channels scales the error by 219/255.
  assert y601 - own == pytest.approx(20 * math.log10(255 / 219), abs=0.05)


def test_cufed5_loader_passes_refs_in_order(tmp_path):
  src = skimage.data.astronaut()
  for g in range(2):
    for i in range(6):
      Image.fromarray(src[i * 40:i * 40 + 90 + g, :101]).save(tmp_path / f'{g:03d}_{i}.png')
  examples = datasets.load_cufed5(tmp_path, 4)
  assert [e['name'] for e in examples] == ['000', '001']
  assert examples[0]['hr'].shape == (88, 100, 3)
  seen = []

  def sr_fn(lr, refs):
    seen.append(refs)
    return ir.imresize(lr, 4)

  res = protocol.evaluate_examples(examples, sr_fn, scale=4)
  assert res['num_images'] == 2 and len(seen[0]) == 5
  np.testing.assert_array_equal(seen[1][4], src[200:291, :101])  # XL = XXX_5.png, uncropped.
  (tmp_path / '001_3.png').unlink()
  with pytest.raises(datasets.DatasetError, match='001_3.png'):
    datasets.load_cufed5(tmp_path, 4)


def test_evaluate_examples_checks_output_size():
  ex = datasets.make_example('x', skimage.data.coffee()[:64, :64], 4)
  res = protocol.evaluate_examples([ex], lambda lr, refs: ex['hr'] / 255.0, scale=4)
  assert res['psnr'] == math.inf and res['ssim'] == pytest.approx(1.0)
  with pytest.raises(ValueError, match='does not match'):
    protocol.evaluate_examples([ex], lambda lr, refs: lr, scale=4)
  assert metrics.psnr_y(ex['hr'], ex['hr'], 4) == math.inf


def test_importing_defines_no_flags():
  # A trainer importing evaluate (and data_prep) must stay free to define its own flags.
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ssen_jax.data_prep import convert  # pylint: disable=g-import-not-at-top,unused-import
  assert 'dataset_dir' not in flags.FLAGS and 'dataset' not in flags.FLAGS


def test_fit_reference_crops_and_reflects():
  ref = skimage.data.chelsea()[:10, :30]
  out = images.fit_reference(ref, 25, 12)
  assert out.shape == (25, 12, 3)
  np.testing.assert_array_equal(out[:10], ref[:, :12])
  np.testing.assert_array_equal(out[10:20], ref[::-1, :12])  # Edge row repeated.
  np.testing.assert_array_equal(out[20:25], ref[:5, :12])


def test_save_images_and_progress_lines(tmp_path):
  """--out_dir writes every image scored (<group>_<level>.png, 4x the LR), refuses to
  overwrite without --overwrite; per-image lines count i/N. Model run: the tiny random workdir."""
  from test_infer import make_workdir
  data, out = tmp_path / 'set', tmp_path / 'sr'
  data.mkdir()
  photo = skimage.data.astronaut()
  for i in range(3):
    Image.fromarray(photo[64 * i:64 * i + 96, 100:180]).save(data / f'im{i}.png')
  make_workdir(tmp_path / 'wd', 'tiny,no_nonlocal')
  proc = _run('--workdir', str(tmp_path / 'wd'), '--dataset_dir', str(data), '--out_dir',
              str(out))
  assert proc.returncode == 0, proc.stderr
  for i in range(3):
    assert f'[{i + 1}/3] im{i}: PSNR' in proc.stderr
  names = sorted(p.name for p in out.iterdir())
  assert names == sorted([f'im{i}_all.png' for i in range(3)] +
                         [f'im{i}_bicubic.png' for i in range(3)])
  lr = images.read_image(data / 'im0.png').uint8()
  assert np.asarray(Image.open(out / 'im0_all.png')).shape == (96, 80, 3)  # 4x the 24x20 LR.
  assert ir.imresize(lr, 0.25).shape == (24, 20, 3)
  again = _run('--dataset_dir', str(data), '--out_dir', str(out))
  assert again.returncode == 1 and 'already holds' in again.stderr and '--overwrite' in again.stderr
  again = _run('--dataset_dir', str(data), '--out_dir', str(out), '--overwrite')
  assert again.returncode == 0, again.stderr


def test_evaluate_model_logs_i_of_n_per_run():
  rng = np.random.default_rng(0)
  examples = [{'name': f'{i:03d}', 'hr': rng.integers(0, 255, (32, 32, 3), np.uint8),
               'lr': rng.integers(0, 255, (8, 8, 3), np.uint8),
               'refs': [rng.integers(0, 255, (32, 32, 3), np.uint8)] * 5} for i in range(2)]
  lines, saved = [], []
  sr_jit = lambda params, lr, ref: np.repeat(np.repeat(lr, 4, 1), 4, 2)
  protocol.evaluate_model(examples, sr_jit, None, scale=4, uses_ref=True, log_fn=lines.append,
                          save_fn=lambda name, sr: saved.append((name, sr.shape)))
  assert '[XH] [1/2] 000: PSNR' in lines[0] and '[XH] [2/2] 001: PSNR' in lines[1]
  assert all(re.search(r' \(\d+\.\d s elapsed, ETA \d+ s\)$', line) for line in lines), lines
  assert len(lines) == 7 * 2 and lines[-1].startswith('[unrelated] [2/2] 001')
  assert ('000_XL', (32, 32, 3)) in saved and ('001_oracle', (32, 32, 3)) in saved


def test_save_images_refuses_files_sharing_a_stem_before_any_work(tmp_path):
  """a.png and a.jpg would both be saved as a_bicubic.png: refused before anything is read."""
  data, out = tmp_path / 'set', tmp_path / 'sr'
  data.mkdir()
  photo = skimage.data.astronaut()[:96, :80]
  Image.fromarray(photo).save(data / 'a.png')
  Image.fromarray(photo).save(data / 'a.jpg', quality=90)
  Image.fromarray(photo).save(data / 'b.png')
  proc = _run('--dataset_dir', str(data), '--out_dir', str(out))
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'a.jpg and a.png -> a_<level>.png' in lines[0], proc.stderr
  assert not out.exists()  # Nothing written, the folder not even made.
  assert _run('--dataset_dir', str(data)).returncode == 0  # Without --out_dir: scored.


def test_new_flag_names_and_their_deprecated_spellings(tmp_path):
  """The new names (--checkpoint STEP, --layout, --out, --out_dir) and the old spellings of one
  release (--checkpoint_step, --dataset, --output_json, --save_images) score the same checkpoint
  and write the same files; each old one says so in one line; old and new at once is one line."""
  from test_infer import make_workdir, run_many
  make_workdir(tmp_path / 'wd', 'tiny,no_nonlocal')
  folder = tmp_path / 'hr'
  folder.mkdir()
  Image.fromarray(skimage.data.chelsea()[:64, :64]).save(folder / 'cat.png')
  common = ['--workdir', tmp_path / 'wd', '--dataset_dir', folder]
  new, old, both = run_many('evaluate', [
      common + ['--checkpoint', '0', '--layout', 'folder', '--out', tmp_path / 'new.json',
                '--out_dir', tmp_path / 'new'],
      common + ['--checkpoint_step', '0', '--dataset', 'folder', '--output_json',
                tmp_path / 'old.json', '--save_images', tmp_path / 'old'],
      common + ['--checkpoint', '0', '--checkpoint_step', '0']], parallel=3)
  assert new.returncode == old.returncode == 0, (new.stderr, old.stderr)
  assert 'deprecated' not in new.stderr
  warnings = [line for line in old.stderr.splitlines() if 'deprecated' in line]
  assert warnings == [
      'warning: --checkpoint_step is deprecated; use --checkpoint=0',
      'warning: --dataset is deprecated; use --layout=folder',
      f'warning: --output_json is deprecated; use --out={tmp_path / "old.json"}',
      f'warning: --save_images is deprecated; use --out_dir={tmp_path / "old"}'], old.stderr
  assert new.stdout == old.stdout
  scores = [json.loads((tmp_path / f'{n}.json').read_text()) for n in ('new', 'old')]
  assert scores[0]['step'] == scores[1]['step'] == 0
  assert scores[0]['psnr'] == scores[1]['psnr'], scores
  assert scores[0]['layout'] == scores[1]['layout'] == 'folder'
  names = sorted(p.name for p in (tmp_path / 'new').iterdir())
  assert names == ['cat_all.png', 'cat_bicubic.png']
  for name in names:
    assert (tmp_path / 'new' / name).read_bytes() == (tmp_path / 'old' / name).read_bytes()
  assert both.returncode == 1 and both.stderr.strip().splitlines() == [
      'error: give --checkpoint, not both it and the deprecated --checkpoint_step'], both.stderr
