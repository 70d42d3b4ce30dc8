"""TFDS builders (data_prep.tfds_builders) on tiny fake folders, read back, and training from them."""
import json
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
from ssen_jax.data_prep import layouts
from ssen_jax.data_prep import tfds_build
from ssen_jax.data_prep import tfds_builders


def _save(img, path):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(img).save(path)


@pytest.fixture(scope='module')
def raw(tmp_path_factory):
  """Tiny raw folders: CUFED pairs (one small ref), CUFED5 groups, a Set5-like folder, DIV2K."""
  root = tmp_path_factory.mktemp('raw')
  src = skimage.data.astronaut()
  for i in range(5):
    _save(src[i * 40:i * 40 + 48, i * 30:i * 30 + 48], root / f'cufed/input/{i:03d}.png')
    ref = src[i * 40 + 5:i * 40 + 53, i * 30 + 3:i * 30 + 51]
    _save(ref[:30, :40] if i == 2 else ref, root / f'cufed/ref/{i:03d}.png')
  coffee = skimage.data.coffee()
  for g in range(2):
    for k in range(6):
      _save(coffee[k * 20:k * 20 + 40, g * 50:g * 50 + 44], root / f'cufed5/{g:03d}_{k}.png')
  _save(coffee[:36, :52], root / 'set5/bird.png')
  _save(skimage.data.camera()[:40, :40], root / 'set5/cam.png')  # Gray: stored as RGB.
  _save(src, root / 'div2k/DIV2K_train_HR/0001.png')  # 512x512: 2x2 tiles of 480.
  _save(coffee[:60, :70], root / 'div2k/DIV2K_valid_HR/0801.png')
  return root


@pytest.fixture(scope='module')
def data_dir(raw, tmp_path_factory):
  out = tmp_path_factory.mktemp('tfds')
  for name, manual in [('ssen_cufed', 'cufed'), ('ssen_cufed5', 'cufed5'),
                       ('ssen_sr_folder/set5', 'set5'), ('ssen_div2k', 'div2k')]:
    tfds_build.prepare(name, raw / manual, out)
  return out


def _read(name, data_dir, split):
  """Examples as numpy, decoded, through a builder opened from the files alone."""
  builder = tfds.builder(name, data_dir=str(data_dir))
  return builder, list(builder.as_dataset(split=split).as_numpy_iterator())


def test_builders_store_the_raw_images(raw, data_dir):
  builder, pairs = _read('ssen_cufed', data_dir, 'train')
  assert [p['name'] for p in pairs] == [f'{i:03d}'.encode() for i in range(5)]
  np.testing.assert_array_equal(pairs[3]['hr'], np.asarray(Image.open(raw / 'cufed/input/003.png')))
  small = np.asarray(Image.open(raw / 'cufed/ref/002.png'))
  assert pairs[2]['ref'].shape == (48, 48, 3)  # Padded like data_prep.convert.
  np.testing.assert_array_equal(pairs[2]['ref'][:30, :40], small)
  np.testing.assert_array_equal(pairs[2]['ref'][30:48, :40], small[::-1][:18])
  meta = builder.info.metadata
  assert meta['source_files'] == 10 and len(meta['source_sha256']) == 64
  assert builder.info.splits['train'].num_examples == 5

  _, groups = _read('ssen_cufed5', data_dir, 'test')
  assert [g['name'] for g in groups] == [b'000', b'001'] and groups[1]['refs'].shape == (5, 40, 44, 3)
  np.testing.assert_array_equal(groups[1]['refs'][4], np.asarray(Image.open(raw / 'cufed5/001_5.png')))

  builder, folder = _read('ssen_sr_folder/set5', data_dir, 'test')
  assert builder.info.full_name == 'ssen_sr_folder/set5/1.0.0'
  assert [f['name'] for f in folder] == [b'bird', b'cam'] and folder[1]['hr'].shape == (40, 40, 3)
  np.testing.assert_array_equal(folder[1]['hr'][..., 0], folder[1]['hr'][..., 2])

  builder, tiles = _read('ssen_div2k', data_dir, 'train')
  assert [t['name'] for t in tiles] == [b'0001_r0_c0', b'0001_r0_c1', b'0001_r1_c0', b'0001_r1_c1']
  np.testing.assert_array_equal(tiles[3]['hr'], skimage.data.astronaut()[32:512, 32:512])
  assert builder.info.splits['validation'].num_examples == 1


def test_prepared_dataset_is_reused(raw, data_dir):
  info = data_dir / 'ssen_cufed/1.0.0/dataset_info.json'
  before = info.stat().st_mtime_ns
  tfds_build.prepare('ssen_cufed', raw / 'cufed', data_dir)
  assert info.stat().st_mtime_ns == before
  assert json.loads(info.read_text())['name'] == 'ssen_cufed'


def _iter(**kw):
  args = dict(kind='refsr', hr_patch=32, scale=4, local_batch_size=2, seed=3, start_step=0,
              process_index=0, process_count=1)
  args.update(kw)
  return ip.create_train_iterator(**args)


def test_training_stream_resumes_exactly(data_dir):
  """The stream started at step 2 is the uninterrupted one from step 2, bitwise."""
  by_tfds = _iter(tfds_name='ssen_cufed', tfds_data_dir=str(data_dir))
  first = [next(by_tfds) for _ in range(4)]
  resumed = _iter(tfds_name='ssen_cufed', tfds_data_dir=str(data_dir), start_step=2)
  for a in first[2:]:
    b = next(resumed)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_hosts_read_disjoint_shares(data_dir):
  shares = [ip.load_tfds_records('ssen_cufed', str(data_dir), 'train', 'refsr', 32, i, 2)
            for i in range(2)]
  hrs = [s['hr'].numpy().tolist() for s in shares]
  assert [len(h) for h in hrs] == [3, 2] and not set(hrs[0]) & set(hrs[1])
  whole = ip.load_tfds_records('ssen_cufed', str(data_dir), 'train', 'refsr', 32, 0, 1)
  assert hrs[0] + hrs[1] == whole['hr'].numpy().tolist()


def test_read_errors_are_one_line(data_dir, tmp_path):
  cases = [
      (dict(tfds_name='ssen_cufed', tfds_data_dir=str(tmp_path)), 'not (found|prepared) in'),
      (dict(tfds_name='ssen_div2k', tfds_data_dir=str(data_dir)), "needs a 'ref' feature"),
      (dict(tfds_name='ssen_cufed', tfds_data_dir=str(data_dir), tfds_split='test'), 'no split'),
      (dict(tfds_name='ssen_cufed', tfds_data_dir=str(data_dir), hr_patch=64), 'smaller than'),
      (dict(tfds_name='ssen_cufed', tfds_data_dir=str(data_dir), process_count=6,
            process_index=0), 'each host needs'),
      (dict(tfds_name=''), 'no training data'),
  ]
  for kw, match in cases:
    with pytest.raises(ValueError, match=match) as e:
      _iter(**kw)
    assert '\n' not in str(e.value)


def test_build_errors_are_one_line(raw, tmp_path):
  with pytest.raises(datasets.DatasetError, match='expected ROOT/input/'):
    tfds_build.prepare('ssen_cufed', raw / 'cufed5', tmp_path)
  with pytest.raises(datasets.DatasetError, match='needs a config: ssen_sr_folder/set5'):
    tfds_build.prepare('ssen_sr_folder', raw / 'set5', tmp_path)
  with pytest.raises(datasets.DatasetError, match='DIV2K_train_HR'):
    tfds_build.prepare('ssen_div2k', raw / 'set5', tmp_path)
  with pytest.raises(datasets.DatasetError, match='unknown dataset'):
    tfds_build.prepare('cufed', raw / 'cufed', tmp_path)
  assert not list(tmp_path.glob('ssen_*/*/dataset_info.json'))


def test_cli(raw, tmp_path):
  run = lambda *a: subprocess.run([sys.executable, '-m', 'ssen_jax.data_prep.tfds_build', *a],
                                  cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  ok = run('--tfds_name', 'ssen_cufed5', '--dataset_dir', str(raw / 'cufed5'), '--tfds_data_dir',
           str(tmp_path))
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert 'ssen_cufed5/1.0.0' in ok.stdout and 'test: 2 examples' in ok.stdout
  # Progress through the one helper: i/N, elapsed time and ETA per split.
  assert '[2/2] ssen_cufed5 test (' in ok.stderr and 'ETA' in ok.stderr, ok.stderr[-2000:]
  # The old spellings (--dataset, --manual_dir, --data_dir) work for one release, a line each.
  bad = run('--dataset', 'ssen_cufed', '--manual_dir', str(tmp_path / 'missing'), '--data_dir',
            str(tmp_path))
  assert bad.returncode == 1 and 'Traceback' not in bad.stderr
  lines = bad.stderr.strip().splitlines()  # Besides TFDS's own log lines.
  assert [line for line in lines if 'deprecated' in line] == [
      'warning: --dataset is deprecated; use --tfds_name=ssen_cufed',
      f'warning: --manual_dir is deprecated; use --dataset_dir={tmp_path / "missing"}',
      f'warning: --data_dir is deprecated; use --tfds_data_dir={tmp_path}'], bad.stderr
  assert lines[-1] == f'error: --dataset_dir {tmp_path / "missing"} is not a folder'


def test_generate_reports_progress(raw):
  jobs = layouts.find_cufed(raw / 'cufed')
  lines = []
  keys = [key for key, _ in tfds_builders.generate(jobs, name='pairs', log=lines.append)]
  assert len(keys) == len(jobs) == 5
  # One line per image below _PROGRESS_LINES images; the ETA once one has finished.
  assert [line.split(' (')[0] for line in lines] == [f'[{i}/5] pairs' for i in range(1, 6)]
  assert all('s elapsed, ETA ' in line for line in lines)


def test_training_reads_without_the_builder_code(data_dir):
  """A training process opens a prepared dataset from its files alone (builders not imported)."""
  code = ('import sys\n'
          'from ssen_jax.data import input_pipeline as ip\n'
          f'r = ip.load_tfds_records("ssen_cufed", {str(data_dir)!r}, "train", "refsr", 32, 0, 1)\n'
          'assert "ssen_jax.data_prep.tfds_builders" not in sys.modules\n'
          'print(int(r["hr"].shape[0]), int(r["ref"].shape[0]))\n')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ['5', '5']
