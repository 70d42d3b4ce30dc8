"""bfloat16 compute (`config.dtype = 'bfloat16'`, the `bf16` config variant).

Parameters, optimiser state, sampling coordinates (ssen_jax.ops.deform_conv), the attention's
logits and running max/sum (ssen_jax.ops.attention) and the correlation prior
(ssen_jax.ops.matching) stay float32; the convolutions' activations are bfloat16. Tested here:
the bf16 network's output stays close to the float32 network's on real photographs (Set5), a
bf16 run trains and its checkpoints restore as float32 (and back), the parameters stay float32.
The longer comparison of loss curves (demo, a few hundred steps) is in docs/performance.md.
"""
import jax
import numpy as np
import pytest
from PIL import Image

from conftest import config_module
from ssen_jax import models
from ssen_jax.data import imresize as imresize_lib
from ssen_jax.eval import metrics
from test_infer import random_params

refsr = config_module('refsr')


def _set5(set5_dir, side=96):
  hrs = [np.asarray(Image.open(p).convert('RGB'))[:side, :side].astype(np.float32) / 255
         for p in sorted(set5_dir.glob('*.png'))]
  lrs = [np.clip(imresize_lib.imresize(hr, 0.25), 0, 1) for hr in hrs]
  return np.stack(lrs), np.stack(hrs)


@pytest.mark.parametrize('variant', ['tiny', 'tiny,baseline'])
def test_bf16_output_close_to_float32_on_set5(variant, set5_dir):
  config = refsr.get_config(variant)
  config.model.match_radius = 3  # The prior's path too (float32 inside, bf16 features in).
  params = random_params(config, seed=1)
  lr, hr = _set5(set5_dir)
  ref = np.roll(hr, 3, axis=(1, 2))  # Related but moved: the offsets do real work.
  out = {}
  for dtype in ('float32', 'bfloat16'):
    model = models.create_model(config.model, dtype)
    out[dtype] = np.asarray(jax.jit(model.apply)({'params': params}, lr, ref))
    assert out[dtype].dtype == np.float32, (dtype, out[dtype].dtype)
  a, b = metrics.to_uint8(out['float32']), metrics.to_uint8(out['bfloat16'])
  diff = np.abs(a.astype(int) - b)
  # Measured (tiny, random weights): max 2/255, mean 0.16/255, 58-63 dB; the trained demo model
  # on Set5 (docs/performance.md): max 4/255, PSNR-Y against HR within 0.007 dB of float32's.
  assert 0 < diff.mean() < 0.5 and diff.max() <= 6, (diff.mean(), diff.max())
  assert min(metrics.psnr_y(x, y, 4) for x, y in zip(a, b)) > 50  # bf16 SR against float32 SR.


def _train(config, batch, steps):
  from ssen_jax.core import sharding
  from ssen_jax.training import steps as steps_lib
  mesh = sharding.create_mesh(jax.devices()[:1])
  trainer = steps_lib.Trainer(config, mesh)
  state, losses = trainer.init_state(0), []
  for _ in range(steps):
    state, metrics_ = trainer.train_step(state, sharding.global_batch(batch, mesh))
    losses.append(float(metrics_['loss']))
  return trainer, state, np.array(losses)


def test_bf16_trains_like_float32_and_checkpoints_restore_across_dtypes(set5_dir, tmp_path):
  """Same init, same batch of Set5 crops: the bf16 run's loss falls as the float32 run's does;
  its state (parameters, Adam moments) is float32, and its checkpoint restores into a float32
  trainer (and a float32 one into bf16) bit for bit."""
  from ssen_jax.core import checkpointing
  lr, hr = _set5(set5_dir, side=48)
  batch = {'lr': np.concatenate([lr, lr[:3]]), 'hr': np.concatenate([hr, hr[:3]])}
  batch['ref'] = np.roll(batch['hr'], 2, axis=(1, 2))
  runs = {}
  for variant in ('tiny', 'tiny,bf16'):
    config = refsr.get_config(variant)
    config.batch_size, config.data.hr_patch = 8, 48
    config.optim.learning_rate, config.optim.warmup_steps = 3e-3, 0
    runs[config.dtype] = _train(config, batch, 20)
  f32, bf16 = runs['float32'][2], runs['bfloat16'][2]
  # Measured: within 0.3 % of float32 at every step (0.0364, 0.0760, ... 0.0399 at step 10).
  np.testing.assert_allclose(bf16, f32, rtol=0.03)
  assert np.all(np.isfinite(bf16)) and bf16[-1] < 0.7 * bf16.max(), bf16
  trainer16, state16 = runs['bfloat16'][:2]
  dtypes = {x.dtype for x in jax.tree.leaves((state16['params'], state16['opt_state']))
            if np.issubdtype(x.dtype, np.floating)}
  assert dtypes == {np.dtype('float32')}, dtypes
  for (src, state), dst in (((trainer16, state16), runs['float32'][0]),
                            (runs['float32'][:2], trainer16)):
    workdir = tmp_path / src.config.dtype
    manager = checkpointing.create_manager(workdir, save_every=1, keep=1)
    checkpointing.save(manager, 30, state, force=True)
    manager.wait_until_finished()
    restored = checkpointing.restore(manager, dst.abstract_state(), step=30)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
