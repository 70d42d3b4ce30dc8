"""The reference-use probe (`ssen_jax.eval.probe`, `python -m ssen_jax.probe_reference`): its
ablations are exact, its end-point errors are those of a known displacement, and the command
writes its table, JSON and figure for a trained workdir."""
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import compilation_cache_env, config_module
from ssen_jax import models
from ssen_jax.data import demo_data
from ssen_jax.eval import probe
from ssen_jax.eval import protocol

REPO = pathlib.Path(__file__).resolve().parents[1]
refsr = config_module('refsr')


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('demo')
  return demo_data.build_demo_data(root)


@pytest.fixture(scope='module')
def examples(demo_dir):
  """Three real CUFED5-style groups of the demo set, cut to 64x64 HR (16x16 LR) for speed."""
  exs = protocol.load_dataset('cufed5', str(demo_dir.eval_dir), 4)[:3]
  out = []
  for ex in exs:
    hr = ex['hr'][:64, :64]
    out.append(dict(ex, hr=hr, lr=ex['lr'][:16, :16], refs=[r[:64, :64] for r in ex['refs']]))
  return out


def tiny_model(match_radius):
  cfg = refsr.get_config('tiny').model
  cfg.match_radius = match_radius
  model = models.create_model(cfg)
  params = model.init(jax.random.key(0), *models.init_inputs(cfg, 16))['params']
  # Random values for the zero-initialised parameters (offset and mask branches, the upsampler's
  # last convolution, ...): with them every setting would agree trivially.
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = iter(jax.random.split(jax.random.key(1), len(leaves)))
  new = [0.05 * jax.random.normal(next(keys), x.shape) if not np.any(x) else x for x in leaves]
  return model, jax.tree_util.tree_unflatten(tree, new)


def _inputs(ex):
  lr = jnp.asarray(ex['lr'], jnp.float32)[None] / 255.0
  ref = jnp.asarray(ex['refs'][0], jnp.float32)[None] / 255.0
  return lr, ref


@pytest.mark.parametrize('match_radius', [0, 3])
def test_zeroed_learned_offsets_equal_a_model_whose_offset_branches_output_zero(examples,
                                                                                 match_radius):
  model, params = tiny_model(match_radius)
  lr, ref = _inputs(examples[0])
  settings = probe.setting_models(model)
  ablated = settings['no_learned'].apply({'params': params}, lr, ref)
  # The same network with the offset channels (the first G*9*2 outputs) of every offset_conv set
  # to zero: its deformable layers sample where the prior points (or the grid), masks unchanged.
  zeroed = jax.tree_util.tree_map_with_path(
      lambda p, x: x.at[..., :18].set(0.0) if 'offset_conv' in jax.tree_util.keystr(p) else x,
      params)
  direct = model.apply({'params': zeroed}, lr, ref)
  np.testing.assert_array_equal(np.asarray(ablated), np.asarray(direct))
  full = settings['full'].apply({'params': params}, lr, ref)
  assert float(jnp.abs(full - direct).max()) > 1e-4  # The learned offsets did something.


def test_settings_without_a_prior_are_marked_not_applicable():
  model, _ = tiny_model(0)
  settings = probe.setting_models(model)
  assert settings['no_prior'] is None and settings['neither'] is None
  assert settings['full'] is not None and settings['no_learned'] is not None
  assert settings['oracle_flow'] is not None  # Moves the first layer also without a prior.
  baseline = models.create_model(refsr.get_config('tiny,baseline').model)
  with pytest.raises(ValueError, match='needs a RefSR model with SSEN'):
    probe.setting_models(baseline)


def test_prior_flow_zeroed_keeps_the_learned_offsets_and_removes_the_flow(examples):
  model, params = tiny_model(3)
  lr, ref = _inputs(examples[0])
  outs = {}
  for name, module in probe.setting_models(model).items():
    outs[name] = [np.asarray(a)[0] for a in probe.make_probe_fn(module)(params, lr, ref)]
  sr, offsets, flow, used = outs['neither']
  np.testing.assert_array_equal(offsets, 0.0)  # Every layer on the grid: nothing moves.
  np.testing.assert_array_equal(used, 0.0)
  assert np.abs(flow).max() > 0.1  # The prior still computed a flow; it is just not used.
  _, off_full, flow_full, used_full = outs['full']
  np.testing.assert_array_equal(used_full, flow_full)
  np.testing.assert_array_equal(flow_full, flow)  # The same prior in every setting.
  _, off_nl, _, _ = outs['no_learned']
  np.testing.assert_array_equal(off_nl, np.tile(flow, (1, 1, 9)))


def test_end_point_error_of_a_known_displacement(examples):
  """A hand-built first layer that moves by exactly (a, b) LR px: its EPE against a shift of k HR
  px is |(a, b) - (k, k) / 4|, and its |learned offset| is |(a, b)|."""
  model, params = tiny_model(0)
  a, b = 0.75, -0.25

  def fixed(p, x):
    name = jax.tree_util.keystr(p)
    if 'dcn_0' in name and 'offset_conv' in name:
      if name.endswith("['bias']"):
        return x.at[:18].set(jnp.tile(jnp.array([a, b]), 9))
      return x.at[..., :18].set(0.0)
    return x

  params = jax.tree_util.tree_map_with_path(fixed, params)
  shifts = (0, 2, 8)
  res = probe.shift_probe(examples, probe.make_probe_fn(model), params, scale=4, shifts=shifts)
  for i, k in enumerate(shifts):
    assert res['epe_total'][i] == pytest.approx(math.hypot(a - k / 4, b - k / 4), abs=1e-5)
    assert res['epe_prior'][i] == pytest.approx(math.hypot(k / 4, k / 4), abs=1e-6)
    assert res['learned_abs'][i] == pytest.approx(math.hypot(a, b), abs=1e-5)
    assert 10 < res['psnr'][i] < 60


def test_shifted_reference_and_valid_positions():
  hr = np.arange(16 * 12 * 3, dtype=np.uint16).reshape(16, 12, 3)
  moved = probe.shifted_reference(hr, 5)
  np.testing.assert_array_equal(moved[5:, 5:], hr[:-5, :-5])
  np.testing.assert_array_equal(moved[4], moved[5])  # Mirrored band: 'symmetric' repeats the edge.
  np.testing.assert_array_equal(probe.shifted_reference(hr, 0), hr)
  valid = probe.valid_positions((4, 3), 5, 4)
  # LR row y is valid when its HR block 4y..4y+3 moved by 5 stays inside 16 rows: y in {0, 1}.
  np.testing.assert_array_equal(valid[:, 0], [True, True, False, False])
  np.testing.assert_array_equal(valid[0], [True, False, False])
  epe = probe.first_layer_epe(np.zeros((4, 3, 18)), np.zeros((4, 3, 2)), (1.0, 1.0),
                              np.zeros((4, 3), bool))
  assert all(math.isnan(v) for v in epe.values())


def test_command_writes_table_json_and_figure(demo_dir, tmp_path):
  from ssen_jax.training import loop as train
  config = refsr.get_config('tiny')
  config.model.match_radius = 2
  config.data.demo, config.data.demo_dir = True, str(demo_dir.root.parent)
  config.data.eval_max_images = 1
  workdir = tmp_path / 'w'
  train.train_and_evaluate(config, str(workdir))
  # A three-group CUFED5-style folder cut from the demo's evaluation set.
  data = tmp_path / 'eval'
  data.mkdir()
  for gid in ('000', '001', '002'):
    for level in range(6):
      img = Image.open(demo_dir.eval_dir / f'{gid}_{level}.png')
      img.crop((0, 0, 64, 64)).save(data / f'{gid}_{level}.png')
  out = tmp_path / 'probe'
  cmd = [sys.executable, '-m', 'ssen_jax.probe_reference', f'--workdir={workdir}',
         f'--dataset_dir={data}', f'--out_dir={out}', '--shifts=0,4',
         '--settings=full,neither,oracle_flow']  # The other settings: the library tests above.
  env = dict(os.environ, **compilation_cache_env())
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  assert '| full (as trained) |' in run.stdout and '| neither (both zeroed) |' in run.stdout
  assert 'EPE prior alone (LR px)' in run.stdout and '| oracle_flow |' in run.stdout
  report = json.loads((out / 'probe.json').read_text())
  assert report['has_prior'] and set(report['settings']) == {'full', 'neither', 'oracle_flow'}
  full = report['settings']['full']
  assert full['ref_gain'] == pytest.approx(full['levels']['XH'] - full['unrelated'])
  assert full['shift']['shifts'] == [0, 4]
  assert report['settings']['neither']['shift']['learned_abs'] == [0.0, 0.0]
  figure = Image.open(out / 'probe_shift.png')
  assert figure.size == (900, 540) and len(figure.getcolors(maxcolors=10**6)) > 10
  # Outputs are never replaced without --overwrite, and the refusal is one line.
  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
  assert again.returncode == 1 and again.stderr.strip().splitlines()[-1].startswith(
      'error: --out_dir'), again.stderr[-2000:]
  bad = subprocess.run([sys.executable, '-m', 'ssen_jax.probe_reference',
                        f'--workdir={tmp_path / "missing"}', f'--out_dir={tmp_path / "x"}'],
                       cwd=REPO, capture_output=True, text=True, env=env)
  assert bad.returncode == 1 and 'Traceback' not in bad.stderr
  assert bad.stderr.strip().splitlines()[-1].startswith('error:')
  # --checkpoint takes a step, best or latest (no .pth: the probe needs the workdir's config);
  # the old --checkpoint_step N is its deprecated spelling.
  path, old = (subprocess.run(
      [sys.executable, '-m', 'ssen_jax.probe_reference', f'--workdir={workdir}',
       f'--out_dir={tmp_path / "x"}', *args], cwd=REPO, capture_output=True, text=True, env=env)
      for args in (['--checkpoint=model.pth'], ['--checkpoint_step=1', '--every_checkpoint']))
  assert path.returncode == 1 and path.stderr.strip().splitlines() == [
      'error: --checkpoint takes a step of --workdir, best or latest here, got model.pth']
  assert old.returncode == 1 and old.stderr.strip().splitlines() == [
      'warning: --checkpoint_step is deprecated; use --checkpoint=1',
      'error: --every_checkpoint probes every checkpoint: drop --checkpoint']


def test_oracle_flow_moves_the_first_layer_by_the_true_shift(examples):
  """The oracle setting's first layer samples exactly k/scale LR px away (EPE 0, |learned| 0), and
  on a no-prior model it equals 'no_learned' at k = 0."""
  model, params = tiny_model(0)
  res = probe.run_probe(model, params, examples, scale=4, settings=('no_learned', 'oracle_flow'),
                        shifts=(0, 2, 8), table=False)
  oracle, plain = res['settings']['oracle_flow'], res['settings']['no_learned']
  np.testing.assert_allclose(oracle['shift']['epe_total'], 0.0, atol=1e-6)
  np.testing.assert_allclose(oracle['shift']['learned_abs'], 0.0, atol=1e-6)
  assert oracle['shift']['psnr'][0] == plain['shift']['psnr'][0]
  assert oracle['shift']['psnr'][2] != plain['shift']['psnr'][2]
  assert oracle['unrelated'] == plain['unrelated'] and oracle['unrelated_from'] == 'no_learned'
