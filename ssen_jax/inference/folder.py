"""Folder inference: every image of a folder through one restored `api.Model`.

`OUT/<stem>.png` per image, written as the one-image command writes it (same `Model.upscale_file`,
so the files are bitwise equal); one compilation per distinct input size. The reference is one
file for all images, the file with the same stem in a reference folder, or the self-reference. An
image that cannot be read or has no reference is named and skipped, and so is one whose run fails
for lack of memory (MemoryError, an XLA out-of-memory or other runtime error): the folder goes on,
and the failures are listed in the summary. Existing outputs are kept (skipped with a note, never
counted as written) unless `overwrite`.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable, Optional

from ssen_jax.core import progress as progress_lib
from ssen_jax.data import images

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm',
                  '.gif')


def list_images(folder: str | os.PathLike) -> list[pathlib.Path]:
  """The image files (by suffix) directly in `folder`, sorted by name."""
  return sorted(p for p in pathlib.Path(folder).iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def colliding_stems(files: list[pathlib.Path]) -> dict[str, list[str]]:
  """{stem: [file names]} for stems shared by several inputs (`a.png` and `a.jpg`), whose outputs
  would all be `OUT/<stem>.png`."""
  by_stem: dict[str, list[str]] = {}
  for path in files:
    by_stem.setdefault(path.stem, []).append(path.name)
  return {stem: names for stem, names in by_stem.items() if len(names) > 1}


def find_reference(ref_dir: pathlib.Path, stem: str) -> Optional[pathlib.Path]:
  matches = [p for p in list_images(ref_dir) if p.stem == stem]
  return matches[0] if matches else None


def resource_error(error: BaseException) -> str:
  """One line for an error that is not the file's fault (out of memory, an XLA runtime error): its
  type and the first line of its message, plus what to try when memory ran out."""
  lines = str(error).strip().splitlines()
  text = f'{type(error).__name__}: {lines[0][:300]}' if lines else type(error).__name__
  if isinstance(error, MemoryError) or any(
      word in str(error) for word in ('RESOURCE_EXHAUSTED', 'Out of memory', 'out of memory')):
    text += ' (out of memory: a smaller --max_memory_gb or --tile may help)'
  return text


@dataclasses.dataclass
class FolderResult:
  written: list[str] = dataclasses.field(default_factory=list)
  kept: list[str] = dataclasses.field(default_factory=list)  # Existing outputs, not replaced.
  failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (name, why)

  def summary(self, seconds: float) -> str:
    return (f'{len(self.written)} written, {len(self.kept)} kept (exist; --overwrite replaces '
            f'them), {len(self.failed)} failed'
            + (f' ({", ".join(n for n, _ in self.failed)})' if self.failed else '')
            + f' in {seconds:.1f} s')


def upscale_folder(model, files: list[pathlib.Path], out_dir: pathlib.Path, *,
                   ref: Optional[images.ImageFile] = None,
                   ref_dir: Optional[pathlib.Path] = None, overwrite: bool = False,
                   allow_large: bool = False,
                   log: Callable[[str], None] = lambda _: None) -> FolderResult:
  """Super-resolves `files` into `out_dir` (module docstring); one progress line per image."""
  result = FolderResult()
  counter = progress_lib.Progress(len(files), log)
  for path in files:
    out = out_dir / f'{path.stem}.png'

    def progress(what: str, worked: bool = True) -> None:
      counter.step(f'{path.name}: {what}', worked=worked)

    if out.exists() and not overwrite:
      result.kept.append(path.name)
      progress(f'{out} exists, kept', worked=False)
      continue
    try:
      lr_img = images.read_image(path, allow_large=allow_large)
      ref_img = ref
      if ref_dir is not None and model.uses_ref:
        ref_path = find_reference(ref_dir, path.stem)
        if ref_path is None:
          raise images.DatasetError(f'no reference {path.stem}.* in {ref_dir}')
        ref_img = images.read_image(ref_path, allow_large=allow_large)
      image = model.upscale_file(lr_img, ref_img)
      images.save_png_atomic(image, out)
    except (ValueError, OSError) as e:  # DatasetError is a ValueError.
      result.failed.append((path.name, str(e)))
      progress(f'skipped: {e}', worked=False)
      continue
    except (MemoryError, RuntimeError) as e:  # An XLA out-of-memory is a RuntimeError.
      why = resource_error(e)
      result.failed.append((path.name, why))
      progress(f'failed: {why}')
      continue
    result.written.append(path.name)
    progress(f'wrote {out}')
  return result
