"""Every config file, with no variant and with each variant it names, trains two steps.

The variants keep everything that makes them what they are (model variant, layer counts, non-local
blocks, reference mix, prior, GAN loss, data kind); only the sizes shrink (`shrink`): widths and
block counts to the tiny config's, batch 8, patches of at most 96 HR px, two steps. Data: the
embedded demo set. So that a documented command can never be left broken by a config it inherits
from (configs/selfsim.py:demo once inherited the RefSR demo's reference mix, which the single-image
input pipeline refuses).

To keep CI short: the configs as published and their `demo` variants go through the trainer end to
end (`train_and_evaluate`: input pipeline, two steps, checkpoint, evaluation of one image); the model
variants (baseline, no_nonlocal, dcnN, rcan) take two steps of the trainer's own train step
(`steps.Trainer.train_step`) on a batch of the config's shapes, with finite losses (the
pipeline and evaluation code is the same for every model); the `tiny` variants are trained end to
end by tests/test_train.py (refsr and the GAN stage from it, selfsim on a benchmark folder);
refsr_gan's variants are refsr's (checked below: same model and data sections) plus the GAN loss,
which its published config trains here; `bf16` (compute dtype only) trains in tests/test_bf16.py.
"""
import jax
import numpy as np
import pytest

from conftest import config_module
from ssen_jax.training import loop as train

MODULES = {name: config_module(name) for name in ('refsr', 'refsr_gan', 'selfsim')}
SIZES = MODULES['refsr'].SIZES
# refsr_gan passes refsr's variants through (`refsr.get_config(arg)`, then the GAN stage's loss
# and schedule): its size variants train here, its model variants are checked to be refsr's
# (`test_gan_variants_are_the_refsr_variants`) instead of training each one twice.
CASES = [(name, variant) for name, module in MODULES.items()
         for variant in (None,) + tuple(module.VARIANTS)
         if variant not in ('tiny', 'bf16') and (name != 'refsr_gan' or variant is None)]


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
  from ssen_jax.data import demo_data
  root = tmp_path_factory.mktemp('demo')
  demo_data.build_demo_data(root)
  return str(root)


def shrink(config, demo_dir):
  """The config at test size, its structure and data choices kept; the embedded demo data."""
  m = config.model
  m.features, m.num_extract_blocks, m.num_recon_blocks = 8, 1, 1
  m.rcan_groups, m.rcan_blocks, m.rcan_reduction = 1, 1, 4
  config.gan.disc_features = 8
  config.data.hr_patch = min(config.data.hr_patch, 96)
  config.data.demo, config.data.demo_dir = True, demo_dir
  config.data.eval_max_images = 1
  config.batch_size = 8
  config.num_train_steps = config.optim.cycle_steps = 2
  config.optim.warmup_steps = 0
  config.log_every_steps = config.checkpoint_every_steps = config.eval_every_steps = 2
  config.num_image_summaries = 0
  return config


@pytest.mark.parametrize('name,variant', CASES, ids=[f'{n}:{v or "-"}' for n, v in CASES])
def test_config_trains_two_steps(name, variant, demo_dir, tmp_path):
  config = shrink(MODULES[name].get_config(variant), demo_dir)
  if variant not in (None,) + SIZES:  # A model variant: two steps of the trainer's train step.
    from ssen_jax.core import sharding
    from ssen_jax.training import steps
    mesh = sharding.create_mesh(jax.devices()[:1])
    trainer = steps.Trainer(config, mesh)
    state = trainer.init_state(0)
    rng = np.random.default_rng(0)
    p, b = config.data.hr_patch, config.batch_size
    hr = rng.uniform(size=(b, p, p, 3)).astype(np.float32)
    batch = {'lr': hr.reshape(b, p // 4, 4, p // 4, 4, 3).mean(axis=(2, 4)), 'hr': hr, 'ref': hr}
    losses = []
    for _ in range(2):
      state, metrics = trainer.train_step(state, sharding.global_batch(batch, mesh))
      losses.append(float(metrics['loss']))
    assert all(np.isfinite(losses)), losses
    return
  if config.data.kind == 'sisr':  # Single-image models are evaluated on a folder of HR images.
    from ssen_jax.data_prep import tfds_build
    config.data.demo = False
    config.data.tfds_name, config.data.tfds_data_dir, demo = tfds_build.prepare_demo(demo_dir)
    folder = tmp_path / 'hr'
    folder.mkdir()
    (folder / 'a.png').write_bytes((demo.eval_dir / '000_0.png').read_bytes())
    config.data.eval_dir = str(folder)
  results = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert np.isfinite(results['psnr']), results


def test_gan_variants_are_the_refsr_variants():
  gan, rec = MODULES['refsr_gan'], MODULES['refsr']
  assert tuple(gan.VARIANTS) == tuple(rec.VARIANTS)
  for variant in rec.VARIANTS:
    g, r = gan.get_config(variant), rec.get_config(variant)
    assert g.model.to_dict() == r.model.to_dict(), variant
    assert g.data.to_dict() == r.data.to_dict(), variant
    assert g.loss.adversarial_weight > 0 and r.loss.adversarial_weight == 0
