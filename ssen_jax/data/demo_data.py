"""A small RefSR dataset built from real photos shipped in scikit-image: no download needed.

`build_demo_data(out_dir)` writes, deterministically, a dataset shaped like CUFED (training
pairs) and CUFED5 (evaluation groups), small enough to train on a 2-core CPU in minutes:

  OUT/ssen_demo_v3/
    train_raw/input/NAME.png, ref/NAME.png    240 training pairs (160x160) in the raw CUFED layout
    eval/XXX_0.png .. XXX_5.png               24 CUFED5-style groups, 128x128 HR and references
    README.txt                                this layout in words

Training reads the pairs through TFDS: the `ssen_demo` builder of
`ssen_jax.data_prep.tfds_builders` prepares this folder (`ssen_jax.data_prep.tfds_build.prepare`,
which the :demo config runs on first use).

Training pairs come from ten photos: `astronaut`, `rocket`, `hubble_deep_field`,
`immunohistochemistry`, `camera`, `moon`, `coins` and the textures `brick`, `grass`, `gravel`
(where a reference pays off most: the bicubic input cannot predict their fine detail). Gray
photos become three equal channels. The HR is a 160x160 crop; its stored reference is the same
neighbourhood seen through a random similarity transform (rotation up to 3 degrees, scale
0.95-1.05, shift up to 8 px, bicubic resampling) with a small gain/offset change: related but not
aligned content. It is a view of the same photo, which CUFED's pairs are not (CUFED's reference is
another photo of the same event), so the demo is an easier alignment task than CUFED. The demo
config adds shifted views and unrelated references on the fly
(`ssen_jax.data.input_pipeline.RefMix`).

Evaluation groups come from other images only: the real stereo pair `motorcycle_left/right`
(12 groups), `chelsea` (6) and `coffee` (6), with `retina` for unrelated references. Groups
alternate between motorcycle and the two other photos, so consecutive groups never share a photo
(the evaluation's `unrelated` control takes the next group's XH reference). References go from
XH to XL similarity:
  _1 XH: the same region in the other stereo view (motorcycle; shift found by matching), or a
         mild transform of it (chelsea, coffee: up to 3 degrees, scale 0.97-1.03, 6 px);
  _2 H:  the same region, stronger transform (10 degrees, scale 0.85, 12 px);
  _3 M:  a half-overlapping neighbouring region, slightly rotated;
  _4 L:  a distant, non-overlapping region of the same photo;
  _5 XL: a crop of an unrelated image (`retina`).

The build is atomic (a temporary folder renamed into place) and idempotent (an existing complete
build is reused). Images are read from the files inside `skimage/data`, never fetched.
"""
import json
import os
import pathlib
import shutil
from typing import NamedTuple

import numpy as np
from PIL import Image
from skimage import transform

from ssen_jax.data import datasets
from ssen_jax.data.images import read_image

DEMO_NAME = 'ssen_demo_v3'
TRAIN_SOURCES = ('astronaut.png', 'rocket.jpg', 'hubble_deep_field.jpg', 'ihc.png', 'camera.png',
                 'moon.png', 'coins.png', 'brick.png', 'grass.png', 'gravel.png')
EVAL_SOURCES = ('motorcycle_left.png', 'motorcycle_right.png', 'chelsea.png', 'coffee.png',
                'retina.jpg')
NUM_TRAIN = 240
# The demo's training pairs were stored in 4 round-robin TFRecord shards before TFDS; the
# `ssen_demo` builder keeps that order (example i at position (i % 4, i // 4)), so the demo's
# training stream is bit for bit the one of that storage.
NUM_SHARDS = 4
TRAIN_SIZE = 160
EVAL_SIZE = 128
_SEED = 20200614


class DemoData(NamedTuple):
  """Paths of a built demo dataset."""
  root: pathlib.Path  # The manual folder of the `ssen_demo` TFDS builder.
  train_raw_dir: pathlib.Path  # Raw CUFED layout: input/*.png, ref/*.png.
  eval_dir: pathlib.Path  # CUFED5 layout: XXX_0.png .. XXX_5.png.
  num_train: int
  num_eval: int


def _source(name: str) -> np.ndarray:
  """An RGB uint8 image from skimage's installed data folder (no network: files only)."""
  import skimage  # pylint: disable=g-import-not-at-top
  return read_image(pathlib.Path(skimage.__file__).parent / 'data' / name).uint8()


def affine_view(img: np.ndarray, center: tuple[float, float], size: int, *, angle: float = 0.0,
          zoom: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
  """A (size, size, 3) uint8 view of `img` around `center` (row, col), rotated/zoomed/shifted.

  Output pixel p (relative to the view centre) samples img at center + shift + zoom * R(angle) p,
  bicubic, symmetric boundary.
  """
  theta = np.deg2rad(angle)
  rot = zoom * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
  half = (size - 1) / 2
  # (x, y) = (col, row) convention of skimage transforms.
  target = np.array([center[1] + shift[1], center[0] + shift[0]])
  matrix = np.eye(3)
  matrix[:2, :2] = rot
  matrix[:2, 2] = target - rot @ np.array([half, half])
  out = transform.warp(img.astype(np.float64), transform.AffineTransform(matrix=matrix),
                       output_shape=(size, size), order=3, mode='symmetric', preserve_range=True)
  return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def _crop(img: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
  return np.ascontiguousarray(img[top:top + size, left:left + size])


def make_train_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
  """[(name, hr (160, 160, 3) uint8, ref (160, 160, 3) uint8)] * NUM_TRAIN, deterministic."""
  rng = np.random.default_rng(_SEED)
  pairs = []
  sources = [_source(n) for n in TRAIN_SOURCES]
  margin = 32
  for i in range(NUM_TRAIN):
    img = sources[i % len(sources)]
    top = int(rng.integers(margin, img.shape[0] - TRAIN_SIZE - margin))
    left = int(rng.integers(margin, img.shape[1] - TRAIN_SIZE - margin))
    hr = _crop(img, top, left, TRAIN_SIZE)
    center = (top + (TRAIN_SIZE - 1) / 2, left + (TRAIN_SIZE - 1) / 2)
    ref = affine_view(img, center, TRAIN_SIZE, angle=rng.uniform(-3, 3),
                      zoom=rng.uniform(0.95, 1.05), shift=tuple(rng.uniform(-8, 8, size=2)))
    gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-10, 10)
    ref = np.clip(np.floor(ref * gain + offset + 0.5), 0, 255).astype(np.uint8)
    pairs.append((f'{i:06d}', hr, ref))
  return pairs


def _stereo_shift(left: np.ndarray, right: np.ndarray, top: int, col: int, size: int) -> int:
  """Disparity d minimising the MSE between left[top, col] and right[top, col - d] crops."""
  patch = _crop(left, top, col, size).astype(np.float64)
  errors = [np.mean((_crop(right, top, col - d, size) - patch) ** 2)
            for d in range(0, min(col, 160) + 1)]
  return int(np.argmin(errors))


def _grid(rows: tuple[int, ...], cols: tuple[int, ...]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
  """[(HR top-left, distant L top-left)]: every grid cell with the diagonally opposite one."""
  return [((r, c), (rows[-1 - i], cols[-1 - j]))
          for i, r in enumerate(rows) for j, c in enumerate(cols)]


def make_eval_groups() -> list[tuple[str, list[np.ndarray]]]:
  """[(group id, [HR, XH, H, M, L, XL])], all (128, 128, 3) uint8, deterministic."""
  left, right, cat, coffee, retina = (_source(n) for n in EVAL_SOURCES)
  s = EVAL_SIZE
  half = (s - 1) / 2
  rng = np.random.default_rng(_SEED + 1)
  moto = [(left, right, hr, low) for hr, low in _grid((20, 185, 350), (180, 330, 480, 610))]
  cats = [(cat, None, hr, low) for hr, low in _grid((20, 150), (20, 170, 310))]
  cups = [(coffee, None, hr, low) for hr, low in _grid((20, 250), (40, 240, 440))]
  plan = []
  for i in range(len(moto)):  # motorcycle, chelsea, motorcycle, coffee, ...
    plan += [moto[i], (cats if i % 2 == 0 else cups)[i // 2]]
  groups = []
  for gid, (img, other, (top, col), (l_top, l_col)) in enumerate(plan):
    hr = _crop(img, top, col, s)
    center = (top + half, col + half)
    if other is not None:
      d = _stereo_shift(img, other, top, col, s)
      xh = _crop(other, top, col - d, s)
      h = affine_view(other, (center[0], center[1] - d), s, angle=10, zoom=0.85, shift=(12, -12))
    else:
      xh = affine_view(img, center, s, angle=rng.uniform(-3, 3), zoom=rng.uniform(0.97, 1.03),
                 shift=tuple(rng.uniform(-6, 6, size=2)))
      h = affine_view(img, center, s, angle=10, zoom=0.85, shift=(12, -12))
    m = affine_view(img, center, s, angle=-5, shift=(s / 2, s / 2))
    low = _crop(img, l_top, l_col, s)
    # Inside the fundus (retina's corners are black).
    x_top, x_col = (int(v) for v in rng.integers(400, retina.shape[0] - 400 - s, size=2))
    xl = _crop(retina, x_top, x_col, s)
    groups.append((f'{gid:03d}', [hr, xh, h, m, low, xl]))
  return groups


def _readme(num_train: int, num_eval: int) -> str:
  return (f'{DEMO_NAME}: demo RefSR data built by ssen_jax.data.demo_data from scikit-image '
          'photos.\n'
          f'train_raw/: {num_train} CUFED-style pairs (160x160) in the raw CUFED layout '
          '(input/, ref/).\n'
          f'eval/: {num_eval} CUFED5-style groups, XXX_0.png HR, XXX_1..5.png refs XH..XL.\n'
          f'Train sources: {", ".join(TRAIN_SOURCES)}. Eval sources: {", ".join(EVAL_SOURCES)}.\n')


def _paths(root: pathlib.Path, num_train: int, num_eval: int) -> DemoData:
  return DemoData(root=root, train_raw_dir=root / 'train_raw', eval_dir=root / 'eval',
                  num_train=num_train, num_eval=num_eval)


def default_root(demo_dir: str = '') -> str:
  """Where the demo data lives: `demo_dir` (config.data.demo_dir), else $XDG_CACHE_HOME/ssen_jax
  (~/.cache/ssen_jax)."""
  return demo_dir or os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'ssen_jax')


def build_demo_data(out_dir: str | os.PathLike) -> DemoData:
  """Builds the demo dataset under `out_dir/ssen_demo_v3` unless a complete build is there.

  Args:
    out_dir: parent folder (created if needed).

  Returns:
    `DemoData` with the raw-pair folder and the CUFED5-style eval folder.
  """
  out_dir = pathlib.Path(out_dir)
  root = out_dir / DEMO_NAME
  manifest_path = root / 'manifest.json'
  if manifest_path.exists():  # Written last inside the temporary folder: the build is complete.
    manifest = json.loads(manifest_path.read_text())
    return _paths(root, manifest['num_train'], manifest['num_eval'])
  out_dir.mkdir(parents=True, exist_ok=True)
  tmp = out_dir / f'.{DEMO_NAME}.tmp-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    pairs, groups = make_train_pairs(), make_eval_groups()
    for sub in ('train_raw/input', 'train_raw/ref', 'eval'):
      (tmp / sub).mkdir(parents=True)
    for name, hr, ref in pairs:
      (tmp / 'train_raw/input' / f'{name}.png').write_bytes(datasets.encode_png(hr))
      (tmp / 'train_raw/ref' / f'{name}.png').write_bytes(datasets.encode_png(ref))
    for gid, images in groups:
      for level, img in enumerate(images):
        (tmp / 'eval' / f'{gid}_{level}.png').write_bytes(datasets.encode_png(img))
    (tmp / 'README.txt').write_text(_readme(len(pairs), len(groups)))
    (tmp / 'manifest.json').write_text(json.dumps({
        'name': DEMO_NAME, 'num_train': len(pairs), 'num_eval': len(groups),
        'train_sources': list(TRAIN_SOURCES), 'eval_sources': list(EVAL_SOURCES)}, indent=2))
    try:
      os.rename(tmp, root)  # Atomic: readers see no build or a complete one.
    except OSError:
      if not manifest_path.exists():  # Not a concurrent builder winning the race: a real error.
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return _paths(root, len(pairs), len(groups))
