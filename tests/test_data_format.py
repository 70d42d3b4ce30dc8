"""One training data format, TFDS (issue 22, section 5): the TFRecord shards' config field is
refused in one line with exit status 1, a workdir trained on shards is refused in one line that
says how to convert, then resumes on the TFDS dataset of the `data_prep.convert` alias, and the
docs describe no removed path."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import skimage.data
from PIL import Image

from ssen_jax.core import checkpointing
from ssen_jax.data import datasets
from ssen_jax.data_prep import convert
from ssen_jax.inference import restore
from ssen_jax.training import loop

from conftest import REPO_ROOT, compilation_cache_env, config_module
from test_reliability_checkpoints import _files, _resumable_workdir

refsr = config_module('refsr')
OLD_GLOB = '/data/tfrecords/cufed-*'


def _main(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **compilation_cache_env())
  return subprocess.Popen([sys.executable, '-m', 'ssen_jax.main', '--config=configs/refsr.py:tiny',
                           *args], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def test_the_shards_config_field_is_refused_in_one_line(tmp_path):
  line = 'error: ' + datasets.retired_train_pattern(OLD_GLOB)
  assert 'tfds_build --tfds_name ssen_cufed' in line and 'config.data.tfds_name' in line
  procs = [_main(f'--workdir={tmp_path / "a"}', f'--config.data.train_pattern={OLD_GLOB}'),
           _main(f'--workdir={tmp_path / "b"}', '--config.data.train_pattern', OLD_GLOB)]
  for proc in procs:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    assert err.strip() == line and 'Traceback' not in err
  # A config file written before TFDS was the one format still sets the field.
  config = refsr.get_config('tiny')
  config.data.train_pattern = OLD_GLOB
  with pytest.raises(ValueError) as e:
    loop.train_and_evaluate(config, str(tmp_path / 'c'))
  assert 'error: ' + str(e.value) == line
  assert sorted(os.listdir(tmp_path)) == []  # No workdir was made.


def test_an_old_config_json_without_shards_resumes_without_a_change():
  tfds = {'tfds_name': 'ssen_cufed', 'tfds_data_dir': '/d'}
  assert checkpointing.config_changes({'data': dict(tfds, train_pattern='')}, {'data': tfds}) == {}
  assert checkpointing.config_changes({'data': {'train_pattern': OLD_GLOB, 'tfds_name': ''}},
                                      {'data': tfds}) == {
      'data.tfds_data_dir': (None, '/d'), 'data.tfds_name': ('', 'ssen_cufed'),
      'data.train_pattern': (OLD_GLOB, None)}


def _cufed_folder(root):
  """8 CUFED pairs of 48x48 cut from a photo (reference: a nearby window)."""
  src = skimage.data.astronaut()
  for sub in ('input', 'ref'):
    (root / sub).mkdir(parents=True)
  for i in range(8):
    y, x = 40 * i, 50 * i
    Image.fromarray(src[y:y + 48, x:x + 48]).save(root / 'input' / f'{i:03d}.png')
    Image.fromarray(src[y + 5:y + 53, x + 3:x + 51]).save(root / 'ref' / f'{i:03d}.png')
  return root


def test_a_workdir_trained_on_shards_resumes_on_the_converted_dataset(tmp_path):
  old = refsr.get_config('tiny')
  old.data.train_pattern = OLD_GLOB  # What the configs held then.
  workdir = tmp_path / 'w'
  _resumable_workdir(workdir, old)  # Step 2 saved; config.json names the shards.
  assert json.loads((workdir / 'config.json').read_text())['data']['train_pattern'] == OLD_GLOB
  before = _files(workdir)
  assert restore.load_generator(workdir).step == 2  # Its checkpoints keep working.

  new = refsr.get_config('tiny')
  new.num_train_steps = 3
  new.data.tfds_name, new.data.tfds_data_dir = 'ssen_cufed', str(tmp_path / 'tfds')
  for config, allow in [(new, False), (refsr.get_config('tiny'), True)]:
    with pytest.raises(ValueError) as e:
      loop.train_and_evaluate(config, str(workdir), allow_config_change=allow)
    assert str(e.value) == (
        f"{workdir} was trained on TFRecord shards (data.train_pattern='{OLD_GLOB}' in its "
        'config.json), which are no longer read: prepare the TFDS dataset from the raw folder '
        '(python -m ssen_jax.data_prep.tfds_build --tfds_name ssen_cufed --dataset_dir RAW '
        '--tfds_data_dir DIR, or data_prep.convert with its old flags), then resume with '
        '--config.data.tfds_name=ssen_cufed --config.data.tfds_data_dir=DIR '
        '--allow_config_change (recorded in config_history.json)')
    assert _files(workdir) == before

  # The old conversion command, now the alias, on the raw folder; then the resume trains step 3.
  convert.convert('cufed', _cufed_folder(tmp_path / 'raw'), tmp_path / 'tfds')
  loop.train_and_evaluate(new, str(workdir), allow_config_change=True)
  assert checkpointing.checkpoint_steps(workdir)[-1] == 3
  [record] = json.loads((workdir / checkpointing.CONFIG_HISTORY_FILE).read_text())
  assert record['resumed_from_step'] == 2
  assert record['changes']['data.train_pattern'] == {'old': OLD_GLOB, 'new': None}
  assert record['changes']['data.tfds_name'] == {'old': '', 'new': 'ssen_cufed'}
  assert 'train_pattern' not in json.loads((workdir / 'config.json').read_text())['data']
  loop.train_and_evaluate(new, str(workdir))  # Its config.json is a TFDS one now: nothing to ask.


# Text that names the removed path: its config field, its files, its flags, the shard rule.
REMOVED = ('train_pattern', '.tfrecord', 'file_pattern', '--num_shards', 'multiple of the number '
           'of processes')


def test_docs_describe_no_removed_path():
  root = pathlib.Path(REPO_ROOT)
  docs = [root / 'README.md', root / 'launch' / 'README.md',
          root / 'ssen_jax' / 'data_prep' / 'README.md', *sorted((root / 'docs').glob('*.md')),
          *sorted((root / 'configs').glob('*.py')), *sorted((root / 'launch').glob('*.sh'))]
  found = [f'{p.relative_to(root)}: {s}' for p in docs for s in REMOVED if s in p.read_text()]
  assert not found, found
