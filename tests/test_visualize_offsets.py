"""`python -m ssen_jax.visualize_offsets`: composition of the stacked deformable layers' sampling
locations (checked on hand-made offset fields), the figure, and bad input."""
import collections
import itertools
import math

import numpy as np
import pytest
import skimage.data
from PIL import Image

from ssen_jax.data import imresize as imresize_lib
from ssen_jax.data import images as image_io
from ssen_jax.inference import offsets as vo
from test_infer import assert_error, make_workdir, run_cli, run_many

LR_SIZE = (24, 30)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp('vis')
  hr = skimage.data.astronaut()[60:60 + 4 * LR_SIZE[0], 100:100 + 4 * LR_SIZE[1]]
  Image.fromarray(imresize_lib.imresize(hr, 0.25)).save(d / 'lr.png')
  Image.fromarray(skimage.data.astronaut()[40:150, 90:230]).save(d / 'ref.png')
  make_workdir(d / 'ssen', 'tiny')
  make_workdir(d / 'baseline', 'tiny,baseline')
  return d


def _fields(num_layers, h=12, w=14, groups=1, offset=(0.0, 0.0), mask=1.0):
  offsets = [np.tile(np.asarray(offset, np.float32), (h, w, groups * 9)) for _ in range(num_layers)]
  masks = [np.full((h, w, groups * 9), mask, np.float32) for _ in range(num_layers)]
  return offsets, masks


def test_zero_offsets_give_the_stacked_3x3_grid():
  offsets, masks = _fields(3, mask=0.5)
  pos, weight = vo.compose_samples(offsets, masks, (6, 7))
  assert pos.shape == (9**3, 2) and weight.shape == (9**3,)
  # Three 3x3 layers: p + t1 + t2 + t3, the multiset of sums of three taps.
  expected = collections.Counter(
      (6 + a[0] + b[0] + c[0], 7 + a[1] + b[1] + c[1])
      for a, b, c in itertools.product(itertools.product(range(-1, 2), repeat=2), repeat=3))
  assert collections.Counter(map(tuple, pos.astype(int).tolist())) == expected
  np.testing.assert_allclose(weight, 0.5**3)  # Product of the masks along each path.


def test_offsets_add_up_and_are_interpolated_at_fractional_positions():
  # Constant offsets: every location moves by the sum over layers.
  offsets, masks = _fields(2, offset=(0.5, -1.25))
  pos, _ = vo.compose_samples(offsets, masks, (6, 7))
  base, _ = vo.compose_samples(*_fields(2), (6, 7))
  np.testing.assert_allclose(pos - base, np.tile([1.0, -2.5], (81, 1)))
  # Layer 0's offsets vary with y (dy = 0.1 y); layer 1 moves every tap by +0.5 in y, so layer 0
  # is read at fractional rows and must use the interpolated offset 0.1 (y + 0.5).
  offsets, masks = _fields(2)
  offsets[1][..., 0::2] = 0.5
  rows = np.arange(12, dtype=np.float32)[:, None, None]
  offsets[0][..., 0::2] = np.broadcast_to(0.1 * rows, (12, 14, 9))
  pos, _ = vo.compose_samples(offsets, masks, (6, 7))
  first = np.array([6.0, 7.0]) + vo._TAPS[:, None, :] + [0.5, 0]  # (9, 1, 2) layer-1 samples.
  second = first + vo._TAPS[None] + np.stack([0.1 * first[..., 0], 0 * first[..., 1]], -1)
  np.testing.assert_allclose(pos, second.reshape(-1, 2), atol=1e-5)


def test_groups_and_samples_outside_the_map():
  offsets, masks = _fields(2, groups=2)
  pos, weight = vo.compose_samples(offsets, masks, (0, 0))
  assert pos.shape == (18**2, 2)  # (9 G)^L.
  outside = (pos[:, 0] <= -1) | (pos[:, 1] <= -1)
  assert outside.any() and not weight[outside].any() and weight.any()
  # A path that left the map stays dead even where it comes back: layer 1 (applied first) moves
  # its taps up-left by 1, so at (0, 0) only the (+1, +1) tap of each group stays inside; layer 0
  # then moves everything far inside.
  offsets[1][..., :] = -1.0
  offsets[0][..., :] = 5.0
  pos, weight = vo.compose_samples(offsets, masks, (0, 0))
  assert (pos > 1).all() and (weight == 0).sum() == (18 - 2) * 18


def test_render_draws_each_point_in_its_colour():
  lr = np.full((6, 8, 3), 0.5)
  samples = [(np.array([[2.0, 3.0]]), np.ones(1)), (np.array([[5.0, 1.0]]), np.ones(1))]
  fig = np.asarray(vo.render(image_io.self_reference(lr, 4), np.full((24, 32, 3), 0.5),
                             [(1, 1), (4, 6)], samples, 4, 0.0, 1))
  f = vo.MIN_PANEL // 32  # Enlargement of a 24x32 panel.
  x0 = 32 * f + 8  # Right panel's left edge; 16 px caption on top.
  for (y, x), colour in zip([(2, 3), (5, 1)], vo.COLOURS):
    cy, cx = 16 + int((4 * y + 0.5) * f), x0 + int((4 * x + 0.5) * f)
    assert tuple(fig[cy, cx]) == colour


def test_cli_figure_and_bad_input(files, tmp_path):
  out = tmp_path / 'fig.png'
  proc = run_cli('visualize_offsets', '--workdir', files / 'ssen', '--lr', files / 'lr.png',
                 '--ref', files / 'ref.png', '--points', '3,4; 20,29', '--out', out)
  assert proc.returncode == 0, proc.stderr
  assert 'point 1 (3, 4): 729 samples' in proc.stderr and 'point 2 (20, 29)' in proc.stderr
  fig = np.asarray(Image.open(out))
  assert fig.shape == (16 + 4 * LR_SIZE[0] * 3, 2 * 4 * LR_SIZE[1] * 3 + 8, 3)
  left, right = fig[16:, :4 * LR_SIZE[1] * 3], fig[16:, 4 * LR_SIZE[1] * 3 + 8:]
  for colour in vo.COLOURS[:2]:  # Both points are marked on the input in their colours ...
    assert (left == colour).all(-1).sum() > 20
  spread = right.max(-1).astype(int) - right.min(-1)  # ... and the dimmed gray reference has
  assert (spread > 40).sum() > 200  # coloured samples on it.
  base = ['--lr', files / 'lr.png', '--ref', files / 'ref.png', '--out', tmp_path / 'o.png']
  big = tmp_path / 'big.png'  # Over offsets.MAX_LR_PIXELS: refused before the model is loaded.
  Image.fromarray(np.zeros((520, 510, 3), np.uint8)).save(big)
  ssen = ['--workdir', files / 'ssen'] + base
  cases = [
      (['--workdir', files / 'baseline', '--points', '1,1'] + base,
       ['model has no deformable layers']),
      (ssen + ['--points', '24,3'], ['point 1 (24,3) is outside the LR image (24x30)']),
      (ssen + ['--points', '1,1;2,-1'], ['point 2 (2,-1) is outside']),
      (ssen + ['--points', '1;2'], ['bad point', 'y,x']),
      (['--workdir', files / 'ssen', '--lr', files / 'nope.png', '--out', tmp_path / 'o.png',
        '--points', '1,1'], ['nope.png', 'does not exist']),
      (['--workdir', tmp_path, '--points', '1,1'] + base, ['not a training workdir']),
      (['--workdir', files / 'ssen', '--lr', files / 'lr.png', '--out', out, '--points', '1,1'],
       ['exists', '--overwrite']),
      (['--workdir', files / 'ssen', '--lr', big, '--out', tmp_path / 'o.png', '--points', '1,1'],
       ['520x510 = 265,200 pixels', 'limit of 262,144']),
  ]
  for proc, (_, words) in zip(run_many('visualize_offsets', [a for a, _ in cases]), cases):
    assert_error(proc, *words)


def test_self_similarity_model(tmp_path):
  """RCAN + SSEN aligns the input to itself: drawn on the bicubic input, pixel centres shifted."""
  from conftest import config_module  # pylint: disable=import-outside-toplevel
  selfsim = config_module('selfsim')
  from ssen_jax.inference import restore  # pylint: disable=import-outside-toplevel
  from ssen_jax.training import workdir as training_workdir  # pylint: disable=import-outside-toplevel
  from test_infer import random_params  # pylint: disable=import-outside-toplevel
  config = selfsim.get_config('tiny')
  training_workdir.write_workdir(tmp_path / 'selfsim', config, random_params(config))
  gen = restore.load_generator(tmp_path / 'selfsim')
  lr = np.random.default_rng(0).random((10, 12, 3)).astype(np.float32)
  fig, samples = vo.sampling_figure(gen, lr, None, [(4, 5)])
  assert len(samples) == 1 and samples[0][0].shape == (9**config.model.num_dcn_layers, 2)
  f = math.ceil(vo.MIN_PANEL / 48)
  assert fig.size == (2 * 48 * f + 8, 16 + 40 * f)
