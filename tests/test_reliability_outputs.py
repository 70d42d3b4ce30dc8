"""Issue 21: outputs that must not overwrite each other, the memory budget under a cgroup limit,
image-size checks that leave Pillow's process-wide limit alone, and folder inference that goes on
after one image's out-of-memory. Unit-level where possible (no model compiled here)."""
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
  files = [_png(src / f'{name}.png', 8, w) for name, w in (('a', 8), ('b', 9), ('c', 10), ('d', 11))]
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
