"""The training levers measured for reference use (README "Reference use"): the offset branch's
step-size multiplier and the auxiliary alignment loss."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssen_jax.core import sharding
from ssen_jax.training import optim
from ssen_jax.training import steps

from conftest import config_module

refsr = config_module('refsr')


def _batch(config, seed=0, ref_is_hr=False):
  rng = np.random.default_rng(seed)
  p, s, b = config.data.hr_patch, config.model.scale, config.batch_size
  hr = rng.uniform(size=(b, p, p, 3)).astype(np.float32)
  ref = hr if ref_is_hr else rng.uniform(size=(b, p, p, 3)).astype(np.float32)
  return {'lr': rng.uniform(size=(b, p // s, p // s, 3)).astype(np.float32), 'hr': hr, 'ref': ref}


def test_offset_multiplier_scales_only_the_offset_branch():
  config = refsr.get_config('tiny')
  params = steps.Trainer(config, sharding.create_mesh(jax.devices()[:1])).init_state(0)['params']
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  updates = {}
  for mult in (1.0, 10.0):
    config.optim.offset_lr_multiplier = mult
    tx = optim.make_optimizer(config.optim)
    updates[mult], _ = tx.update(grads, tx.init(params), params)
  flat1 = jax.tree_util.tree_leaves_with_path(updates[1.0])
  flat10 = jax.tree.leaves(updates[10.0])
  branch = 0
  for (path, u1), u10 in zip(flat1, flat10):
    names = jax.tree_util.keystr(path)
    in_branch = 'doe_' in names or 'offset_conv' in names
    assert in_branch == optim.is_offset_branch(path)
    branch += in_branch
    np.testing.assert_allclose(np.asarray(u10), np.asarray(u1) * (10.0 if in_branch else 1.0),
                               rtol=1e-6, err_msg=names)
  assert branch >= 2 * config.model.num_dcn_layers  # Each layer's estimator and offset conv.


def test_multiplier_one_keeps_the_plain_optimizer_state():
  config = refsr.get_config('tiny')
  params = {'w': jnp.ones(3)}
  plain = optax.adam(optim.learning_rate_schedule(config.optim)).init(params)
  ours = optim.make_optimizer(config.optim).init(params)
  assert jax.tree.structure(plain) == jax.tree.structure(ours)  # Checkpoints stay compatible.


def test_alignment_loss_is_zero_for_the_hr_as_reference_without_dcn_layers():
  # With no deformable layer SSEN returns F_ref, so a reference equal to the HR crop meets the
  # target F_ref(HR) exactly; any other reference does not.
  config = refsr.get_config('tiny,dcn0')
  config.loss.align_weight = 1.0
  mesh = sharding.create_mesh(jax.devices()[:1])
  trainer = steps.Trainer(config, mesh)
  losses = {}
  for ref_is_hr in (True, False):
    state = trainer.init_state(0)
    _, metrics = trainer.train_step(state, sharding.global_batch(_batch(config, 0, ref_is_hr),
                                                                 mesh))
    losses[ref_is_hr] = {k: float(v) for k, v in metrics.items()}
  assert losses[True]['align_loss'] < 1e-5
  assert losses[False]['align_loss'] > 1e-3
  for m in losses.values():
    np.testing.assert_allclose(m['loss'], m['rec_loss'] + m['align_loss'], rtol=1e-5)


def test_alignment_loss_trains_the_offset_branch_and_leaves_the_default_step_alone():
  config = refsr.get_config('tiny')
  mesh = sharding.create_mesh(jax.devices()[:1])
  batch = sharding.global_batch(_batch(config, 1), mesh)
  plain = steps.Trainer(config, mesh)
  _, m0 = plain.train_step(plain.init_state(0), batch)
  assert 'align_loss' not in m0
  config.loss.align_weight = 0.5
  trainer = steps.Trainer(config, mesh)
  state0 = trainer.init_state(0)
  before = jax.tree.map(np.asarray, state0['params'])
  state, m = trainer.train_step(state0, batch)
  assert m['align_loss'] > 0
  # The same reconstruction loss as the plain step; the total adds the weighted alignment term.
  np.testing.assert_allclose(float(m['rec_loss']), float(m0['loss']), rtol=1e-5)
  np.testing.assert_allclose(float(m['loss']), float(m['rec_loss']) + 0.5 * float(m['align_loss']),
                             rtol=1e-5)
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state['params'], before)
  assert max(jax.tree.leaves(moved['ssen'])) > 0
