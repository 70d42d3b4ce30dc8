"""ssen_jax.data_prep.convert, the old TFRecord writer's command line kept as an alias that
prepares the TFDS dataset, on tiny layouts of real images (skimage.data); benchmark_input's demo
data."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import tensorflow_datasets as tfds
from PIL import Image

from conftest import REPO_ROOT
from ssen_jax.data import datasets
from ssen_jax.data import input_pipeline as ip
from ssen_jax.data_prep import convert
from ssen_jax.data_prep import tfds_build


@pytest.fixture
def cufed_dir(tmp_path):
  """6 CUFED pairs of 160x160 cut from a photo; reference 2 smaller (the builder pads it)."""
  src = skimage.data.astronaut()
  root = tmp_path / 'CUFED'
  (root / 'input').mkdir(parents=True)
  (root / 'ref').mkdir()
  for i in range(6):
    Image.fromarray(src[i * 40:i * 40 + 160, i * 30:i * 30 + 160]).save(root / f'input/{i:06d}.png')
    ref = src[i * 40 + 8:i * 40 + 168, i * 30 + 4:i * 30 + 164]
    if i == 2:
      ref = ref[:120, :150]
    Image.fromarray(ref).save(root / f'ref/{i:06d}.png')
  return root


def _stored(name, data_dir, split):
  """The examples in stored order, their images as the stored PNG bytes."""
  builder = tfds.builder(name, data_dir=str(data_dir))
  skip = {k: tfds.decode.SkipDecoding() for k in builder.info.features if k != 'name'}
  return list(builder.as_dataset(split=split, decoders=skip).as_numpy_iterator())


def test_alias_prepares_the_tfds_dataset_that_training_reads(cufed_dir, tmp_path):
  builder, split = convert.convert('cufed', cufed_dir, tmp_path / 'tfds')
  assert (builder.info.full_name, split) == ('ssen_cufed/1.0.0', 'train')
  assert not list((tmp_path / 'tfds').glob('cufed*'))  # No shards, no manifest.
  same = tfds_build.prepare('ssen_cufed', cufed_dir, tmp_path / 'direct')
  stored = _stored('ssen_cufed', tmp_path / 'tfds', 'train')
  assert stored == _stored('ssen_cufed', tmp_path / 'direct', 'train')  # tfds_build's, bytewise.
  assert [ex['name'] for ex in stored] == [f'{i:06d}'.encode() for i in range(6)]
  assert builder.info.metadata == same.info.metadata
  batch = next(ip.create_train_iterator(
      tfds_name='ssen_cufed', tfds_data_dir=str(tmp_path / 'tfds'), kind='refsr', hr_patch=160,
      scale=4, local_batch_size=6, seed=0, start_step=0, process_index=0, process_count=1))
  assert batch['hr'].shape == batch['ref'].shape == (6, 160, 160, 3)
  src = skimage.data.astronaut()
  crops = {src[i * 40:i * 40 + 160, i * 30:i * 30 + 160].tobytes() for i in range(6)}
  hrs = np.round(batch['hr'] * 255).astype(np.uint8)
  # Whole-image crops: each HR is one of the photos, turned or flipped.
  assert all(any(np.rot90(h[:, ::-1] if f else h, k).tobytes() in crops
                 for k in range(4) for f in (0, 1)) for h in hrs)


def test_alias_reads_the_old_div2k_layout_and_the_builders(tmp_path):
  """--input_dir the DIV2K_train_HR folder itself (the old layout) gives the dataset of
  ssen_div2k's own layout, source checksum included."""
  div = tmp_path / 'DIV2K' / 'DIV2K_train_HR'
  div.mkdir(parents=True)
  Image.fromarray(skimage.data.astronaut()).save(div / '0001.png')  # 512 x 512: 4 tiles.
  old, split = convert.convert('div2k', div, tmp_path / 'old')
  new, _ = convert.convert('div2k', div.parent, tmp_path / 'new')
  assert split == 'train' and old.info.splits['train'].num_examples == 4
  assert old.info.metadata == new.info.metadata
  assert _stored('ssen_div2k', tmp_path / 'old', 'train') == \
      _stored('ssen_div2k', tmp_path / 'new', 'train')
  assert list(div.parent.iterdir()) == [div]  # The link was made elsewhere, and is gone.
  c5 = tmp_path / 'CUFED5'
  c5.mkdir()
  for i in range(6):
    Image.fromarray(skimage.data.coffee()[i * 20:i * 20 + 60, :64]).save(c5 / f'000_{i}.png')
  assert convert.convert('cufed5', c5, tmp_path / 'old')[0].info.full_name == 'ssen_cufed5/1.0.0'
  assert convert.convert('folder', div, tmp_path / 'old')[1] == 'test'
  with pytest.raises(datasets.DatasetError, match='expected ROOT/input/'):
    convert.convert('cufed', c5, tmp_path / 'bad')
  with pytest.raises(datasets.DatasetError, match='unknown --dataset'):
    convert.convert('ssen_cufed', c5, tmp_path / 'bad')


def test_alias_cli_runs_old_command_lines_and_refuses_what_tfds_cannot_do(cufed_dir, tmp_path):
  run = lambda *a: subprocess.run([sys.executable, '-m', 'ssen_jax.data_prep.convert', *a],
                                  cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  old = ['--dataset', 'cufed', '--input_dir', str(cufed_dir), '--output_dir', str(tmp_path / 'o')]
  ok = run(*old, '--num_shards', '64', '--num_workers', '1')
  assert ok.returncode == 0, ok.stderr[-3000:]
  [note] = [l for l in ok.stderr.splitlines() if l.startswith('note:')]
  assert note == ('note: data_prep.convert is a deprecated alias now; it runs python -m '
                  f'ssen_jax.data_prep.tfds_build --tfds_name ssen_cufed --dataset_dir '
                  f'{cufed_dir} --tfds_data_dir {tmp_path / "o"} (TFRecord shards are no longer '
                  'written; '
                  '--num_shards, --num_workers ignored)')
  assert ok.stdout.splitlines()[-2:] == [  # After TFDS's own lines.
      f'ssen_cufed/1.0.0 in {tmp_path / "o" / "ssen_cufed" / "1.0.0"} (train: 6 examples)',
      f'Train with --config.data.tfds_name=ssen_cufed --config.data.tfds_data_dir={tmp_path / "o"}']
  assert not list((tmp_path / 'o').glob('cufed*'))  # No shards, no manifest.
  for flag, line in [('--skip_bad', 'error: --skip_bad: the TFDS build stops at an unreadable '
                                    'image; remove it and rerun'),
                     ('--overwrite', 'error: --overwrite: a prepared TFDS dataset is reused as it '
                                     'is; delete its folder (DATA_DIR/NAME/VERSION) to prepare it '
                                     'again'),
                     ('--tile_size=200', 'error: --tile_size 200: the TFDS dataset of cufed uses 0 '
                                         '(0: whole)'),
                     ('--name=train', 'error: --name: the TFDS dataset is named by --dataset '
                                      '(ssen_cufed)')]:
    bad = run(*old, flag)
    assert (bad.returncode, bad.stderr.strip()) == (1, line), bad.stderr[-3000:]
  missing = run('--dataset', 'cufed', '--input_dir', str(tmp_path / 'missing'), '--output_dir',
                str(tmp_path / 'o2'))
  assert missing.returncode == 1 and 'Traceback' not in missing.stderr
  assert missing.stderr.strip().splitlines()[-1] == \
      f'error: --input_dir {tmp_path / "missing"} is not a folder'


def test_benchmark_input_demo_data_goes_to_a_private_temporary_folder(monkeypatch, tmp_path):
  """Not a fixed /tmp/ssen_demo that another user could create first: a fresh mkdtemp folder
  (mode 0700), removed afterwards."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from ssen_jax.data_prep import benchmark_input  # pylint: disable=g-import-not-at-top
  from ssen_jax.data_prep import tfds_build  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
  roots = []

  def prepare_demo(root):
    roots.append((pathlib.Path(root), os.stat(root).st_mode & 0o777))
    return 'ssen_demo', f'{root}/tfds', None

  monkeypatch.setattr(tfds_build, 'prepare_demo', prepare_demo)
  for _ in range(2):
    with benchmark_input.private_demo_data() as (name, data_dir):
      assert name == 'ssen_demo' and data_dir.startswith(str(roots[-1][0]))
      assert roots[-1][0].is_dir()
  (a, mode_a), (b, mode_b) = roots
  assert a != b and a.parent == b.parent == tmp_path and mode_a == mode_b == 0o700
  assert list(tmp_path.iterdir()) == []
