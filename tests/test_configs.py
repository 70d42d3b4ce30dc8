"""The config files: every variant loads, variants are parsed alike, size variants stay small."""
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, config_module
from ssen_jax.core import config as config_lib

CONFIGS = {name: config_module(name) for name in ('refsr', 'refsr_gan', 'selfsim')}


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_every_variant_loads(name):
  module = CONFIGS[name]
  for variant in (None,) + module.VARIANTS:
    config = module.get_config(variant)
    assert config.model.scale == 4 and config.num_train_steps > 0


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_size_variants_keep_their_short_runs(name):
  # refsr_gan:tiny used to train the GAN stage's 50,000 steps (it tested for 'demo' only).
  refsr = CONFIGS['refsr']
  for size in refsr.SIZES:
    config = CONFIGS[name].get_config(size)
    assert config.num_train_steps == refsr.get_config(size).num_train_steps, size
  assert CONFIGS[name].get_config().num_train_steps >= 50_000


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_unknown_variants_are_refused_alike(name):
  with pytest.raises(ValueError, match=r"unknown variant\(s\) \['huge'\]; known: "):
    CONFIGS[name].get_config('tiny,huge')


def test_parse_variants():
  assert config_lib.parse_variants(' demo , baseline,', ['demo', 'baseline']) == {
      'demo', 'baseline'}
  assert config_lib.parse_variants(None, []) == frozenset()
  with pytest.raises(ValueError, match='known'):
    config_lib.parse_variants('x', ['y'])


def test_load_config_spec_and_errors(tmp_path):
  config = config_lib.load_config(str(REPO_ROOT / 'configs' / 'refsr_gan.py') + ':tiny,baseline')
  assert config.model.variant == 'baseline' and config.loss.adversarial_weight > 0
  assert config.num_train_steps == 2
  with pytest.raises(config_lib.ConfigError, match='does not exist'):
    config_lib.load_config(str(tmp_path / 'nope.py'))
  (tmp_path / 'empty.py').write_text('x = 1\n')
  with pytest.raises(config_lib.ConfigError, match='no get_config'):
    config_lib.load_config(str(tmp_path / 'empty.py'))


def test_configs_load_from_any_working_directory(tmp_path):
  """The configs are files, not an installed package: they find their siblings by path."""
  code = ('import sys; from ssen_jax.core import config; '
          'c = config.load_config(sys.argv[1]); print(c.model.variant, c.num_train_steps)')
  proc = subprocess.run([sys.executable, '-c', code, str(REPO_ROOT / 'configs/selfsim.py:tiny')],
                        cwd=tmp_path, capture_output=True, text=True, check=True)
  assert proc.stdout.split() == ['selfsim', '2']
