"""Every config file, with no variant and with each variant it names, trains two steps.

The variants keep everything that makes them what they are (model variant, layer counts, non-local
blocks, reference mix, prior, GAN loss, data kind); only the sizes shrink (`shrink`): widths and
block counts to the tiny config's, batch 8, patches of at most 96 HR px, two steps. Data: the
embedded demo set. So that a documented command can never be left broken by a config it inherits
from (configs/selfsim.py:demo once inherited the RefSR demo's reference mix, which the single-image
input pipeline refuses).

To keep CI short: the configs as published and their `demo` variants train and evaluate (one
image); the model variants (baseline, no_nonlocal, dcnN, rcan) train without evaluation (the
evaluation code is the same for every model); the `tiny` variants are trained by tests/test_train.py
(refsr and the GAN stage from it, selfsim on a benchmark folder); refsr_gan's variants are refsr's
(checked below: same model and data sections) plus the GAN loss, which its published config trains
here.
"""
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
         if variant != 'tiny' and (name != 'refsr_gan' or variant is None)]


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
  evaluate = variant in (None,) + SIZES
  if config.data.kind == 'sisr' or not evaluate:
    # The demo's TFDS training data, read as any prepared dataset is; single-image models are
    # evaluated on a folder of HR images, model variants not at all.
    from ssen_jax.data_prep import tfds_build
    config.data.demo = False
    config.data.tfds_name, config.data.tfds_data_dir, demo = tfds_build.prepare_demo(demo_dir)
    config.data.eval_dir = ''
    if evaluate:
      folder = tmp_path / 'hr'
      folder.mkdir()
      (folder / 'a.png').write_bytes((demo.eval_dir / '000_0.png').read_bytes())
      config.data.eval_dir = str(folder)
  results = train.train_and_evaluate(config, str(tmp_path / 'w'))
  if evaluate:
    assert np.isfinite(results['psnr']), results
  else:
    from ssen_jax.inference import restore
    assert restore.load_generator(tmp_path / 'w').step == 2


def test_gan_variants_are_the_refsr_variants():
  gan, rec = MODULES['refsr_gan'], MODULES['refsr']
  assert tuple(gan.VARIANTS) == tuple(rec.VARIANTS)
  for variant in rec.VARIANTS:
    g, r = gan.get_config(variant), rec.get_config(variant)
    assert g.model.to_dict() == r.model.to_dict(), variant
    assert g.data.to_dict() == r.data.to_dict(), variant
    assert g.loss.adversarial_weight > 0 and r.loss.adversarial_weight == 0
