"""`python -m ssen_jax.infer` and the inference library: tiles reproduce the untiled output, every
kind of image goes in and comes out alike, and bad input gets one `error:` line.

The model is the tiny config with random weights (offset convolutions and the upsampler's output
convolution included, which start at zero in a fresh network), so that the deformable offsets and
the reference really change the output. The tiling test uses the variant without non-local blocks:
those attend over the whole tile, and no tiling can reproduce global attention exactly.
"""
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import skimage.data
from PIL import Image

from conftest import REPO_ROOT
from ssen_jax.data import images as image_io
from ssen_jax.data import imresize as imresize_lib
from ssen_jax.inference import restore
from ssen_jax.inference import tiling
from ssen_jax.training import workdir as training_workdir

from conftest import config_module

refsr = config_module('refsr')

LR_SIZE = (61, 75)  # Odd, not multiples of the tile alignment.


def random_params(config, seed=0, gain=1.0, offset_gain=2.0):
  """Random flax parameters for `config` (numpy, no compilation).

  Kernels N(0, gain²/fan_in), the offset predictors `offset_gain` times more (offsets of about a
  pixel), biases N(0, 0.05²). The upsampler's output convolution is damped and the fusion
  weights of the aligned reference features amplified, so that the output neither saturates nor
  ignores the reference (the three deformable layers damp it otherwise).
  """
  rng = np.random.default_rng(seed)
  c = config.model.features

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if len(leaf.shape) < 2:
      return (rng.standard_normal(leaf.shape) * 0.05).astype(np.float32)
    x = rng.standard_normal(leaf.shape) * gain / np.sqrt(np.prod(leaf.shape[:-1]))
    if 'offset_conv' in name:
      x *= offset_gain
    if "'upsampler']['conv_out']" in name:
      x *= 0.2
    if "['fuse']" in name and leaf.shape[2] == 2 * c:
      x[:, :, c:] *= 10.0
    return x.astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, restore.abstract_params(config))


def make_workdir(path, variant, seed=0):
  """A workdir holding random weights for configs/refsr.py:`variant`; returns (config, params)."""
  config = refsr.get_config(variant)
  params = random_params(config, seed)
  training_workdir.write_workdir(path, config, params)
  return config, params


def _command(module, args, cache_dir=None):
  env = dict(os.environ)
  if cache_dir:  # Runs that compile the same shapes share the work.
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  return [sys.executable, '-m', f'ssen_jax.{module}', *map(str, args)], env


def run_cli(module, *args, cache_dir=None, timeout=240):
  """Runs `python -m ssen_jax.MODULE ARGS` in the repository root."""
  cmd, env = _command(module, args, cache_dir)
  return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                        env=env)


def run_parallel(commands, parallel=4, timeout=240, cache_dir=None):
  """Runs [(module, args), ...] `parallel` at a time (bad-input runs mostly start up)."""
  results = []
  for i in range(0, len(commands), parallel):
    procs = []
    for module, args in commands[i:i + parallel]:
      cmd, env = _command(module, args, cache_dir)
      procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for proc in procs:
      out, err = proc.communicate(timeout=timeout)
      results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
  return results


def run_many(module, arg_lists, parallel=4, timeout=240, cache_dir=None):
  """`run_parallel` for one module."""
  return run_parallel([(module, args) for args in arg_lists], parallel, timeout, cache_dir)


def assert_error(proc, *words):
  """Non-zero exit and exactly one stderr line `error: ...` holding `words`, no traceback."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0, proc.stderr
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  for word in words:
    assert word in lines[0], lines[0]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp('infer') / 'wd'
  make_workdir(path, 'tiny,no_nonlocal')
  return path


@pytest.fixture(scope='module')
def jax_cache(tmp_path_factory):
  return tmp_path_factory.mktemp('jax_cache')


@pytest.fixture(scope='module')
def upscaler(workdir):
  return tiling.Upscaler(restore.load_generator(workdir))


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  """LR (37x45 RGB), a reference of another size, and the variants of the LR file."""
  d = tmp_path_factory.mktemp('images')
  hr = skimage.data.astronaut()[100:100 + 4 * LR_SIZE[0], 150:150 + 4 * LR_SIZE[1]]
  lr = imresize_lib.imresize(hr, 0.25)
  Image.fromarray(lr).save(d / 'lr.png')
  Image.fromarray(skimage.data.chelsea()[:130, :200]).save(d / 'ref.png')
  gray16 = (lr.astype(np.uint16).mean(axis=-1) * 257 + 77).astype(np.uint16)
  Image.fromarray(gray16).save(d / 'gray16.png')
  rgba = np.dstack([lr, np.linspace(0, 255, lr.shape[1], dtype=np.uint8)[None].repeat(
      lr.shape[0], 0)])
  Image.fromarray(rgba, 'RGBA').save(d / 'rgba.png')
  Image.fromarray(rgba[:1, :1], 'RGBA').save(d / 'pixel.png')
  Image.fromarray(lr).save(d / 'lr.jpg', quality=95)
  Image.fromarray(lr).convert('L').save(d / 'gray.png')
  data = (d / 'lr.png').read_bytes()
  (d / 'truncated.png').write_bytes(data[:len(data) // 2])
  return d


# ---------------------------------------------------------------------------------------------
# Library.


@pytest.mark.parametrize('length', [1, 7, 8, 37, 45, 64, 200, 1001])
@pytest.mark.parametrize('tile,overlap', [(32, 16), (48, 32), (64, 32), (100, 8)])
def test_tiles_are_equal_aligned_and_overlapping(length, tile, overlap):
  size, starts = tiling.axis_tiles(length, tile, overlap)
  assert size <= max(tile, length) and starts[0] == 0 and starts[-1] + size == length
  assert all(s % tiling.ALIGN == 0 for s in starts)
  assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))  # Shared >= overlap.
  scale, margin = 4, overlap * 3 // 8
  total = np.zeros(scale * length)
  for s in starts:
    w = tiling.blend_weights(s, size, length, overlap, scale)
    # No weight within `margin` LR px of a cut edge; image borders keep full weight.
    t = np.arange(scale * size) / scale
    assert not w[(t < margin) & (s > 0)].any()
    assert not w[(t >= size - margin) & (s + size < length)].any()
    total[scale * s:scale * (s + size)] += w
  assert total.min() > 0.49
  with pytest.raises(ValueError, match='too small'):
    tiling.axis_tiles(1000, overlap + 15, overlap)


def test_tiled_matches_untiled(upscaler, images):
  lr = image_io.read_image(images / 'lr.png')
  ref = image_io.prepare_reference(image_io.read_image(images / 'ref.png').rgb, lr.rgb, 4)
  whole = upscaler(lr.rgb, ref)
  plan = upscaler.plan(*LR_SIZE, tile=48, overlap=32)
  # 45 = 61 mod 8, 43 = 75 mod 8 (<= 48); aligned strides of 8 keep >= 32 px shared.
  assert plan.size == (45, 43) and plan.ys == (0, 8, 16) and plan.xs == (0, 8, 16, 24, 32)
  calls = []
  tiled = upscaler(lr.rgb, ref, plan, progress=lambda *a: calls.append(a))
  assert calls == [(i, plan.count) for i in range(1, plan.count + 1)]
  err = float(np.abs(tiled - whole).max())
  print(f'\n[tiling] {plan.count} tiles of {plan.size}, overlap 32: max |tiled - untiled| = '
        f'{err * 255:.3f}/255')
  assert err <= 1 / 255
  # The reference matters (each tile gets its own part of it) ...
  assert np.abs(upscaler(lr.rgb, ref[::-1]) - whole).max() > 10 / 255
  # ... and so does the network (not just the bicubic skip).
  assert np.abs(whole - image_io.self_reference(lr.rgb, 4)).mean() > 5 / 255


def test_memory_budget_picks_tiles(upscaler):
  need = upscaler.estimate_bytes(*LR_SIZE)
  host = upscaler.host_bytes(*LR_SIZE)  # Counted in the budget on CPU.
  assert upscaler.plan(*LR_SIZE, max_bytes=need + host) is None
  plan = upscaler.plan(*LR_SIZE, max_bytes=int(need * 0.6) + host)
  assert plan is not None and plan.count > 1
  assert upscaler.estimate_bytes(*plan.size) <= need * 0.6
  with pytest.raises(ValueError, match='memory budget'):
    upscaler.plan(*LR_SIZE, max_bytes=need // 100)


def test_plan_is_the_fastest_that_fits(upscaler, tmp_path, monkeypatch):
  """Large inputs: the tiling of least predicted time. Attention grows with the square of a call's
  positions, so tiles win with non-local blocks; without them the overlaps only cost."""
  size = 320  # Above tiling.SEARCH_MIN_PIXELS.
  linear = lambda h, w: 4000 * h * w  # Device bytes, stands in for XLA's (no compilation here).
  make_workdir(tmp_path / 'nl', 'tiny')
  nonlocal_up = tiling.Upscaler(restore.load_generator(tmp_path / 'nl'))
  for up in (upscaler, nonlocal_up):
    monkeypatch.setattr(up, 'estimate_bytes', linear)
  roomy = 10 * linear(size, size) + upscaler.host_bytes(size, size)
  # On a CPU no call exceeds CPU_MAX_CALL_PIXELS (larger ones ran slower per operation there):
  # the cheapest tiling within it, though untiled is predicted cheaper and fits.
  assert upscaler.max_call_pixels == tiling.CPU_MAX_CALL_PIXELS < size * size
  plan = upscaler.plan(size, size, max_bytes=roomy)
  within = [p for p in upscaler.candidate_plans(size, size)
            if p is not None and p.size[0] * p.size[1] <= tiling.CPU_MAX_CALL_PIXELS]
  assert plan is not None and plan.size[0] * plan.size[1] <= tiling.CPU_MAX_CALL_PIXELS
  assert upscaler.predicted_cost(plan, size, size) == min(
      upscaler.predicted_cost(p, size, size) for p in within)
  # Any size (the rule on accelerators), without attention: untiled is predicted cheapest, fits.
  for up in (upscaler, nonlocal_up):
    monkeypatch.setattr(up, 'max_call_pixels', None)
  assert upscaler.plan(size, size, max_bytes=roomy) is None
  untiled = upscaler.predicted_cost(None, size, size)
  for plan in upscaler.candidate_plans(size, size)[1:]:
    assert upscaler.predicted_cost(plan, size, size) > untiled
  # With it: tiles (at 512x512 LR, where the attention of the tiny model's 1/2 scale dominates),
  # and the chosen tiling is within tiling.TIE of the cheapest candidate.
  big = 512
  plan = nonlocal_up.plan(big, big, max_bytes=roomy * 4)
  assert plan is not None and plan.count > 1
  costs = [nonlocal_up.predicted_cost(p, big, big) for p in nonlocal_up.candidate_plans(big, big)]
  chosen = nonlocal_up.predicted_cost(plan, big, big)
  assert chosen <= min(costs) * (1 + tiling.TIE) and chosen < 0.8 * costs[0]  # [0]: untiled.
  # The budget still rules: where untiled does not fit, the cheapest tiling that does.
  tight = linear(200, 200) + upscaler.host_bytes(size, size)
  plan = upscaler.plan(size, size, max_bytes=tight)
  assert plan is not None and plan.size[0] * plan.size[1] <= 200 * 200
  # Small images are not searched: untiled when they fit.
  assert nonlocal_up.plan(200, 200, max_bytes=roomy) is None


def test_image_kinds(images, tmp_path):
  rgb = image_io.read_image(images / 'lr.png')
  assert (rgb.rgb.shape, rgb.alpha, rgb.gray, rgb.bits) == (LR_SIZE + (3,), None, False, 8)
  gray16 = image_io.read_image(images / 'gray16.png')
  assert gray16.gray and gray16.bits == 16
  raw = np.asarray(Image.open(images / 'gray16.png'))
  np.testing.assert_allclose(gray16.rgb[..., 1], raw / 65535, atol=1e-7)
  rgba = image_io.read_image(images / 'rgba.png')
  assert rgba.alpha.shape == LR_SIZE and rgba.alpha[0, -1] == 1.0
  gray = image_io.read_image(images / 'gray.png')
  assert gray.gray and gray.bits == 8 and gray.alpha is None
  jpeg = image_io.read_image(images / 'lr.jpg')
  assert jpeg.rgb.shape == LR_SIZE + (3,) and np.abs(jpeg.rgb - rgb.rgb).mean() < 0.03
  # Output follows the input: modes and exact values.
  sr = np.random.default_rng(0).random((8, 12, 3))
  assert image_io.to_pil(sr, rgb).mode == 'RGB'
  out16 = image_io.to_pil(sr, gray16)
  assert out16.mode == 'I;16'
  np.testing.assert_array_equal(np.asarray(out16), np.floor(sr.mean(-1) * 65535 + 0.5))
  assert image_io.to_pil(sr, rgba, alpha=np.ones((8, 12))).mode == 'RGBA'
  assert image_io.to_pil(sr, gray).mode == 'L'
  assert image_io.to_pil(sr, gray, alpha=np.ones((8, 12))).mode == 'LA'
  path = tmp_path / 'x.png'
  image_io.save_png_atomic(out16, path)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(out16))
  assert [p.name for p in tmp_path.iterdir()] == ['x.png']  # No temporary file left.
  for bad, words in [('truncated.png', 'cannot read image'), ('nope.png', 'does not exist'),
                     ('', 'is a folder')]:
    with pytest.raises(image_io.DatasetError, match=words):
      image_io.read_image(images / bad)


# ---------------------------------------------------------------------------------------------
# Command line.


def test_cli_untiled_and_tiled(workdir, images, upscaler, jax_cache, tmp_path):
  out, out_tiled = tmp_path / 'sr.png', tmp_path / 'sr_tiled.png'
  start = time.perf_counter()
  proc = run_cli('infer', '--workdir', workdir, '--lr', images / 'lr.png', '--ref',
                 images / 'ref.png', '--out', out, cache_dir=jax_cache)
  assert proc.returncode == 0, proc.stderr
  assert 'untiled' in proc.stderr and 'total' in proc.stderr
  need = upscaler.estimate_bytes(*LR_SIZE) * 0.6 + upscaler.host_bytes(*LR_SIZE)
  proc = run_cli('infer', '--workdir', workdir, '--lr', images / 'lr.png', '--ref',
                 images / 'ref.png', '--out', out_tiled, '--max_memory_gb', need / 2**30,
                 cache_dir=jax_cache)
  assert proc.returncode == 0, proc.stderr
  print(f'\n[infer CLI] two runs in {time.perf_counter() - start:.1f} s; tiled run says: '
        + ' | '.join(l for l in proc.stderr.splitlines() if 'tile' in l))
  assert 'tiled: ' in proc.stderr and ' tiles (' in proc.stderr
  count = int(proc.stderr.split('tiled: ')[1].split(' tiles')[0])
  assert f'[{count}/{count}] tile of LR' in proc.stderr  # Progress, one line per tile.
  assert sum(f'/{count}] tile of LR' in l for l in proc.stderr.splitlines()) == count
  a = np.asarray(Image.open(out)).astype(int)
  b = np.asarray(Image.open(out_tiled)).astype(int)
  assert a.shape == (4 * LR_SIZE[0], 4 * LR_SIZE[1], 3)
  assert np.abs(a - b).max() <= 1
  # The CLI computes what the library computes.
  lr = image_io.read_image(images / 'lr.png')
  ref = image_io.prepare_reference(image_io.read_image(images / 'ref.png').rgb, lr.rgb, 4)
  expected = np.asarray(image_io.to_pil(upscaler(lr.rgb, ref), lr)).astype(int)
  assert np.abs(a - expected).max() <= 1 and (a == expected).mean() > 0.999
  # An existing output is kept without --overwrite.
  before = out.read_bytes()
  assert_error(run_cli('infer', '--workdir', workdir, '--lr', images / 'lr.png', '--out', out),
               'exists', '--overwrite')
  assert out.read_bytes() == before


def test_cli_gray16_self_reference_and_rgba_pixel(workdir, images, upscaler, jax_cache,
                                                  tmp_path):
  out = tmp_path / 'gray.png'
  proc = run_cli('infer', '--workdir', workdir, '--lr', images / 'gray16.png', '--out', out,
                 cache_dir=jax_cache)
  assert proc.returncode == 0, proc.stderr
  assert 'self-reference' in proc.stderr
  img = Image.open(out)
  assert img.mode == 'I;16' and img.size == (4 * LR_SIZE[1], 4 * LR_SIZE[0])
  lr = image_io.read_image(images / 'gray16.png')
  expected = upscaler(lr.rgb, image_io.self_reference(lr.rgb, 4)).mean(-1)
  assert np.abs(np.asarray(img) / 65535 - expected).max() < 2e-4
  out = tmp_path / 'pixel.png'
  proc = run_cli('infer', '--workdir', workdir, '--lr', images / 'pixel.png', '--out', out,
                 cache_dir=jax_cache)
  assert proc.returncode == 0, proc.stderr
  img = np.asarray(Image.open(out))
  assert img.shape == (4, 4, 4)
  assert (img[..., 3] == np.asarray(Image.open(images / 'pixel.png'))[0, 0, 3]).all()


def test_cli_bad_input(workdir, images, tmp_path):
  base = ['--workdir', workdir, '--lr', images / 'lr.png', '--out', tmp_path / 'o.png']
  empty = tmp_path / 'empty'
  empty.mkdir()
  no_ckpt = tmp_path / 'no_ckpt'
  no_ckpt.mkdir()
  (no_ckpt / 'config.json').write_text((workdir / 'config.json').read_text())
  cases = [
      (['--workdir', workdir, '--lr', images / 'nope.png', '--out', tmp_path / 'o.png'],
       ['nope.png', 'does not exist']),
      (['--workdir', workdir, '--lr', images, '--out', tmp_path / 'o.png'], ['is a folder']),
      (['--workdir', workdir, '--lr', images / 'truncated.png', '--out', tmp_path / 'o.png'],
       ['cannot read image', 'truncated.png']),
      (['--workdir', empty, '--lr', images / 'lr.png', '--out', tmp_path / 'o.png'],
       ['not a training workdir']),
      (['--workdir', no_ckpt, '--lr', images / 'lr.png', '--out', tmp_path / 'o.png'],
       ['holds no checkpoint']),
      (base + ['--checkpoint', 7], ['no checkpoint at step 7', 'saved: 0']),
      (base + ['--checkpoint', tmp_path / 'x.pth'], ['neither a step']),
      (['--workdir', workdir, '--lr', images / 'lr.png', '--out', tmp_path / 'no' / 'o.png'],
       ['does not exist']),
      (['--workdir', workdir, '--lr', images / 'lr.png', '--out', tmp_path / 'o.jpg'],
       ['.png']),
      (base + ['--tile', 20], ['too small']),
  ]
  for proc, (_, words) in zip(run_many('infer', [args for args, _ in cases]), cases):
    assert_error(proc, *words)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['empty', 'no_ckpt']  # Nothing written.
