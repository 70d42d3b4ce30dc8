"""The correlation prior of SSEN's first deformable layer (`model.match_radius`,
docs/choices.md)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssen_jax import ops
from ssen_jax.models import create_model, init_inputs
from ssen_jax.models.layers import ModulatedDeformConv

from conftest import config_module

refsr = config_module('refsr')


def _features(seed, shape=(2, 12, 14, 8)):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_local_correlation_peaks_at_the_displacement_of_a_shifted_copy():
  a = _features(0)
  for dy, dx in ((0, 0), (1, -2), (-2, 1)):
    b = jnp.roll(a, (dy, dx), axis=(1, 2))  # b[i + d] = a[i]
    corr, valid = ops.local_correlation(a, b, 2)
    disp = ops.displacements(2)
    best = disp[np.asarray(jnp.argmax(jnp.where(valid, corr, -2.0), axis=-1))]
    inner = best[:, 2:-2, 2:-2]
    np.testing.assert_array_equal(inner, np.broadcast_to([dy, dx], inner.shape))
    # A correlation of 1 means the same vector: the matched copy.
    np.testing.assert_allclose(np.asarray(corr.max(-1))[:, 2:-2, 2:-2], 1.0, atol=1e-5)


def test_correlation_is_invalid_outside_the_image_and_centred_per_map():
  a = _features(1, (1, 5, 6, 4))
  corr, valid = ops.local_correlation(a, a, 1)
  assert not bool(valid[0, 0, 0, 0]) and bool(valid[0, 1, 1, 0])  # (-1, -1) from the corner.
  np.testing.assert_array_equal(np.asarray(corr)[~np.broadcast_to(valid, corr.shape)], 0.0)
  # Adding a constant to every position changes nothing (zero-mean normalised correlation).
  shifted, _ = ops.local_correlation(a + 5.0, a - 3.0, 1)
  np.testing.assert_allclose(np.asarray(shifted), np.asarray(corr), atol=1e-5)


def test_soft_argmax_is_the_displacement_for_a_sharp_match_and_stays_in_the_window():
  a = _features(2)
  b = jnp.roll(a, (1, -1), axis=(1, 2))
  corr, valid = ops.local_correlation(a, b, 2)
  flow, stats = ops.soft_argmax_displacement(corr, valid, 2, jnp.float32(1000.0))
  np.testing.assert_allclose(np.asarray(flow)[:, 2:-2, 2:-2], np.broadcast_to(
      [1.0, -1.0], flow[:, 2:-2, 2:-2].shape), atol=1e-4)
  np.testing.assert_allclose(np.asarray(stats[..., 0])[:, 2:-2, 2:-2], 1.0, atol=1e-4)
  flow, _ = ops.soft_argmax_displacement(corr, valid, 2, jnp.float32(0.0))
  assert float(jnp.abs(flow).max()) <= 2.0  # Uniform weights: the mean valid displacement.


def test_dense_and_windowed_matching_agree_for_windows_wider_than_the_map():
  # A reference moved by 9 grid pixels is found by a radius-10 window on a 12x14 map (mostly
  # outside it); the dense path (used for such maps) and the windowed one give the same answer.
  a = _features(4)
  b = jnp.roll(a, (-9, 9), axis=(1, 2))  # b[i + (-9, 9)] = a[i].
  t = jnp.float32(30.0)
  corr, valid = ops.local_correlation(a, b, 10)
  flow_w, stats_w = ops.soft_argmax_displacement(corr, valid, 10, t)
  flow_d, stats_d = ops.dense_match(a, b, 10, t)
  np.testing.assert_allclose(np.asarray(flow_d), np.asarray(flow_w), atol=1e-4)
  np.testing.assert_allclose(np.asarray(stats_d), np.asarray(stats_w), atol=1e-5)
  flow, _ = ops.match_flow(a, b, 10, jnp.float32(1000.0))
  np.testing.assert_allclose(np.asarray(flow)[:, 9:, :5], np.broadcast_to(
      [-9.0, 9.0], flow[:, 9:, :5].shape), atol=1e-3)
  # A small window on the same map goes the windowed way and matches it too.
  small = ops.soft_argmax_displacement(*ops.local_correlation(a, b, 1), 1, t)
  for x, y in zip(ops.match_flow(a, b, 1, t), small):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for x, y in zip(ops.match_flow(a, b, 1, t), ops.dense_match(a, b, 1, t)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4)


def test_offset_prior_moves_every_tap_like_a_shift_of_the_input():
  # With the zero-initialised offset convolution, an integer prior d makes the layer a plain
  # convolution of the input shifted by d (interior positions).
  x = _features(3, (1, 10, 10, 4))
  layer = ModulatedDeformConv(5, offset_groups=2)
  cond = jnp.zeros((1, 10, 10, 3))
  params = layer.init(jax.random.PRNGKey(0), x, cond)
  prior = jnp.broadcast_to(jnp.asarray([2.0, -1.0]), (1, 10, 10, 2))
  moved = layer.apply(params, x, cond, offset_prior=prior)
  shifted_x = jnp.roll(x, (-2, 1), axis=(1, 2))  # shifted_x[i] = x[i + d]
  plain = layer.apply(params, shifted_x, cond)
  np.testing.assert_allclose(np.asarray(moved)[:, 1:-3, 2:-2], np.asarray(plain)[:, 1:-3, 2:-2],
                             atol=1e-5)
  _, offsets, _ = layer.apply(params, x, cond, offset_prior=prior, return_offsets=True)
  np.testing.assert_allclose(np.asarray(offsets).reshape(1, 10, 10, -1, 2)[..., 0], 2.0)


def test_match_radius_zero_is_the_papers_network_and_r_adds_only_the_prior():
  config = refsr.get_config('tiny')
  plain_model = create_model(config.model)
  config.model.match_radius = 2
  prior_model = create_model(config.model)
  lr, ref = init_inputs(config.model, 8)
  plain = jax.eval_shape(plain_model.init, jax.random.PRNGKey(0), lr, ref)['params']
  prior = jax.eval_shape(prior_model.init, jax.random.PRNGKey(0), lr, ref)['params']
  assert 'matcher' not in plain and prior['matcher']['log_temperature'].shape == ()
  c = config.model.features
  for l in range(config.model.num_dcn_layers):  # Flow (2) and match statistics (2) join each DOE.
    assert plain['ssen'][f'doe_{l}']['conv_in']['kernel'].shape[2] == 2 * c
    assert prior['ssen'][f'doe_{l}']['conv_in']['kernel'].shape[2] == 2 * c + 4
  del prior['matcher']
  for l in range(config.model.num_dcn_layers):
    del prior['ssen'][f'doe_{l}']['conv_in'], plain['ssen'][f'doe_{l}']['conv_in']
  assert jax.tree.map(lambda s: s.shape, plain) == jax.tree.map(lambda s: s.shape, prior)


def test_the_prior_finds_a_whole_pixel_shift_of_the_reference_before_training():
  # The reference goes through the LR encoder (box-averaged to the LR grid), so an untrained
  # network already matches a reference moved by whole LR pixels.
  config = refsr.get_config('tiny')
  config.model.match_radius = 3
  config.model.features = 16
  model = create_model(config.model)
  rng = np.random.default_rng(4)
  hr = jnp.asarray(rng.uniform(size=(1, 96, 96, 3)), jnp.float32)
  hr = jax.image.resize(jax.image.resize(hr, (1, 24, 24, 3), 'linear'), (1, 96, 96, 3), 'cubic')
  lr = ops.box_downsample(hr, 4)
  params = model.init(jax.random.PRNGKey(0), lr, hr)

  def flow(mdl, lr, ref):
    return mdl.matcher(mdl.lr_features(lr), mdl.lr_features(ops.box_downsample(ref, 4)))[0]

  moved = jnp.roll(hr, (8, -4), axis=(1, 2))  # 2 and -1 LR pixels: content at i sits at i + d.
  f = np.asarray(model.apply(params, lr, moved, method=flow))[0, 4:-4, 4:-4]
  assert abs(np.median(f[..., 0]) - 2.0) < 0.5 and abs(np.median(f[..., 1]) + 1.0) < 0.5



def test_local_soft_argmax_averages_only_around_the_best_match():
  """A peak at (2, -1) with weaker neighbours, and a plateau of weak candidates everywhere else:
  the window's soft arg-max is pulled towards the plateau's centre, the local one is the softmax
  average over the 3x3 around the peak, as computed by hand."""
  r, t = 4, 10.0
  d = ops.displacements(r)
  corr = np.full(len(d), 0.5, np.float32)
  peak = np.array([2.0, -1.0])
  near = np.all(np.abs(d - peak) <= 1, axis=1)
  corr[near] = 0.7
  corr[np.all(d == peak, axis=1)] = 0.9
  corr[np.all(d == peak + [0, 1], axis=1)] = 0.85
  valid = np.ones((1, 1, 1, len(d)), bool)
  c = jnp.asarray(corr)[None, None, None]
  w = np.exp(t * corr[near]) / np.exp(t * corr[near]).sum()
  expected = (w[:, None] * d[near]).sum(0)
  local, stats = ops.soft_argmax_displacement(c, valid, r, jnp.float32(t), 1)
  np.testing.assert_allclose(np.asarray(local)[0, 0, 0], expected, atol=1e-5)
  wide, stats_wide = ops.soft_argmax_displacement(c, valid, r, jnp.float32(t), 0)
  assert np.linalg.norm(np.asarray(wide)[0, 0, 0] - peak) > 0.5  # Pulled inwards.
  np.testing.assert_array_equal(stats, stats_wide)  # Statistics of the whole window either way.


def test_local_soft_argmax_is_the_same_on_both_paths():
  rng = np.random.default_rng(3)
  a = jnp.asarray(rng.normal(size=(2, 9, 11, 6)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(2, 9, 11, 6)), jnp.float32)
  dense = ops.dense_match(a, b, 3, jnp.float32(20.0), 1)
  corr, valid = ops.local_correlation(a, b, 3)
  windowed = ops.soft_argmax_displacement(corr, valid, 3, jnp.float32(20.0), 1)
  for x, y in zip(dense, windowed):
    np.testing.assert_allclose(x, y, atol=1e-4)


def test_warp_by_flow_moves_the_fine_image_by_factor_times_the_flow():
  rng = np.random.default_rng(5)
  img = jnp.asarray(rng.normal(size=(2, 16, 20, 3)), jnp.float32)
  flow = jnp.broadcast_to(jnp.array([0.5, -0.25], jnp.float32), (2, 4, 5, 2))
  out = np.asarray(ops.warp_by_flow(img, flow, 4))
  # out[y, x] = img[y + 2, x - 1]: exact away from the clamped edges.
  np.testing.assert_array_equal(out[:, :-2, 1:], np.asarray(img)[:, 2:, :-1])
  half_pixel = jnp.broadcast_to(jnp.array([0.125, 0.0], jnp.float32), (2, 4, 5, 2))
  half = np.asarray(ops.warp_by_flow(img, half_pixel, 4))  # Half a fine pixel: the mean of two.
  np.testing.assert_allclose(half[:, :-1], 0.5 * (np.asarray(img)[:, :-1] + np.asarray(img)[:, 1:]),
                             atol=1e-6)
  # Differentiable in the flow (the prior learns through the pre-warp).
  grad = jax.grad(lambda f: jnp.sum(ops.warp_by_flow(img, f, 4) ** 2))(flow + 0.1)
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
  with pytest.raises(ValueError, match='not 4x'):
    ops.warp_by_flow(img[:, :15], flow, 4)


def test_reference_prewarp_uses_the_flow_on_the_image_not_on_the_offsets():
  cfg = refsr.get_config('tiny').model
  cfg.match_radius, cfg.ref_prewarp = 2, True
  model = create_model(cfg)
  lr, ref = init_inputs(cfg, 8)
  rng = np.random.default_rng(0)
  lr = jnp.asarray(rng.uniform(size=lr.shape), jnp.float32)
  ref = jnp.asarray(rng.uniform(size=ref.shape), jnp.float32)
  params = model.init(jax.random.key(0), lr, ref)
  # Offsets start at zero: with the flow applied to the image, the first layer's offsets stay 0.
  _, offsets, _ = model.apply(params, lr, ref, return_offsets=True)
  np.testing.assert_array_equal(np.asarray(offsets[0]), 0.0)
  plain = create_model(dict(cfg, ref_prewarp=False))
  _, offsets_plain, _ = plain.apply(params, lr, ref, return_offsets=True)
  assert np.abs(np.asarray(offsets_plain[0])).max() > 0  # The flow, added to the offsets.
  # A constant whole-HR-pixel flow on the image is the reference moved by that many pixels.
  moved = model.clone(fixed_flow=(0.25, 0.0)).apply(params, lr, ref)
  shifted = jnp.concatenate([ref[:, 1:], ref[:, -1:]], axis=1)
  np.testing.assert_allclose(np.asarray(moved),
                             np.asarray(model.clone(fixed_flow=(0.0, 0.0)).apply(params, lr,
                                                                                shifted)),
                             atol=1e-6)


@pytest.mark.parametrize('size', [(8, 9), (20, 22)])  # The dense and the windowed path (r = 3).
def test_phase_search_with_one_version_is_match_flow(size):
  rng = np.random.default_rng(7)
  a = jnp.asarray(rng.normal(size=(2,) + size + (6,)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(2,) + size + (6,)), jnp.float32)
  for local in (0, 1):
    one = ops.match_flow_phases(a, [b], [(0.0, 0.0)], 3, jnp.float32(20.0), local)
    ref = ops.match_flow(a, b, 3, jnp.float32(20.0), local)
    for x, y in zip(one, ref):
      np.testing.assert_allclose(x, y, atol=1e-5)
    # A version moved by a known offset shifts every candidate, and so the flow, by that much.
    moved = ops.match_flow_phases(a, [b], [(0.25, -0.5)], 3, jnp.float32(20.0), local)
    np.testing.assert_allclose(moved[0], ref[0] + jnp.array([0.25, -0.5]), atol=1e-5)


def test_phase_search_finds_a_half_pixel_shift_that_the_lr_grid_search_cannot():
  """A smooth random HR image moved by 2 HR px (half an LR pixel): box-averaged to the LR grid,
  its best whole-LR-pixel match is ambiguous; with the reference's four half-pixel versions the
  search finds 0.5 LR px."""
  rng = np.random.default_rng(11)
  small = rng.uniform(size=(1, 20, 20, 3)).astype(np.float32)
  hr = np.asarray(ops.bicubic_upsample(jnp.asarray(small), 4))  # 80x80, smooth at HR scale.
  ref = jnp.asarray(np.pad(hr, ((0, 0), (2, 0), (2, 0), (0, 0)), mode='edge')[:, :80, :80])
  lr = ops.box_downsample(jnp.asarray(hr), 4)
  versions = [ops.box_downsample(ops.shift_image(ref, sy, sx), 4)
              for sy in (0, 2) for sx in (0, 2)]
  offsets = [(sy / 4, sx / 4) for sy in (0, 2) for sx in (0, 2)]
  inner = (0, slice(3, 17), slice(3, 17))
  phased, _ = ops.match_flow_phases(lr, versions, offsets, 2, jnp.float32(200.0), 1)
  plain, _ = ops.match_flow(lr, versions[0], 2, jnp.float32(200.0), 1)
  err_phased = np.abs(np.asarray(phased)[inner] - 0.5).mean()
  err_plain = np.abs(np.asarray(plain)[inner] - 0.5).mean()
  assert err_phased < 0.05, err_phased
  assert err_plain > 3 * err_phased, (err_plain, err_phased)


def test_shift_image():
  x = jnp.arange(2 * 5 * 4 * 1, dtype=jnp.float32).reshape(2, 5, 4, 1)
  y = np.asarray(ops.shift_image(x, 2, 1))
  np.testing.assert_array_equal(y[:, :3, :3], np.asarray(x)[:, 2:, 1:])
  np.testing.assert_array_equal(y[:, 3:], np.repeat(y[:, 2:3], 2, axis=1))  # Edge repeated.
  assert ops.shift_image(x, 0, 0) is x


def test_sub_pixel_search_adds_no_parameters_and_runs_at_odd_sizes():
  cfg = refsr.get_config('tiny').model
  cfg.match_radius, cfg.match_local_radius, cfg.ref_prewarp = 2, 1, True
  base = create_model(cfg)
  phased = create_model(dict(cfg, match_phases=4))
  lr, ref = init_inputs(cfg, 7)
  params = base.init(jax.random.key(0), lr, ref)
  shapes = jax.tree.map(lambda x: x.shape, params)
  assert jax.tree.map(lambda x: x.shape, phased.init(jax.random.key(0), lr, ref)) == shapes
  out = phased.apply(params, lr, ref)
  assert out.shape == (1, 28, 28, 3) and bool(jnp.all(jnp.isfinite(out)))
  with pytest.raises(ValueError, match='does not divide'):
    create_model(dict(cfg, match_phases=3)).init(jax.random.key(0), lr, ref)
