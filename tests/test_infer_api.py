"""The Python API (`ssen_jax.load_model`, `model(lr, ref=None)`), folder inference, balanced tiles
and the image-size limit. Tiny config with random weights (tests/test_infer.py's workdir)."""
import numpy as np
import pytest
from PIL import Image

from ssen_jax.data import images as image_io
from ssen_jax.inference import api
from ssen_jax.inference import tiling

from test_infer import LR_SIZE, assert_error, images, make_workdir, run_cli  # noqa: F401


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp('api') / 'wd'
  make_workdir(path, 'tiny,no_nonlocal')
  return path


@pytest.fixture(scope='module')
def model(workdir):
  import ssen_jax
  return ssen_jax.load_model(workdir)


# ---------------------------------------------------------------------------------------------
# Tiles.


@pytest.mark.parametrize('h,w,budget', [(2048, 2048, 1648 * 1648), (2048, 2048, 700 * 700),
                                        (1000, 333, 200 * 200), (61, 75, 48 * 48),
                                        (4096, 1000, 1000 * 1000)])
def test_plan_is_balanced_covers_and_bounded(h, w, budget):
  overlap = 32
  plan = tiling.plan_tiles(h, w, budget, overlap)
  sy, sx = plan.size
  assert sy * sx <= budget
  for length, size, starts in ((h, sy, plan.ys), (w, sx, plan.xs)):
    assert starts[0] == 0 and starts[-1] + size == length  # Covers.
    assert all(s % tiling.ALIGN == 0 for s in starts)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(size - g >= overlap for g in gaps)  # Neighbours share >= overlap ...
    # ... and not much more: the smallest equal tile for that count (within an alignment step).
    n = len(starts)
    if n > 1:
      assert size <= (length + (n - 1) * overlap) / n + 2 * tiling.ALIGN
  computed = plan.count * sy * sx / (h * w)
  print(f'\n[plan] {h}x{w}, budget {budget}: {len(plan.ys)}x{len(plan.xs)} tiles of {sy}x{sx}, '
        f'{computed:.3f}x the pixels')
  if (h, w, budget) == (2048, 2048, 1648 * 1648):
    assert computed <= 1.2  # Not 2x2 tiles of 1648 (2.6x).


def test_image_size_limit(tmp_path, monkeypatch):
  Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / 'big.png')
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
  with pytest.raises(image_io.DatasetError) as e:
    image_io.read_image(tmp_path / 'big.png')
  assert '50x40 = 2,000 pixels' in str(e.value) and '1,000-pixel limit' in str(e.value)
  assert '--allow_large_images' in str(e.value) and '\n' not in str(e.value)
  assert image_io.read_image(tmp_path / 'big.png', allow_large=True).rgb.shape == (40, 50, 3)
  assert Image.MAX_IMAGE_PIXELS == 1000  # Restored.


# ---------------------------------------------------------------------------------------------
# The API.


def test_api_kinds_and_errors(model, images):
  lr = np.asarray(Image.open(images / 'lr.png'))
  ref = np.asarray(Image.open(images / 'ref.png'))
  sr = model(lr, ref)
  assert sr.dtype == np.uint8 and sr.shape == (4 * LR_SIZE[0], 4 * LR_SIZE[1], 3)
  srf = model(lr.astype(np.float32) / 255, ref.astype(np.float64) / 255)
  assert srf.dtype == np.float32 and srf.shape == sr.shape
  assert np.abs(np.floor(srf * 255 + 0.5) - sr).max() <= 1
  # ref=None: the bicubic-upscaled input is the reference.
  selfref = image_io.self_reference(lr.astype(np.float32) / 255, 4)
  np.testing.assert_array_equal(model(lr.astype(np.float32) / 255),
                                model(lr.astype(np.float32) / 255, selfref))
  own = model(lr)
  assert own.shape == sr.shape and np.abs(own.astype(int) - sr).mean() > 0.5
  gray = lr.mean(-1).astype(np.uint8)
  assert model(gray).shape == sr.shape[:2] and model(gray[..., None]).shape == sr.shape[:2] + (1,)
  rgba = np.dstack([lr, np.full(LR_SIZE, 200, np.uint8)])
  out = model(rgba)
  assert out.shape == sr.shape[:2] + (4,) and (out[..., 3] == 200).all()
  assert model(gray.astype(np.uint16) * 257).dtype == np.uint16
  bad = [(lr[0, :, 0], 'HxW'), (np.zeros((4, 4, 5), np.uint8), 'channels'),
         (lr.astype(np.int32), 'dtype int32'), (lr / 255.0 * 2, 'outside [0, 1]'),
         (np.full((4, 4, 3), np.nan, np.float32), 'NaN'), (np.zeros((0, 4, 3)), 'empty')]
  for arr, words in bad:
    with pytest.raises(ValueError, match=words.replace('[', r'\[').replace(']', r'\]')) as e:
      model(arr)
    assert '\n' not in str(e.value)
  with pytest.raises(ValueError, match='ref'):
    model(lr, ref.astype(np.int64))


def test_api_equals_cli_and_folder(model, workdir, images, tmp_path):
  lr_dir, ref_dir, out_dir = tmp_path / 'in', tmp_path / 'refs', tmp_path / 'out'
  for d in (lr_dir, ref_dir):
    d.mkdir()
  lr = np.asarray(Image.open(images / 'lr.png'))
  Image.fromarray(lr).save(lr_dir / 'a.png')
  Image.fromarray(lr[:40, :48]).save(lr_dir / 'b.png')  # A second size.
  Image.fromarray(lr[:40, :48]).save(lr_dir / 'c.png')  # No reference in --ref_dir.
  (lr_dir / 'd.png').write_bytes((images / 'truncated.png').read_bytes())
  for stem in 'abd':
    Image.open(images / 'ref.png').save(ref_dir / f'{stem}.jpg' if stem == 'b' else
                                        ref_dir / f'{stem}.png')
  one = tmp_path / 'one.png'
  proc = run_cli('infer', '--workdir', workdir, '--lr', lr_dir / 'a.png', '--ref',
                 ref_dir / 'a.png', '--out', one)
  assert proc.returncode == 0, proc.stderr
  cli = np.asarray(Image.open(one))
  ref = np.asarray(Image.open(ref_dir / 'a.png'))
  np.testing.assert_array_equal(model(lr, ref), cli)  # The API computes what the CLI writes.
  proc = run_cli('infer', '--workdir', workdir, '--lr_dir', lr_dir, '--ref_dir', ref_dir,
                 '--out_dir', out_dir)
  lines = proc.stderr.strip().splitlines()
  print('\n[folder] ' + '\n[folder] '.join(lines))
  assert proc.returncode == 1
  assert sorted(p.name for p in out_dir.iterdir()) == ['a.png', 'b.png']
  assert (out_dir / 'a.png').read_bytes() == one.read_bytes()  # Bitwise the one-image output.
  assert sum('[' in l and '/4]' in l and 'ETA' in l for l in lines) == 4
  assert any('c.png' in l and 'no reference' in l for l in lines)
  assert any('d.png' in l and 'cannot read' in l for l in lines)
  assert lines[-1].startswith('error: 2 written') and 'c.png, d.png' in lines[-1]
  assert sum('compiled for LR' in l for l in lines) == 2  # One compilation per size.
  # Again: existing outputs kept (noted), unless --overwrite.
  before = (out_dir / 'a.png').stat().st_mtime_ns
  proc = run_cli('infer', '--workdir', workdir, '--lr_dir', lr_dir, '--ref', ref_dir / 'a.png',
                 '--out_dir', out_dir)
  assert 'exists, kept' in proc.stderr and (out_dir / 'a.png').stat().st_mtime_ns == before
  # Outputs that would overwrite each other, or the inputs: refused before any work.
  Image.fromarray(lr).save(lr_dir / 'a.jpg')
  proc = run_cli('infer', '--workdir', workdir, '--lr_dir', lr_dir, '--out_dir', tmp_path / 'o2')
  assert_error(proc, 'a.jpg and a.png -> a.png')
  assert not (tmp_path / 'o2').exists()
  (lr_dir / 'a.jpg').unlink()
  assert_error(run_cli('infer', '--workdir', workdir, '--lr_dir', lr_dir, '--out_dir',
                       lr_dir / '.' , '--overwrite'), 'is the input folder')
  blocked = tmp_path / 'file'
  blocked.write_text('x')
  assert_error(run_cli('infer', '--workdir', workdir, '--lr_dir', lr_dir, '--out_dir',
                       blocked / 'sub'), 'cannot write in --out_dir')


def test_import_stays_light():
  import subprocess
  import sys
  code = ('import sys, ssen_jax; assert callable(ssen_jax.__getattr__); '
          'assert "jax" not in sys.modules, "import ssen_jax imported jax"')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------
# Lists, batches, .pth weights, devices (Set5 crops).


@pytest.fixture(scope='module')
def set5_crops(set5_dir):
  """Small LR crops of Set5 (five 24x32, two 20x28, one gray 24x32) and references from other
  images (some None: self-reference)."""
  pictures = [np.asarray(Image.open(set5_dir / f'{n}.png').convert('RGB'))
              for n in ('baby', 'bird', 'butterfly', 'head', 'woman')]
  lrs = [p[40 + 7 * i:64 + 7 * i, 50:82] for i, p in enumerate(pictures)]
  lrs += [pictures[0][200:220, 100:128], pictures[2][100:120, 30:58]]
  lrs.append(pictures[4][60:84, 40:72].mean(-1).astype(np.uint8))  # Gray, the first size.
  refs = [pictures[(i + 1) % 5][:72, :90] for i in range(len(lrs))]
  refs[1] = refs[5] = None
  return lrs, refs


def one_by_one(model, lrs, refs):
  return [model(x, r) for x, r in zip(lrs, refs)]


@pytest.fixture(scope='module')
def nonlocal_model(tmp_path_factory):
  """The tiny model with its non-local blocks: batched attention rounds differently."""
  import ssen_jax
  path = tmp_path_factory.mktemp('api_nonlocal') / 'wd'
  make_workdir(path, 'tiny')
  return ssen_jax.load_model(path)


def test_list_and_batch_equal_one_by_one(nonlocal_model, set5_crops, capsys):
  model = nonlocal_model
  lrs, refs = set5_crops
  expected = one_by_one(model, lrs, refs)
  before = set(model._batched)
  got = model(lrs, refs, progress=True)
  assert isinstance(got, list) and len(got) == len(lrs)
  for g, e in zip(got, expected):
    assert g.dtype == e.dtype and g.shape == e.shape
    np.testing.assert_array_equal(g, e)  # Bitwise.
  # Six 24x32 images run as 4 + 2, the two 20x28 together: three batch shapes, compiled once.
  assert set(model._batched) - before == {(4, 24, 32), (2, 24, 32), (2, 20, 28)}
  lines = capsys.readouterr().err.strip().splitlines()
  assert lines[-1].startswith('[8/8]') and all(l.startswith('[') for l in lines), lines
  compiled = dict(model._batched)
  np.testing.assert_array_equal(model(lrs, refs)[3], expected[3])  # Reused, nothing new.
  assert model._batched == compiled and capsys.readouterr().err == ''
  # A batch (N, H, W, C) with N references, or none: the stack of the one-image results.
  batch = np.stack(lrs[:5])
  ref_batch = np.stack([r for r in refs if r is not None][:5])
  out = model(batch, ref_batch)
  assert out.shape == (5, 96, 128, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.stack(one_by_one(model, lrs[:5], ref_batch)))
  np.testing.assert_array_equal(model(batch.astype(np.float32) / 255)[2],
                                model(lrs[2].astype(np.float32) / 255))
  assert model([]) == []
  # vectorize=True: one vectorized call per group, equal up to float rounding.
  vectorized = api.Model(model.generator, vectorize=True)
  for g, e in zip(vectorized(lrs[5:7], refs[5:7]), expected[5:7]):
    assert np.abs(g.astype(int) - e).max() <= 1


def test_list_with_tiles_and_progress(model, set5_crops, capsys):
  lrs, refs = set5_crops
  tiled = api.Model(model.generator, tile=24, overlap=8, progress=True)
  pair = [lrs[0], lrs[5]]  # 24x32 (two tiles) and 20x28 (two tiles).
  got = tiled(pair, [refs[0], None])
  err = capsys.readouterr().err
  assert 'tile 2/2' in err and '[2/2]' in err
  for g, x, r in zip(got, pair, [refs[0], None]):
    np.testing.assert_array_equal(g, tiled(x, r, progress=False))
  assert capsys.readouterr().err == ''


def test_pth_and_converted_folder_equal_workdir(workdir, model, set5_crops, tmp_path):
  import torch
  from conftest import REPO_ROOT
  from ssen_jax.core import checkpointing
  from ssen_jax.interop import convert
  import ssen_jax
  lrs, refs = set5_crops
  params = checkpointing.restore_params(workdir, model.generator.params)[0]
  state = {k: torch.from_numpy(np.array(v)) for k, v in convert.params_to_state_dict(params).items()}
  torch.save(state, tmp_path / 'ssen.pth')
  expected = model(lrs[0], refs[0])
  config = f'{REPO_ROOT / "configs" / "refsr.py"}:tiny,no_nonlocal'
  for loaded in (ssen_jax.load_model(tmp_path / 'ssen.pth', config=config),
                 ssen_jax.load_model(workdir, checkpoint=tmp_path / 'ssen.pth'),
                 ssen_jax.load_model(checkpoint=workdir),  # A convert_torch-style folder.
                 ssen_jax.load_model(workdir, step=model.step),
                 ssen_jax.load_model(workdir, checkpoint=model.step),
                 ssen_jax.load_model(workdir, checkpoint='latest')):  # The tools' words.
    np.testing.assert_array_equal(loaded(lrs[0], refs[0]), expected)


def test_device_is_honoured(workdir, model, set5_crops):
  import jax
  import ssen_jax
  lrs, refs = set5_crops
  device = jax.devices()[1]
  there = ssen_jax.load_model(workdir, device=device)
  assert {d for x in jax.tree.leaves(there.generator.params) for d in x.devices()} == {device}
  got = there(lrs[:2], refs[:2])
  h, w = lrs[0].shape[:2]
  for exe in (there.upscaler.compiled(h, w), there.batched(2, h, w)):
    assert {d for s in jax.tree.leaves(exe.input_shardings) for d in s.device_set} == {device}
  for g, e in zip(got, one_by_one(model, lrs[:2], refs[:2])):
    np.testing.assert_array_equal(g, e)
  # A mesh of two devices, parameters replicated: a batch of two splits over it.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[2:4]), ('data',))
  spread = ssen_jax.load_model(
      workdir, device=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  got = spread(lrs[:2], refs[:2])
  batch_sharding = spread.batched(2, h, w).input_shardings[0][1]
  assert batch_sharding.device_set == set(mesh.devices) and not batch_sharding.is_fully_replicated
  for g, e in zip(got, one_by_one(model, lrs[:2], refs[:2])):
    np.testing.assert_array_equal(g, e)


def test_many_bad_inputs_are_one_sentence(model, workdir, set5_crops, tmp_path):
  import ssen_jax
  lrs, refs = set5_crops
  (tmp_path / 'w.pth').write_bytes(b'')
  cases = [
      (lambda: model(lrs[:3], refs[:2]), 'list of 3 images but ref holds 2'),
      (lambda: model(np.stack(lrs[:3]), np.zeros((2, 8, 8, 3), np.uint8)),
       'batch of 3 images but ref holds 2'),
      (lambda: model(lrs[:2], refs[0]), 'ref must be None or a list'),
      (lambda: model(lrs[0], refs[:1]), 'lr is one image'),
      (lambda: model([lrs[0], lrs[1][..., :2].astype(np.int32)]), r'lr\[1\] has dtype int32'),
      (lambda: model(np.zeros((0, 8, 8, 3), np.uint8)), 'empty batch'),
      (lambda: ssen_jax.load_model(workdir, step=1, checkpoint='1'), 'not both'),
      (lambda: ssen_jax.load_model(workdir, best=True, checkpoint='latest'), 'not both'),
      (lambda: ssen_jax.load_model(tmp_path / 'w.pth'), 'config='),
      (lambda: ssen_jax.load_model(checkpoint=3), 'is a step'),
      (lambda: ssen_jax.load_model(workdir, device='cpu'), 'jax.Device'),
      (lambda: ssen_jax.load_model(workdir, batch_size=0), 'batch_size'),
      (lambda: ssen_jax.load_model(), 'needs a workdir'),
  ]
  for call, words in cases:
    with pytest.raises(ValueError, match=words) as e:
      call()
    assert '\n' not in str(e.value)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    ssen_jax.load_model(tmp_path / 'nowhere')
