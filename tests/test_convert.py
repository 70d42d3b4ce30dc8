"""`ssen_jax.interop.convert`: the naming rule, round trips, .pth loading, and its error messages."""
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ssen_jax.benchmarks import torch_peers
from ssen_jax.interop import torch_reference as tm
from ssen_jax.interop import convert
from ssen_jax.models import RCAN, RefSRNet, create_model, init_inputs

from conftest import config_module

TINY_REFSR = dict(features=4, num_extract_blocks=2, num_recon_blocks=1, num_dcn_layers=2)
TINY_RCAN = dict(features=4, num_groups=2, num_blocks=2, reduction=2, num_dcn_layers=1)


def _template(model):
  lr = jax.ShapeDtypeStruct((1, 4, 4, 3), jnp.float32)
  ref = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), lr, ref)['params']


def _random_params(template, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: rng.standard_normal(s.shape).astype(s.dtype), template)


@pytest.fixture(scope='module')
def refsr():
  """(template, torch model) of a tiny SSEN RefSR network."""
  return _template(RefSRNet(**TINY_REFSR)), tm.build('ssen', **TINY_REFSR)


def test_key_rule():
  sd = {'extract.3.conv1.weight': np.zeros((5, 4, 3, 2)), 'extract.3.conv1.bias': np.zeros(5)}
  template = {'extract_3': {'conv1': {'kernel': jax.ShapeDtypeStruct((3, 2, 4, 5), jnp.float32),
                                      'bias': jax.ShapeDtypeStruct((5,), jnp.float32)}}}
  params = convert.state_dict_to_params(sd, template)
  assert params['extract_3']['conv1']['kernel'].shape == (3, 2, 4, 5)
  back = convert.params_to_state_dict(params)
  assert set(back) == set(sd)


def test_conv_kernel_transposition():
  """(O, C, kh, kw)[o, c, i, j] == (kh, kw, C, O)[i, j, c, o]."""
  w = np.arange(5 * 4 * 3 * 2, dtype=np.float32).reshape(5, 4, 3, 2)
  template = {'conv': {'kernel': jax.ShapeDtypeStruct((3, 2, 4, 5), jnp.float32)}}
  kernel = convert.state_dict_to_params({'conv.weight': w}, template)['conv']['kernel']
  assert kernel[2, 1, 3, 4] == w[4, 3, 2, 1]
  assert kernel.flags['C_CONTIGUOUS']


@pytest.mark.parametrize('variant', ['ssen', 'selfsim', 'ssen_match'])
def test_state_dict_keys_are_those_of_the_torch_reference(variant):
  """The inverse rule reproduces the PyTorch reference's keys and shapes exactly."""
  if variant == 'ssen':
    model, torch_model = RefSRNet(**TINY_REFSR), tm.build('ssen', **TINY_REFSR)
  elif variant == 'ssen_match':  # The correlation prior: a 0-d log-temperature, wider conv_in.
    model = RefSRNet(match_radius=2, **TINY_REFSR)
    torch_model = tm.build('ssen', match_radius=2, **TINY_REFSR)
    assert torch_model.state_dict()['matcher.log_temperature'].shape == ()
  else:
    model, torch_model = RCAN(use_ssen=True, **TINY_RCAN), tm.build('selfsim', **TINY_RCAN)
  sd = convert.params_to_state_dict(_random_params(_template(model)))
  ref = torch_model.state_dict()
  assert sorted(sd) == sorted(ref)
  for k, v in ref.items():
    assert sd[k].shape == tuple(v.shape), k


def test_round_trip_params_state_dict_params_is_exact(refsr):
  template, _ = refsr
  params = _random_params(template)
  back = convert.state_dict_to_params(convert.params_to_state_dict(params), template)
  flat, flat_back = (flax.traverse_util.flatten_dict(t) for t in (params, back))
  assert flat.keys() == flat_back.keys()
  for k in flat:
    np.testing.assert_array_equal(flat_back[k], flat[k])
    assert flat_back[k].dtype == np.float32


def test_scalar_parameter_keeps_its_shape_both_ways():
  """The prior's 0-d 'matcher.log_temperature' <-> ('matcher', 'log_temperature'), still 0-d."""
  torch_model = tm.build('ssen', match_radius=2, **TINY_REFSR)
  template = _template(RefSRNet(match_radius=2, **TINY_REFSR))
  assert template['matcher']['log_temperature'].shape == ()
  params = convert.state_dict_to_params(tm.state_dict_numpy(torch_model), template)
  value = params['matcher']['log_temperature']
  assert value.shape == () and value.dtype == np.float32
  np.testing.assert_allclose(value, np.log(50.0), rtol=1e-6)  # Both sides' initial temperature.
  sd = convert.params_to_state_dict(params)
  assert sd['matcher.log_temperature'].shape == ()
  torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)


def test_torch_peer_of_a_config_has_the_prior():
  """`benchmarks.torch_peers.torch_model` builds the twin of config.model, match_radius included."""
  config = config_module('refsr').get_config('tiny')
  config.model.match_radius = 2
  model = create_model(config.model)
  lr, ref = init_inputs(config.model, 8)
  params = _random_params(jax.eval_shape(model.init, jax.random.PRNGKey(0), lr, ref)['params'])
  net = torch_peers.torch_model(torch, config, params)  # load_state_dict(strict=True) inside.
  assert net.matcher.radius == 2
  assert net.matcher.log_temperature.item() == float(params['matcher']['log_temperature'])


def test_round_trip_torch_state_dict(refsr):
  template, torch_model = refsr
  sd = tm.state_dict_numpy(torch_model)
  back = convert.params_to_state_dict(convert.state_dict_to_params(sd, template))
  assert back.keys() == sd.keys()
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k])


def test_variables_dict_template(refsr):
  template, torch_model = refsr
  out = convert.state_dict_to_params(tm.state_dict_numpy(torch_model), {'params': template})
  assert set(out) == {'params'} and 'ssen' in out['params']
  assert convert.params_to_state_dict(out).keys() == torch_model.state_dict().keys()


@pytest.mark.parametrize('wrap', ['bare', 'state_dict', 'params', 'model', 'data_parallel'])
def test_load_pth(tmp_path, refsr, wrap):
  template, torch_model = refsr
  sd = torch_model.state_dict()
  if wrap == 'bare':
    obj = sd
  elif wrap == 'data_parallel':
    obj = {'state_dict': {f'module.{k}': v for k, v in sd.items()}, 'epoch': 3}
  else:
    obj = {wrap: sd, 'optimizer': {'lr': 1e-4}, 'step': 10}
  path = tmp_path / 'model.pth'
  torch.save(obj, path)
  loaded = convert.load_pth(str(path))
  assert loaded.keys() == sd.keys()
  for k, v in sd.items():
    assert isinstance(loaded[k], np.ndarray)
    np.testing.assert_array_equal(loaded[k], v.numpy())
  params = convert.state_dict_to_params(loaded, template)
  np.testing.assert_array_equal(params['ssen']['dcn_1']['kernel'],
                                sd['ssen.dcn.1.weight'].numpy().transpose(2, 3, 1, 0))


def test_load_pth_bfloat16(tmp_path):
  path = tmp_path / 'bf16.pth'
  torch.save({'conv.weight': torch.ones(2, 3, 1, 1, dtype=torch.bfloat16)}, path)
  loaded = convert.load_pth(str(path))
  assert loaded['conv.weight'].dtype == np.float32
  np.testing.assert_array_equal(loaded['conv.weight'], 1.0)


def test_load_pth_rejects_non_state_dict(tmp_path):
  path = tmp_path / 'list.pth'
  torch.save([torch.zeros(2)], path)
  with pytest.raises(ValueError, match='does not hold a state_dict'):
    convert.load_pth(str(path))


def test_load_pth_without_torch(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now raises ImportError.
  with pytest.raises(ImportError, match='needs PyTorch'):
    convert.load_pth(str(tmp_path / 'x.pth'))


def test_convert_does_not_import_torch():
  code = 'import sys, ssen_jax.interop.convert; assert "torch" not in sys.modules, "torch imported"'
  subprocess.run([sys.executable, '-c', code], check=True)


def test_one_error_lists_every_problem(refsr):
  template, torch_model = refsr
  sd = tm.state_dict_numpy(torch_model)
  del sd['ssen.doe.1.nonlocal.2.w_z.weight']  # missing
  del sd['conv_recon.bias']  # missing
  sd['ssen.dcn.0.offset_conv.weight'] = np.zeros((27, 8, 3, 3), np.float32)  # mismatch (C)
  sd['fuse.weight'] = sd['fuse.weight'][:, :4]  # mismatch (C)
  sd['head.weight'] = np.zeros((4, 3, 3, 3), np.float32)  # unexpected (RCAN's name)
  sd['extract.7.conv1.bias'] = np.zeros(4, np.float32)  # unexpected (index out of range)
  with pytest.raises(ValueError) as info:
    convert.state_dict_to_params(sd, template)
  message = str(info.value)
  print('\n' + message)
  for needle in ['missing (2)',
                 'ssen.doe.1.nonlocal.2.w_z.weight -> ssen/doe_1/nonlocal_2/w_z/kernel',
                 'conv_recon.bias -> conv_recon/bias',
                 'unexpected (2)', 'head.weight', 'extract.7.conv1.bias -> extract_7/conv1/bias',
                 'shape mismatch (2)', 'ssen.dcn.0.offset_conv.weight', 'fuse.weight']:
    assert needle in message, needle
  # A mismatched key is reported once, as a mismatch, not also as missing.
  assert message.count('offset_conv.weight') == 1
  assert message.count('fuse.weight') == 1


def test_duplicate_keys_for_one_parameter_are_unexpected(refsr):
  template, torch_model = refsr
  sd = tm.state_dict_numpy(torch_model)
  sd['ssen.dcn_0.weight'] = sd['ssen.dcn.0.weight']  # Maps to the same flax path.
  with pytest.raises(ValueError, match=r'unexpected \(1\)(.|\n)*second key'):
    convert.state_dict_to_params(sd, template)
