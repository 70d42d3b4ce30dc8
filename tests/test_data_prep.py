"""ssen_jax.data_prep.convert on tiny fake layouts built from real images (skimage.data)."""
import errno
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image

from conftest import REPO_ROOT
from ssen_jax.data_prep import convert
from ssen_jax.data_prep import layouts
from ssen_jax.data import datasets

_SPEC = {k: tf.io.VarLenFeature(tf.string) for k in ('name', 'hr', 'ref', 'refs')}


def _read(pattern):
  """{name: {key: [decoded uint8 images or str]}} for all records matching `pattern`."""
  out = {}
  for path in sorted(tf.io.gfile.glob(pattern)):
    for raw in tf.data.TFRecordDataset(path):
      ex = {k: tf.sparse.to_dense(v).numpy().tolist()
            for k, v in tf.io.parse_single_example(raw, _SPEC).items()}
      name = ex.pop('name')[0].decode()
      out[name] = {k: [tf.io.decode_png(b).numpy() for b in v] for k, v in ex.items() if v}
      out[name]['shard'] = os.path.basename(path)
  return out


@pytest.fixture
def cufed_dir(tmp_path):
  src = skimage.data.astronaut()
  root = tmp_path / 'CUFED'
  (root / 'input').mkdir(parents=True)
  (root / 'ref').mkdir()
  for i in range(6):
    Image.fromarray(src[i * 40:i * 40 + 160, i * 30:i * 30 + 160]).save(root / f'input/{i:06d}.png')
    ref = src[i * 40 + 8:i * 40 + 168, i * 30 + 4:i * 30 + 164]
    if i == 2:
      ref = ref[:120, :150]  # Smaller than 160: gets padded.
    Image.fromarray(ref).save(root / f'ref/{i:06d}.png')
  return root


def test_cufed_records_round_robin_and_reference_padding(cufed_dir, tmp_path):
  m = convert.convert('cufed', cufed_dir, tmp_path / 'out', num_shards=4, progress=False)
  assert m['num_examples'] == 6 and m['examples_per_shard'] == [2, 2, 1, 1]
  assert m['features'] == ['name', 'hr', 'ref'] and m['images_per_second'] > 0
  recs = _read(str(tmp_path / 'out/cufed-*-of-00004.tfrecord'))
  assert sorted(recs) == [f'{i:06d}' for i in range(6)]
  assert recs['000004']['shard'] == 'cufed-00000-of-00004.tfrecord'  # Example i -> shard i % 4.
  src = skimage.data.astronaut()
  np.testing.assert_array_equal(recs['000003']['hr'][0], src[120:280, 90:250])
  ref = recs['000002']['ref'][0]
  orig = src[88:208, 64:214]
  assert ref.shape == (160, 160, 3)
  np.testing.assert_array_equal(ref[:120, :150], orig)
  np.testing.assert_array_equal(ref[120:160, :150], orig[::-1][:40])  # Symmetric, edge repeated.
  np.testing.assert_array_equal(ref[:120, 150:], orig[:, ::-1][:, :10])
  assert sorted(os.listdir(tmp_path / 'out')) == sorted(['cufed.json'] + datasets.shard_names('cufed', 4))


def test_bad_image_stops_or_is_skipped(cufed_dir, tmp_path):
  out = tmp_path / 'out'
  convert.convert('cufed', cufed_dir, out, num_shards=2, progress=False)
  before = {p: (out / p).read_bytes() for p in os.listdir(out)}
  (cufed_dir / 'ref/000004.png').write_bytes(b'\x89PNG\r\n\x1a\ntruncated')
  with pytest.raises(convert.ConvertError, match=r'already holds cufed output.*--overwrite'):
    convert.convert('cufed', cufed_dir, out, num_shards=3, skip_bad=True, progress=False)
  with pytest.raises(convert.ConvertError, match=r'ref/000004\.png.*--skip_bad'):
    convert.convert('cufed', cufed_dir, out, num_shards=3, progress=False, overwrite=True)
  # The failed run left the previous output untouched and no temporary folder behind.
  assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before
  m = convert.convert('cufed', cufed_dir, out, num_shards=3, skip_bad=True, progress=False,
                      overwrite=True)
  assert m['num_examples'] == 5 and len(m['skipped_bad']) == 1
  assert 'ref/000004.png' in m['skipped_bad'][0]
  # The 2-shard files of the first run are gone: a glob sees each example once.
  assert sorted(_read(str(out / 'cufed-*.tfrecord'))) == ['000000', '000001', '000002', '000003',
                                                            '000005']
  assert sorted(os.listdir(out)) == sorted(['cufed.json'] + datasets.shard_names('cufed', 3))


def test_unwritable_output_dir_is_one_error(cufed_dir, tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(convert.ConvertError, match=r'--output_dir .* is not a writable folder'):
    convert.convert('cufed', cufed_dir, tmp_path / 'file' / 'out', num_shards=2, progress=False)


def test_stale_temporary_folder_is_removed(cufed_dir, tmp_path):
  out = tmp_path / 'out'
  stale = out / '.cufed.tmp-999999999'  # No such pid: an interrupted run's leftovers.
  stale.mkdir(parents=True)
  (stale / 'cufed-00000-of-00002.tfrecord').write_bytes(b'half')
  convert.convert('cufed', cufed_dir, out, num_shards=2, progress=False)
  assert not stale.exists()


def test_layout_errors(tmp_path, cufed_dir):
  with pytest.raises(convert.ConvertError, match='expected ROOT/input/'):
    convert.convert('cufed', cufed_dir / 'input', tmp_path / 'o', num_shards=1)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(convert.ConvertError, match='no images'):
    convert.convert('folder', tmp_path / 'empty', tmp_path / 'o', num_shards=1)
  with pytest.raises(convert.ConvertError, match='fewer than --num_shards'):
    convert.convert('cufed', cufed_dir, tmp_path / 'o', num_shards=7)
  (cufed_dir / 'ref/000001.png').unlink()
  with pytest.raises(convert.ConvertError, match='000001.png'):
    convert.convert('cufed', cufed_dir, tmp_path / 'o', num_shards=1)
  with pytest.raises(convert.ConvertError, match='XXX_0.png'):
    convert.convert('cufed5', cufed_dir, tmp_path / 'o', num_shards=1)
  with pytest.raises(convert.ConvertError, match='DIV2K_train_HR'):
    convert.convert('div2k', cufed_dir, tmp_path / 'o', num_shards=1)


def test_cufed5_and_div2k_tiles(tmp_path):
  src = skimage.data.coffee()
  c5 = tmp_path / 'CUFED5'
  c5.mkdir()
  for g in range(2):
    for i in range(6):
      Image.fromarray(src[i * 20:i * 20 + 100, g * 50:g * 50 + 120]).save(c5 / f'{g:03d}_{i}.png')
  convert.convert('cufed5', c5, tmp_path / 'o5', num_shards=1, progress=False)
  recs = _read(str(tmp_path / 'o5/cufed5-*'))
  assert len(recs['001']['refs']) == 5
  np.testing.assert_array_equal(recs['001']['refs'][4], src[100:200, 50:170])  # XL = _5.
  div = tmp_path / 'DIV2K_train_HR'
  div.mkdir()
  Image.fromarray(skimage.data.astronaut()).save(div / '0001.png')  # 512 x 512.
  Image.fromarray(skimage.data.camera()).save(div / '0002.jpg', quality=95)  # Gray JPEG.
  m = convert.convert('div2k', div, tmp_path / 'od', num_shards=2, tile_size=200, progress=False)
  assert layouts.tile_origins(512, 200) == [0, 200, 312]
  assert m['num_examples'] == 18 and m['tile_size'] == 200
  recs = _read(str(tmp_path / 'od/div2k-*'))
  np.testing.assert_array_equal(recs['0001_r2_c1']['hr'][0],
                                skimage.data.astronaut()[312:512, 200:400])
  gray_tile = recs['0002_r0_c0']['hr'][0]
  assert gray_tile.shape == (200, 200, 3)
  np.testing.assert_array_equal(gray_tile[..., 0], gray_tile[..., 2])


def test_cli_summary_and_errors(cufed_dir, tmp_path):
  run = lambda *a: subprocess.run([sys.executable, '-m', 'ssen_jax.data_prep.convert', *a], cwd=REPO_ROOT,
                                  capture_output=True, text=True, timeout=120)
  ok = run('--dataset', 'cufed', '--input_dir', str(cufed_dir), '--output_dir',
           str(tmp_path / 'o'), '--num_shards', '2', '--num_workers', '1')
  assert ok.returncode == 0, ok.stderr
  assert 'Wrote 6 examples' in ok.stdout and 'images/s' in ok.stdout and '100%' in ok.stderr
  bad = run('--dataset', 'cufed', '--input_dir', str(tmp_path / 'missing'), '--output_dir',
            str(tmp_path / 'o'))
  assert bad.returncode != 0 and 'Traceback' not in bad.stderr
  assert bad.stderr.strip().splitlines()[-1] == f'error: input folder {tmp_path / "missing"} ' \
      'does not exist'


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


def _snapshot(root):
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_overwrite_is_one_folder_swap_and_a_kill_in_between_loses_nothing(cufed_dir, tmp_path,
                                                                           monkeypatch):
  """--overwrite builds the new output beside the old and swaps the folders: the output is
  all-old or all-new; a kill between the swap's renames leaves the old folder whole, and the
  next run puts it back before anything else."""
  from ssen_jax.data_prep import folder_swap  # pylint: disable=import-outside-toplevel
  out = tmp_path / 'out'
  convert.convert('cufed', cufed_dir, out, num_shards=2, progress=False)
  (out / 'notes.txt').write_text('another file of the folder')
  old = _snapshot(out)
  hidden = lambda: sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('.'))

  def fail(new, dest):
    raise OSError(errno.EIO, 'Input/output error')

  monkeypatch.setattr(folder_swap, '_move_in', fail)  # The second rename fails: all-old.
  with pytest.raises(convert.ConvertError, match='cannot replace .* as one folder'):
    convert.convert('cufed', cufed_dir, out, num_shards=3, progress=False, overwrite=True)
  monkeypatch.undo()
  assert _snapshot(out) == old and hidden() == []

  script = ('import os, sys\n'
            'from ssen_jax.data_prep import convert, folder_swap\n'
            'folder_swap._move_in = lambda new, dest: os._exit(9)\n'  # Killed in between.
            'convert.convert("cufed", sys.argv[1], sys.argv[2], num_shards=3, progress=False, '
            'overwrite=True)\n')
  proc = subprocess.run([sys.executable, '-c', script, str(cufed_dir), str(out)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 9, proc.stderr[-3000:]
  assert not out.exists() and _snapshot(tmp_path / '.out.old') == old  # Nothing lost.
  with pytest.raises(convert.ConvertError, match='already holds cufed output'):
    convert.convert('cufed', cufed_dir, out, num_shards=3, progress=False)  # Put back first.
  assert _snapshot(out) == old and hidden() == []

  convert.convert('cufed', cufed_dir, out, num_shards=3, progress=False, overwrite=True)
  new = _snapshot(out)
  assert sorted(new) == ['cufed-00000-of-00003.tfrecord', 'cufed-00001-of-00003.tfrecord',
                         'cufed-00002-of-00003.tfrecord', 'cufed.json', 'notes.txt']
  assert json.loads(new['cufed.json'])['num_shards'] == 3
  assert len(_read(str(out / 'cufed-*.tfrecord'))) == 6 and hidden() == []
