"""`python -m ssen_jax.convert_torch`: a PyTorch .pth becomes a workdir that `infer` and
`evaluate` accept, with the same output as the JAX model holding the same parameters; `infer`
also reads the .pth directly; architecture mismatches are reported in full, bad input in one line.
"""
import json

import jax
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from ssen_jax import models
from ssen_jax.core import checkpointing
from ssen_jax.data import images as image_io
from ssen_jax.data import imresize as imresize_lib
from ssen_jax.inference import restore
from ssen_jax.inference import tiling
from ssen_jax.interop import convert
from ssen_jax.interop import torch_reference as tr
from test_infer import assert_error, run_cli, run_many, run_parallel

from conftest import config_module

refsr = config_module('refsr')

CONFIG = 'configs/refsr.py:tiny'
LR_SIZE = (20, 26)


def torch_model(config, seed=0):
  """The PyTorch reference network of `config`'s architecture, every weight random."""
  m = config.model
  model = tr.build(m.variant, features=m.features, num_extract_blocks=m.num_extract_blocks,
                   num_recon_blocks=m.num_recon_blocks, num_dcn_layers=m.num_dcn_layers,
                   use_nonlocal=m.use_nonlocal, offset_groups=m.offset_groups, scale=m.scale)
  return tr.randomize_(model, seed=seed)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp('convert')
  config = refsr.get_config('tiny')
  state = torch_model(config).state_dict()
  torch.save(state, d / 'model.pth')
  bad = dict(state)  # One of each problem: a missing, an unexpected and a mis-shaped key.
  del bad['conv_lr.weight']
  bad['extra.weight'] = torch.zeros(3)
  bad['fuse.bias'] = torch.zeros(5)
  torch.save(bad, d / 'bad.pth')
  (d / 'junk.pth').write_bytes(b'not a torch file')
  hr = skimage.data.astronaut()[:4 * LR_SIZE[0], 200:200 + 4 * LR_SIZE[1]]
  Image.fromarray(imresize_lib.imresize(hr, 0.25)).save(d / 'lr.png')
  Image.fromarray(skimage.data.chelsea()[:90, :110]).save(d / 'ref.png')
  (d / 'bench').mkdir()
  Image.fromarray(hr).save(d / 'bench' / 'astronaut.png')
  return d


def jax_output(files):
  """What the flax model computes with the .pth's parameters (state_dict_to_params), in uint8."""
  config = refsr.get_config('tiny')
  model = models.create_model(config.model)
  lr = image_io.read_image(files / 'lr.png')
  ref = image_io.prepare_reference(image_io.read_image(files / 'ref.png').rgb, lr.rgb, 4)
  template = jax.eval_shape(model.init, jax.random.key(0), lr.rgb[None], ref[None])['params']
  params = convert.state_dict_to_params(convert.read_state_dict(files / 'model.pth'),
                                        template)
  gen = restore.Generator(config, model, params, 0)
  return np.asarray(image_io.to_pil(tiling.Upscaler(gen)(lr.rgb, ref), lr)).astype(int)


def test_convert_then_infer_and_evaluate(files, tmp_path):
  out = tmp_path / 'wd'
  proc = run_cli('convert_torch', files / 'model.pth', '--config', CONFIG, '--out_dir', out)
  assert proc.returncode == 0, proc.stderr
  assert 'wrote' in proc.stdout and 'step 0' in proc.stdout
  assert json.loads((out / 'config.json').read_text())['model']['features'] == 8
  assert checkpointing.checkpoint_steps(out) == [0]
  # infer from the converted workdir (as --workdir, and as --checkpoint), and from the .pth.
  sr_wd, sr_dir, sr_pth = tmp_path / 'wd.png', tmp_path / 'dir.png', tmp_path / 'pth.png'
  common = ['--lr', files / 'lr.png', '--ref', files / 'ref.png']
  cache = tmp_path / 'jax_cache'  # The first run compiles, the other two reuse it.
  runs = [run_cli('infer', *common, '--workdir', out, '--out', sr_wd, cache_dir=cache)]
  runs += run_many('infer', [common + ['--checkpoint', out, '--out', sr_dir],
                             common + ['--checkpoint', files / 'model.pth', '--config', CONFIG,
                                       '--out', sr_pth]], parallel=2, cache_dir=cache)
  for proc in runs:
    assert proc.returncode == 0, proc.stderr
  expected = jax_output(files)
  for path in (sr_wd, sr_dir, sr_pth):
    got = np.asarray(Image.open(path)).astype(int)
    assert got.shape == expected.shape == (4 * LR_SIZE[0], 4 * LR_SIZE[1], 3)
    assert np.abs(got - expected).max() <= 1 and (got == expected).mean() > 0.999
  # evaluate accepts the converted workdir.
  proc = run_cli('evaluate', '--workdir', out, '--dataset_dir', files / 'bench')
  assert proc.returncode == 0, proc.stderr
  assert 'ssen (step 0)' in proc.stdout and 'Bicubic' in proc.stdout


def test_overwrite_and_bad_input(files, tmp_path):
  full = tmp_path / 'full'
  full.mkdir()
  (full / 'keep.txt').write_text('x')
  (full / 'config.json').write_text('{}')
  ok = [files / 'model.pth', '--config', CONFIG, '--out_dir', full]
  run = tmp_path / 'run'  # A training workdir: --overwrite must not touch it.
  (run / 'checkpoints' / '5').mkdir(parents=True)
  (run / 'events.out.tfevents.1.host').write_text('')
  cases = [
      ([files / 'model.pth', '--config', CONFIG, '--out_dir', run, '--overwrite'],
       ['is a training workdir', 'choose another --out_dir']),
      ([files / 'nope.pth', '--config', CONFIG, '--out_dir', tmp_path / 'a'], ['does not exist']),
      ([files, '--config', CONFIG, '--out_dir', tmp_path / 'a'], ['is not a file']),
      ([files / 'junk.pth', '--config', CONFIG, '--out_dir', tmp_path / 'a'],
       ['cannot read PyTorch checkpoint', 'junk.pth']),
      ([files / 'model.pth', '--config', 'configs/nope.py', '--out_dir', tmp_path / 'a'],
       ['config file configs/nope.py does not exist']),
      ([files / 'model.pth', '--config', 'configs/refsr.py:huge', '--out_dir', tmp_path / 'a'],
       ['unknown variant']),
      (ok, ['is not empty', '--overwrite']),
      ([files / 'model.pth', '--out_dir', tmp_path / 'a'], []),  # --config is required.
  ]
  procs = run_many('convert_torch', [args for args, _ in cases])
  for proc, (_, words) in zip(procs[:-1], cases[:-1]):
    assert_error(proc, *words)
  assert procs[-1].returncode != 0 and 'config' in procs[-1].stderr
  assert not (tmp_path / 'a').exists()
  assert sorted(p.name for p in run.rglob('*')) == ['5', 'checkpoints', 'events.out.tfevents.1.host']
  # A mismatched state_dict: every problem listed, nothing written; infer says it in one line.
  # (Run together with the --overwrite conversion checked below.)
  bad, infer_bad, replaced = run_parallel([
      ('convert_torch', [files / 'bad.pth', '--config', CONFIG, '--out_dir', tmp_path / 'a']),
      ('infer', ['--checkpoint', files / 'bad.pth', '--config', CONFIG, '--lr', files / 'lr.png',
                 '--out', tmp_path / 'o.png']),
      ('convert_torch', ok + ['--overwrite'])], parallel=3)
  assert bad.returncode != 0 and bad.stderr.startswith('error: ') and 'Traceback' not in bad.stderr
  for words in ['missing (1)', 'conv_lr.weight', 'unexpected (1)', 'extra.weight',
                'shape mismatch (1)', 'fuse.bias: got (5,), model expects (8,)']:
    assert words in bad.stderr, bad.stderr
  assert not (tmp_path / 'a').exists()
  assert_error(infer_bad, 'missing (1)', 'unexpected (1)', 'shape mismatch (1)', 'convert_torch')
  # --overwrite replaces config.json and checkpoints/ only.
  assert replaced.returncode == 0, replaced.stderr
  assert (full / 'keep.txt').read_text() == 'x'
  assert json.loads((full / 'config.json').read_text())['model']['variant'] == 'ssen'
  assert checkpointing.checkpoint_steps(full) == [0]
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # No temp dirs.


def test_unwritable_out_dir_is_one_line_before_reading_the_pth(files, tmp_path):
  """An --out_dir that cannot be created is reported before the .pth is read: with junk.pth the
  error is still about --out_dir. The old spelling --out (one release) does the same after one
  warning line."""
  (tmp_path / 'file').write_text('')
  out = tmp_path / 'file' / 'w'
  new, junk, old = run_many('convert_torch', [
      [files / 'model.pth', '--config', CONFIG, '--out_dir', out],
      [files / 'junk.pth', '--config', CONFIG, '--out_dir', out],
      [files / 'model.pth', '--config', CONFIG, '--out', out]], parallel=3)
  for proc in (new, junk):
    assert_error(proc, f'--out_dir {out} is not writable', 'Not a directory')
  assert old.returncode == 1 and old.stderr.splitlines() == [
      f'warning: --out is deprecated; use --out_dir={out}', new.stderr.strip()], old.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ['file']


def test_overwrite_is_one_folder_swap_and_a_kill_in_between_loses_nothing(files, tmp_path,
                                                                           monkeypatch):
  """--overwrite swaps in a complete new folder: a failure of the second rename leaves the old
  workdir; a kill between the renames leaves it whole beside the missing --out, a reader says so
  in one line and the next convert_torch puts it back first."""
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from ssen_jax.data_prep import folder_swap  # pylint: disable=import-outside-toplevel
  from ssen_jax.training import workdir  # pylint: disable=import-outside-toplevel
  out = tmp_path / 'wd'
  out.mkdir()
  (out / 'notes.txt').write_text('mine')
  (out / 'config.json').write_text('{"old": true}')
  (out / 'checkpoints' / '0').mkdir(parents=True)
  (out / 'checkpoints' / '0' / 'old').write_text('old checkpoint')
  snapshot = lambda root: {str(p.relative_to(root)): p.read_bytes()
                           for p in sorted(root.rglob('*')) if p.is_file()}
  old = snapshot(out)
  hidden = lambda: sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('.'))

  def fail(new, dest):
    raise OSError(5, 'Input/output error')

  monkeypatch.setattr(folder_swap, '_move_in', fail)
  with pytest.raises(OSError, match='Input/output error'):
    workdir.import_pth(str(files / 'model.pth'), CONFIG, str(out), overwrite=True)
  monkeypatch.undo()
  assert snapshot(out) == old and hidden() == []

  script = ('import os, sys\n'
            'from ssen_jax.data_prep import folder_swap\n'
            'from ssen_jax.training import workdir\n'
            'folder_swap._move_in = lambda new, dest: os._exit(9)\n'
            'workdir.import_pth(sys.argv[1], sys.argv[2], sys.argv[3], overwrite=True)\n')
  proc = subprocess.run([sys.executable, '-c', script, str(files / 'model.pth'), CONFIG, str(out)],
                        cwd=checkpointing.__file__.rsplit('/ssen_jax/', 1)[0],
                        env=dict(os.environ), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 9, proc.stderr[-3000:]
  assert not out.exists() and snapshot(tmp_path / '.wd.old') == old
  with pytest.raises(FileNotFoundError, match=r'interrupted replacement left the previous one '
                                              r'whole in .*\.wd\.old'):
    checkpointing.read_config(out)

  workdir.import_pth(str(files / 'model.pth'), CONFIG, str(out), overwrite=True)
  new = snapshot(out)
  assert new['notes.txt'] == b'mine' and 'checkpoints/0/old' not in new
  assert json.loads(new['config.json'])['model']['variant'] == 'ssen'
  assert checkpointing.checkpoint_steps(out) == [0] and hidden() == []
