"""Whole-model parity with the PyTorch reference (`ssen_jax/interop/torch_reference.py`).

Random PyTorch weights (every parameter, the zero-initialised ones included) go through
`ssen_jax.interop.convert.state_dict_to_params`; the flax model must then give the same output and the same
gradients of the Charbonnier loss with respect to every parameter.

Sizes: LR 11x9 (reference 44x36), so the stride-2 convolutions see odd sizes and the offset
estimator's 1/8 scale is 2x2, not a single pixel.

'ssen_match' is the SSEN RefSR network with the correlation prior (`match_radius=2`, not in the
paper): a 5x5 window on the 11x9 grid, so the border positions have invalid displacements.
"""
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ssen_jax.interop import torch_reference as tm
from ssen_jax.interop import convert
from ssen_jax.models import RCAN, PatchDiscriminator, RefSRNet

FWD_TOL = 1e-4  # max abs, outputs of order 1.
GRAD_TOL = 1e-3  # max |g_jax - g_torch| / (max |g_torch| + 1e-8), per parameter tensor.
EPS = 1e-6  # Charbonnier epsilon (docs/choices.md).
LR_SIZE = (11, 9)
BATCH = 2

REFSR = dict(features=16, num_extract_blocks=2, num_recon_blocks=2, num_dcn_layers=2)
SELFSIM = dict(features=16, num_groups=2, num_blocks=2, reduction=4, num_dcn_layers=1)
RCAN_CFG = dict(features=16, num_groups=2, num_blocks=2, reduction=4)
CONFIGS = {'ssen': REFSR, 'baseline': REFSR, 'selfsim': SELFSIM, 'rcan': RCAN_CFG,
           'ssen_match': dict(REFSR, match_radius=2)}


def _network(variant):
  """The model variant of a test variant: 'ssen_match' is an 'ssen' network."""
  return variant.split('_')[0]


def _flax_model(variant, **extra):
  cfg = dict(CONFIGS[variant], **extra)
  variant = _network(variant)
  if variant in ('ssen', 'baseline'):
    return RefSRNet(use_ssen=variant == 'ssen', **cfg)
  return RCAN(use_ssen=variant == 'selfsim', **cfg)


def _data(seed=0):
  rng = np.random.default_rng(seed)
  h, w = LR_SIZE
  lr = rng.random((BATCH, h, w, 3), dtype=np.float32)
  ref = rng.random((BATCH, 4 * h, 4 * w, 3), dtype=np.float32)
  hr = rng.random((BATCH, 4 * h, 4 * w, 3), dtype=np.float32)
  return lr, ref, hr


def _charbonnier(x, y, sqrt):
  """mean(sqrt((x - y)² + ε²)) with the framework's sqrt (torch.sqrt or jnp.sqrt)."""
  return sqrt((x - y)**2 + EPS**2).mean()


def _offset_stats(offset_maps):
  """Mean |offset| and the fraction of 3x3 samples outside the (11, 9) LR grid."""
  if not offset_maps:
    return None
  h, w = LR_SIZE
  mean_abs, outside = [], []
  for om in offset_maps:
    off = om[:, :18].reshape(om.shape[0], 9, 2, h, w)
    tap_y = torch.arange(3).repeat_interleave(3).view(1, 9, 1, 1) - 1
    tap_x = torch.arange(3).repeat(3).view(1, 9, 1, 1) - 1
    y = torch.arange(h).view(1, 1, h, 1) + tap_y + off[:, :, 0]
    x = torch.arange(w).view(1, 1, 1, w) + tap_x + off[:, :, 1]
    mean_abs.append(off.abs().mean().item())
    outside.append(((y <= -1) | (y >= h) | (x <= -1) | (x >= w)).float().mean().item())
  return dict(mean_abs=float(np.mean(mean_abs)), outside=float(np.mean(outside)))


def _prior_stats(priors):
  """Mean |flow| (LR pixels) and mean peak softmax weight of the correlation prior."""
  if not priors:
    return None
  flow, stats = priors[0]
  return dict(flow=flow.abs().mean().item(), peak=stats[:, 0].mean().item())


def _torch_run(variant, seed=0):
  model = tm.randomize_(tm.build(_network(variant), **CONFIGS[variant]), seed=seed)
  lr, ref, hr = _data(seed)
  offset_maps, priors = [], []
  for name, module in model.named_modules():
    if name.endswith('offset_conv'):
      module.register_forward_hook(lambda m, i, out: offset_maps.append(out.detach()))
    if name == 'matcher':
      module.register_forward_hook(lambda m, i, out: priors.append([o.detach() for o in out]))
  sr = model(tm.to_nchw(lr), tm.to_nchw(ref))
  loss = _charbonnier(sr, tm.to_nchw(hr), torch.sqrt)
  loss.backward()
  grads = {k: p.grad.numpy() for k, p in model.named_parameters()}
  return (model, tm.to_nhwc(sr), loss.item(), grads, _offset_stats(offset_maps),
          _prior_stats(priors))


def _template(model, lr, ref):
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), lr, ref)['params']


@functools.lru_cache(maxsize=None)
def _run(variant):
  """Outputs, losses and gradients of both frameworks for one variant, computed once."""
  torch_model, sr_t, loss_t, grads_t, offsets, prior = _torch_run(variant)
  lr, ref, hr = _data()
  model = _flax_model(variant)
  template = _template(model, lr, ref)
  params = convert.state_dict_to_params(tm.state_dict_numpy(torch_model), template)

  @jax.jit
  def loss_and_grad(params):
    def loss_fn(p):
      sr = model.apply({'params': p}, lr, ref)
      return _charbonnier(sr, hr, jnp.sqrt), sr
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss_j, sr_j), grads_j = loss_and_grad(params)
  # Same rule, same layout: torch gradients become a flax-shaped tree.
  grads_t = convert.state_dict_to_params(grads_t, template)
  return dict(sr_t=sr_t, sr_j=np.asarray(sr_j), loss_t=loss_t, loss_j=float(loss_j),
              offsets=offsets, prior=prior,
              grads_t=grads_t, grads_j=jax.tree_util.tree_map(np.asarray, grads_j))


def _grad_errors(grads_t, grads_j):
  flat_t = jax.tree_util.tree_flatten_with_path(grads_t)[0]
  flat_j = dict(jax.tree_util.tree_flatten_with_path(grads_j)[0])
  errors = {}
  for path, g_t in flat_t:
    g_j = flat_j[path]
    name = '/'.join(p.key for p in path)
    errors[name] = (float(np.abs(g_j - g_t).max()) / (float(np.abs(g_t).max()) + 1e-8),
                    float(np.abs(g_t).max()))
  assert len(errors) == len(flat_j)
  return errors


VARIANTS = ['ssen', 'baseline', 'selfsim', 'rcan', 'ssen_match']


@pytest.mark.parametrize('variant', VARIANTS)
def test_forward_parity(variant):
  r = _run(variant)
  err = float(np.abs(r['sr_j'] - r['sr_t']).max())
  offsets, prior = r['offsets'], r['prior']
  print(f'\n[parity {variant}] forward max abs {err:.2e} (|sr| <= {np.abs(r["sr_t"]).max():.2f}), '
        f'loss {r["loss_j"]:.6f} vs {r["loss_t"]:.6f}'
        + (f', mean |offset| {offsets["mean_abs"]:.2f} px, {100 * offsets["outside"]:.0f}% of '
           f'samples outside' if offsets else '')
        + (f', prior mean |flow| {prior["flow"]:.2f} px, mean peak weight {prior["peak"]:.2f}'
           if prior else ''))
  assert r['sr_j'].shape == (BATCH, 4 * LR_SIZE[0], 4 * LR_SIZE[1], 3)
  assert np.abs(r['sr_t']).max() < 20  # Random weights keep the output in a sane range...
  assert np.abs(r['sr_t'] - tm.to_nhwc(tm.bicubic_upsample(
      tm.to_nchw(_data()[0]), 4))).std() > 0.1  # ...and the network part is not negligible.
  if offsets:  # The deformable sampling is really exercised.
    assert offsets['mean_abs'] > 0.5 and offsets['outside'] > 0.02
  assert (prior is not None) == (variant == 'ssen_match')
  if prior:  # The prior moves the first layer's samples by a fair fraction of a pixel.
    assert prior['flow'] > 0.2 and 0.1 < prior['peak'] < 0.9
  assert err <= FWD_TOL
  assert abs(r['loss_j'] - r['loss_t']) <= FWD_TOL


def _analytically_zero(name):
  """φ's bias adds θ_i·b to every logit of row i: the softmax ignores it, its gradient is 0."""
  return name.endswith('phi/bias')


def _check_prior_gradients(r, errors):
  """The temperature and the estimators' weights on the 4 prior channels, on their own scale."""
  assert 'matcher/log_temperature' in errors
  c, layers = CONFIGS['ssen_match']['features'], CONFIGS['ssen_match']['num_dcn_layers']
  prior_errors = {'matcher/log_temperature': errors['matcher/log_temperature'][0]}
  for l in range(layers):
    g_t = r['grads_t']['ssen'][f'doe_{l}']['conv_in']['kernel']
    g_j = r['grads_j']['ssen'][f'doe_{l}']['conv_in']['kernel']
    assert g_t.shape[2] == g_j.shape[2] == 2 * c + 4
    g_t, g_j = g_t[:, :, 2 * c:], g_j[:, :, 2 * c:]  # (flow, statistics) input channels.
    assert np.abs(g_t).max() > 0
    prior_errors[f'ssen/doe_{l}/conv_in/kernel[prior]'] = (
        float(np.abs(g_j - g_t).max()) / float(np.abs(g_t).max()))
  print(f'[parity ssen_match] prior gradients, relative error: '
        + ', '.join(f'{k} {v:.2e}' for k, v in prior_errors.items()))
  assert max(prior_errors.values()) <= GRAD_TOL


@pytest.mark.parametrize('variant', VARIANTS)
def test_gradient_parity(variant):
  r = _run(variant)
  errors = _grad_errors(r['grads_t'], r['grads_j'])
  zero = {k: v for k, v in errors.items() if _analytically_zero(k)}
  errors = {k: v for k, v in errors.items() if k not in zero}
  worst = max(errors, key=lambda k: errors[k][0])
  print(f'\n[parity {variant}] gradients of {len(errors)} tensors: worst relative error '
        f'{errors[worst][0]:.2e} at {worst} (max |g| {errors[worst][1]:.2e})')
  # Every parameter gets a gradient, the zero-initialised ones included...
  assert all(scale > 0 for _, scale in errors.values())
  bad = {k: v[0] for k, v in errors.items() if v[0] > GRAD_TOL}
  assert not bad, f'gradient mismatch: {bad}'
  if variant == 'ssen_match':
    _check_prior_gradients(r, errors)
  # ...except φ's biases, where both frameworks must give round-off only.
  if zero:
    scale = max(v[1] for v in errors.values())
    flat_j = {'/'.join(p.key for p in path): g
              for path, g in jax.tree_util.tree_flatten_with_path(r['grads_j'])[0]}
    noise = max(max(v[1], float(np.abs(flat_j[k]).max())) for k, v in zero.items())
    print(f'[parity {variant}] {len(zero)} φ biases (zero gradient in exact arithmetic): '
          f'max |g| {noise:.1e} against {scale:.1e} elsewhere')
    assert noise <= 1e-6 * scale


def test_chunked_nonlocal_parity(monkeypatch):
  """The flax model with the chunked non-local path still matches the dense PyTorch model."""
  module = importlib.import_module('ssen_jax.ops.attention')
  real_chunked = module.chunked_attention
  seen = []

  def spy(q, k, v, chunk):
    seen.append(q.shape[1])
    return real_chunked(q, k, v, chunk=chunk)

  monkeypatch.setattr(module, 'chunked_attention', spy)
  torch_model = tm.randomize_(tm.build('ssen', **dict(REFSR, num_dcn_layers=1)), seed=3)
  lr, ref, _ = _data(3)
  with torch.no_grad():
    sr_t = tm.to_nhwc(torch_model(tm.to_nchw(lr), tm.to_nchw(ref)))
  # 11x9 LR: the estimator's maps are 6x5 (30), 3x3 (9) and 2x2 (4) positions. A threshold of 8
  # and chunks of 4 put the first two through the chunked path, neither a multiple of the chunk.
  model = _flax_model('ssen', num_dcn_layers=1, nonlocal_dense_max=8, nonlocal_chunk=4)
  params = convert.state_dict_to_params(tm.state_dict_numpy(torch_model),
                                        _template(model, lr, ref))
  seen.clear()
  sr_j = np.asarray(jax.jit(model.apply)({'params': params}, lr, ref))
  err = float(np.abs(sr_j - sr_t).max())
  print(f'\n[parity ssen, chunked non-local] forward max abs {err:.2e}, chunked N = {seen}')
  assert sorted(seen) == [9, 30]
  assert err <= FWD_TOL


def test_discriminator_parity():
  torch_model = tm.randomize_(tm.PatchDiscriminator(features=8), seed=1)
  x = np.random.default_rng(1).random((BATCH, 40, 36, 3), dtype=np.float32)
  cot = np.random.default_rng(2).standard_normal((BATCH, 3, 2, 1)).astype(np.float32)
  logits_t = torch_model(tm.to_nchw(x))
  (logits_t * tm.to_nchw(cot)).sum().backward()
  grads_t = {k: p.grad.numpy() for k, p in torch_model.named_parameters()}

  model = PatchDiscriminator(features=8)
  template = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params']
  params = convert.state_dict_to_params(tm.state_dict_numpy(torch_model), template)
  logits_j, vjp = jax.vjp(lambda p: model.apply({'params': p}, x), params)
  (grads_j,) = vjp(jnp.asarray(cot))
  logits_t = tm.to_nhwc(logits_t)
  assert logits_j.shape == logits_t.shape == (BATCH, 3, 2, 1)
  err = float(np.abs(np.asarray(logits_j) - logits_t).max())
  errors = _grad_errors(convert.state_dict_to_params(grads_t, template), grads_j)
  worst = max(errors, key=lambda k: errors[k][0])
  print(f'\n[parity discriminator] forward max abs {err:.2e}; worst gradient relative error '
        f'{errors[worst][0]:.2e} at {worst}')
  assert err <= FWD_TOL
  assert errors[worst][0] <= GRAD_TOL
