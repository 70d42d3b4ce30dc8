"""Issue 21: outputs that must not overwrite each other, the memory budget under a cgroup limit,
image-size checks that leave Pillow's process-wide limit alone, and folder inference that goes on
after one image's out-of-memory. Unit-level where possible (no model compiled here)."""
import os
import pathlib
import threading
import warnings

import numpy as np
import pytest
from PIL import Image
from PIL import PngImagePlugin

from ssen_jax.data import images as image_io
from ssen_jax.data_prep import layouts


def _png(path: pathlib.Path, h: int = 40, w: int = 50) -> pathlib.Path:
  Image.fromarray(np.full((h, w, 3), 7, np.uint8)).save(path)
  return path


# ---------------------------------------------------------------------------------------------
# Image-size guard without the global (issue 21, section 5).


def test_read_image_never_changes_pillows_global_limit(tmp_path, monkeypatch):
  path = _png(tmp_path / 'big.png')  # 2,000 pixels.
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
  seen = []
  inside, sampled = threading.Event(), threading.Event()
  original = PngImagePlugin.PngImageFile._open

  def slow_open(self):  # Holds the read inside Pillow while another thread looks at the limit.
    inside.set()
    sampled.wait(10)
    original(self)

  def watcher():
    if inside.wait(10):
      seen.append(Image.MAX_IMAGE_PIXELS)
    sampled.set()

  monkeypatch.setattr(PngImagePlugin.PngImageFile, '_open', slow_open)
  thread = threading.Thread(target=watcher)
  thread.start()
  img = image_io.read_image(path, allow_large=True)
  thread.join()
  assert img.rgb.shape == (40, 50, 3)
  assert seen == [1000]  # Another thread never sees the guard switched off.
  assert Image.MAX_IMAGE_PIXELS == 1000


def test_read_image_refuses_over_the_limit_in_one_line_without_a_warning(tmp_path, monkeypatch):
  path = _png(tmp_path / 'big.png')
  for limit in (1500, 500):  # Over the limit, and over twice it (where Pillow itself raises).
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', limit)
    with warnings.catch_warnings():
      warnings.simplefilter('error')  # No DecompressionBombWarning on the way.
      with pytest.raises(image_io.DatasetError) as e:
        image_io.read_image(path)
      assert image_io.read_image(path, allow_large=True).rgb.shape == (40, 50, 3)
    message = str(e.value)
    assert f'50x40 = 2,000 pixels, over the {limit:,}-pixel limit' in message, message
    assert '--allow_large_images' in message and '\n' not in message
    assert message.count(str(path)) == 1


def test_data_prep_loader_has_the_same_guard(tmp_path, monkeypatch):
  path = _png(tmp_path / 'big.png')
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1500)  # Pillow alone would only warn.
  with pytest.raises(image_io.DatasetError) as e:
    layouts._load(path)  # pylint: disable=protected-access
  message = str(e.value)
  assert 'over the 1,500-pixel limit' in message and '\n' not in message
  assert message.count(str(path)) == 1 and '--allow_large_images' not in message
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 5000)
  img, original = layouts._load(path)  # pylint: disable=protected-access
  assert img.shape == (40, 50, 3) and original == path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Folder inference after one image's out-of-memory (issue 21, section 5).


class _FakeModel:
  """`upscale_folder`'s view of an `api.Model`: fails on the files named in `errors`."""
  uses_ref = False

  def __init__(self, errors):
    self.errors = errors

  def upscale_file(self, lr, ref=None):
    del ref
    error = self.errors.get(lr.rgb.shape[1])  # Files told apart by their width.
    if error is not None:
      raise error
    return Image.fromarray(lr.uint8())


def test_folder_goes_on_after_out_of_memory(tmp_path):
  from jax.errors import JaxRuntimeError  # What jaxlib raises for an XLA out-of-memory.
  from ssen_jax.inference import folder
  src, out = tmp_path / 'in', tmp_path / 'out'
  src.mkdir()
  out.mkdir()
  files = [_png(src / f'{name}.png', 8, w)
           for name, w in (('a', 8), ('b', 9), ('c', 10), ('d', 11))]
  errors = {9: MemoryError(), 10: JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying '
                                                   'to allocate 9.1GiB.\nmore detail')}
  lines = []
  result = folder.upscale_folder(_FakeModel(errors), files, out, log=lines.append)
  assert result.written == ['a.png', 'd.png']  # The image after the failures still ran.
  assert [name for name, _ in result.failed] == ['b.png', 'c.png']
  assert sorted(p.name for p in out.iterdir()) == ['a.png', 'd.png']
  why = dict(result.failed)
  assert why['b.png'].startswith('MemoryError') and 'smaller --max_memory_gb' in why['b.png']
  assert why['c.png'].startswith('JaxRuntimeError: RESOURCE_EXHAUSTED') and '\n' not in why['c.png']
  assert any('[3/4] c.png: failed: JaxRuntimeError' in line for line in lines)
  assert 'b.png, c.png' in result.summary(1.0)
  # Kept outputs are not successes: a second pass writes nothing and says so.
  again = folder.upscale_folder(_FakeModel({}), files[:1], out)
  assert again.written == [] and again.kept == ['a.png']
  assert again.summary(1.0).startswith('0 written, 1 kept')


# ---------------------------------------------------------------------------------------------
# The memory budget: cgroup limits, the reference, the scale (issue 21, section 5).

GIB = 2**30


def _fake_cgroup(root: pathlib.Path, proc_line: str, files: dict) -> pathlib.Path:
  (root / 'proc/self').mkdir(parents=True)
  (root / 'proc/self/cgroup').write_text(proc_line + '\n')
  for rel, text in files.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text + '\n')
  return root


@pytest.mark.parametrize('proc_line, files, expected', [
    # v2, a SLURM job's limit on the parent of the process's cgroup; 'max' below it.
    ('0::/system.slice/slurmstepd.scope/job_7/step_0',
     {'sys/fs/cgroup/system.slice/slurmstepd.scope/job_7/memory.max': str(8 * GIB),
      'sys/fs/cgroup/system.slice/slurmstepd.scope/job_7/step_0/memory.max': 'max'}, 8 * GIB),
    # v2 inside a container: the path is not visible, the namespace root holds the limit.
    ('0::/docker/abc', {'sys/fs/cgroup/memory.max': str(3 * GIB)}, 3 * GIB),
    ('0::/', {'sys/fs/cgroup/memory.max': 'max'}, None),  # No limit.
    # v1: the memory controller's line; 2**63 - 4096 is v1's "unlimited".
    ('4:memory:/slurm/uid_1/job_9', {
        'sys/fs/cgroup/memory/slurm/uid_1/job_9/memory.limit_in_bytes': str(5 * GIB),
        'sys/fs/cgroup/memory/memory.limit_in_bytes': str(2**63 - 4096)}, 5 * GIB),
    ('7:cpu,cpuacct:/x', {'sys/fs/cgroup/cpu/x/memory.limit_in_bytes': '1'}, None),
    ('0::/', {}, None),  # No controller files at all.
])
def test_cgroup_memory_limit(tmp_path, proc_line, files, expected):
  from ssen_jax.inference import tiling
  root = _fake_cgroup(tmp_path, proc_line, files)
  assert tiling.cgroup_memory_limit(root) == expected


def test_default_budget_stays_inside_the_cgroup_limit(tmp_path):
  import jax
  from ssen_jax.inference import tiling
  assert tiling.cgroup_memory_limit(tmp_path / 'nothing') is None  # No /proc: no limit.
  physical = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  root = _fake_cgroup(tmp_path, '0::/job', {'sys/fs/cgroup/job/memory.max': str(GIB)})
  assert tiling.host_memory_bytes(root) == min(physical, GIB)
  assert tiling.host_memory_bytes(tmp_path / 'nothing') == physical
  if jax.default_backend() == 'cpu':  # On an accelerator the budget is the device's.
    assert tiling.default_memory_bytes(root) == min(physical, GIB) // 2


class _FakeGenerator:
  """What `tiling.Upscaler` reads of a generator, without a model (the call sizes are faked)."""
  uses_ref = True
  params = {'w': np.zeros(1000, np.float32)}
  sr_fn = None

  def __init__(self, scale):
    self.scale = scale


def test_plan_counts_the_reference_and_follows_the_scale(monkeypatch):
  import jax
  from ssen_jax.inference import tiling
  # Host arrays per LR pixel follow scale**2 (HR pixels per LR pixel).
  assert tiling.host_bytes(10, 10, 2) == 100 * (16 + 40 * 4)
  assert tiling.host_bytes(10, 10, 4) == 100 * (16 + 40 * 16)
  assert tiling.host_bytes(10, 10, 4, ref_bytes=123) == tiling.host_bytes(10, 10, 4) + 123
  if jax.default_backend() != 'cpu':
    pytest.skip('host arrays count in the budget on CPU only')
  x2, x4 = tiling.Upscaler(_FakeGenerator(2)), tiling.Upscaler(_FakeGenerator(4))
  assert x2.host_bytes(64, 64) < x4.host_bytes(64, 64) == tiling.host_bytes(64, 64, 4)
  monkeypatch.setattr(x4, 'estimate_bytes', lambda h, w: 4000 + 1000 * h * w)
  need, host = x4.estimate_bytes(256, 256), x4.host_bytes(256, 256)
  assert x4.plan(256, 256, max_bytes=need + host) is None  # Fits without a reference file ...
  ref = 12 * 2048 * 2048  # ... a decoded 2048x2048 reference held beside it does not.
  plan = x4.plan(256, 256, max_bytes=need + host, ref_bytes=ref)
  assert plan is not None and x4.estimate_bytes(*plan.size) <= need + host - (host + ref)
