"""tf.data training input: random HR/reference crops, dihedral augmentation, MATLAB-bicubic LR.

The only runtime module besides `data_prep` that imports TensorFlow (hidden from GPUs here).

Reads a TFDS dataset prepared by `data_prep.tfds_build` (the builders of `data_prep.tfds_builders`,
the demo's included; feature keys in `ssen_jax.data.datasets`), the one training data format.
Per example:

1. HR: a random `hr_patch` x `hr_patch` crop (uniform offset), then one of the 8 dihedral
   transforms (rotation by k * 90 degrees, k uniform in 0..3, then a left-right flip with p = 1/2;
   together they cover every rotation and flip).
2. Reference (`kind='refsr'`), independently of the HR: a random crop of min(its size, hr_patch)
   per axis, padded at the bottom/right by symmetric reflection (edge repeated, as numpy's
   'symmetric') when smaller than `hr_patch`, then its own random dihedral transform.
3. LR: MATLAB bicubic `imresize(hr, 1 / scale)` of the augmented uint8 HR crop, rounded to uint8
   after each axis exactly like `ssen_jax.data.imresize` (same weight matrices, float64).
4. Everything is returned as float32 in [0, 1] (uint8 levels / 255), NHWC.

Determinism and exact resume: every host keeps its share of encoded PNG bytes in memory. Example
`slot` of step `s` is global position g = s * B + slot of an endless stream; epoch e = g // N picks
a permutation of the host's N examples with `tf.random.experimental.index_shuffle` (seeded by
(seed, process_index, e)), and the crop/augmentation draws are stateless ops seeded by
(seed, process_index, s, slot). So the batch at step s depends only on (seed, s, process_index),
the host's examples (its TFDS range) and B, and starting at `start_step`
yields exactly what an uninterrupted run yields from that step, without saving any iterator state.
Another host count or batch size gives another stream (the training loop warns and records it
in `config_history.json`).
"""
import math
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

from ssen_jax.data import tf_env  # noqa: F401  (first: TensorFlow's defaults)
import numpy as np
import tensorflow as tf

from ssen_jax.data import datasets
from ssen_jax.data import imresize as imresize_lib


def hide_gpus_from_tf() -> None:
  """Keeps TensorFlow off the accelerators, which belong to JAX."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # Devices already initialised: nothing can be changed any more.
    pass


hide_gpus_from_tf()

KINDS = ('refsr', 'sisr')
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def imresize_tf(img: tf.Tensor, scale: float) -> tf.Tensor:
  """MATLAB bicubic `imresize` in TensorFlow (graph-safe; H and W must be static).

  Args:
    img: (H, W, C) or (N, H, W, C), uint8 or float.
    scale: resize factor.

  Returns:
    uint8 for uint8 input (rounded half away from zero and saturated after each axis, as MATLAB
    and `ssen_jax.data.imresize`), else float64. Shape (..., ceil(H s), ceil(W s), C).
  """
  height, width = img.shape[-3], img.shape[-2]
  if height is None or width is None:
    raise ValueError(f'imresize_tf needs static height and width, got shape {img.shape}')
  is_uint8 = img.dtype == tf.uint8
  x = tf.cast(img, tf.float64)
  for axis, matrix in imresize_lib.resize_plan(height, width, scale):
    m = tf.constant(matrix, tf.float64)
    if axis == 0:
      x = tf.einsum('oh,...hwc->...owc', m, x)
    else:
      x = tf.einsum('ow,...hwc->...hoc', m, x)
    if is_uint8:
      x = tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)
  return tf.cast(x, tf.uint8) if is_uint8 else x


def dihedral(image: tf.Tensor, k: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
  """Rotates (H, W, C) by k * 90 degrees counter-clockwise, then flips left-right if `flip`."""
  image = tf.image.rot90(image, k)
  return tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)


def crop_origin(shape: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Uniform random top-left corner of a (height, width) window in an image of `shape`."""
  s_y, s_x = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  y = tf.random.stateless_uniform([], s_y, 0, shape[0] - height + 1, dtype=tf.int32)
  x = tf.random.stateless_uniform([], s_x, 0, shape[1] - width + 1, dtype=tf.int32)
  return y, x


def symmetric_pad_to(image: tf.Tensor, size: int) -> tf.Tensor:
  """Pads (h, w, C), h, w <= size, to (size, size, C) at the bottom/right by symmetric reflection.

  Indices fold with period 2h (numpy's 'symmetric' mode), so any amount of padding works.
  """
  def fold(n):
    i = tf.math.floormod(tf.range(size), 2 * n)
    return tf.where(i < n, i, 2 * n - 1 - i)
  shape = tf.shape(image)
  image = tf.gather(image, fold(shape[0]), axis=0)
  return tf.gather(image, fold(shape[1]), axis=1)


REF_AUGMENTS = ('independent', 'paired', 'mixed')


class RefMix(NamedTuple):
  """Where each training reference comes from (all probabilities per example).

  With probability `aligned_prob` the reference is the HR crop itself (the same view of the
  example's own HR image, shifted by at most `aligned_jitter` HR pixels per axis, as real references
  are never pixel-exact; `photometric` applies): a steady share of references that pay off when
  copied keeps the reference path worth using (with the L1-like Charbonnier loss a reference the
  network cannot yet tell good from bad is worth copying only while most are good). With probability
  `shifted_prob` the reference is a view of the example's own HR image, cut `shift` HR pixels away
  from the HR crop (each axis an integer uniform in [-m, m]; m is 0, i.e. the reference is aligned,
  until step `shift_ramp_start`, then grows linearly to `shift_max` over `shift_ramp_steps` steps: a
  curriculum from aligned to several LR pixels of misalignment; with `shift_quantum` = q > 1 the
  shift is q times an integer uniform in [-floor(m / q), floor(m / q)], e.g. whole LR pixels for q =
  scale), with a random gain and offset (`photometric`: gain in 1 +- p, offset +- 100 p levels) and
  the HR's rotation and flip. With probability `unrelated_prob` it is a random crop of another
  training example's HR image with its own rotation and flip (nothing to transfer: the modulation
  mask has to learn to gate it). With probability `far_prob` it is a shifted view as above whose
  largest shift is `far_max` instead of `shift_max` (same curriculum), e.g. several LR pixels up to
  most of the crop: content that only partly overlaps the input and lies beyond a small search
  window, turned by up to `far_rotate` degrees and magnified by 1 +- `far_zoom`
  (`shifted_view_example`). Otherwise it is the record's own reference, placed by `ref_augment`.
  All-zero probabilities reproduce the plain record-reference stream bitwise.
  """
  shifted_prob: float = 0.0
  unrelated_prob: float = 0.0
  aligned_prob: float = 0.0
  aligned_jitter: float = 0.0
  shift_ramp_start: int = 0
  shift_max: float = 8.0
  shift_ramp_steps: int = 0
  shift_quantum: int = 1
  photometric: float = 0.0
  far_prob: float = 0.0
  far_max: float = 64.0
  far_rotate: float = 0.0
  far_zoom: float = 0.0

  @property
  def active(self) -> bool:
    return self.total > 0

  @property
  def total(self) -> float:
    return self.shifted_prob + self.unrelated_prob + self.aligned_prob + self.far_prob

  def max_shift(self, step: tf.Tensor, *, far: bool = False) -> tf.Tensor:
    """m at `step` (float64 scalar): the curriculum's current largest shift in HR pixels."""
    elapsed = tf.cast(step, tf.float64) - float(self.shift_ramp_start)
    frac = tf.clip_by_value(elapsed / float(max(self.shift_ramp_steps, 1)), 0.0, 1.0)
    if self.shift_ramp_steps <= 0:
      frac = tf.cast(elapsed >= 0, tf.float64)
    return (self.far_max if far else self.shift_max) * frac


def augment_example(hr: tf.Tensor, ref: tf.Tensor | None, seed: tf.Tensor, *, hr_patch: int,
                    scale: int, ref_augment: str = 'independent',
                    independent_prob: float = 0.5) -> dict[str, tf.Tensor]:
  """Crops, augments and downsamples one decoded example (pure function of its inputs and seed).

  Args:
    hr: (H, W, 3) uint8 HR image, H, W >= hr_patch.
    ref: (h, w, 3) uint8 reference of any size, or None (SISR).
    seed: (2,) int64 stateless seed.
    hr_patch: HR crop size, a multiple of `scale`.
    scale: SR factor.
    ref_augment: 'independent': the reference gets its own random crop, rotation and flip;
      'paired': it is cut at the HR crop's position (clamped to its own size) and rotated/flipped
      with the HR, so a roughly aligned pair stays roughly aligned; 'mixed': independent with
      probability `independent_prob`, else paired.
    independent_prob: see 'mixed'.

  Returns:
    {'lr': (hr_patch/scale,)*2 + (3,), 'hr': (hr_patch, hr_patch, 3)[, 'ref': same]}, all uint8.
  """
  if ref_augment not in REF_AUGMENTS:
    raise ValueError(f'ref_augment must be one of {REF_AUGMENTS}, got {ref_augment!r}')
  seeds = tf.random.experimental.stateless_split(seed, 4)
  y0, x0 = crop_origin(tf.shape(hr), hr_patch, hr_patch, seeds[0])
  hr = hr[y0:y0 + hr_patch, x0:x0 + hr_patch]
  draws = tf.random.stateless_uniform([4], seeds[1], 0, 8, dtype=tf.int32)
  hr = dihedral(hr, draws[0] % 4, draws[1] % 2 == 1)
  hr = tf.ensure_shape(hr, [hr_patch, hr_patch, 3])
  out = {'lr': imresize_tf(hr, 1.0 / scale), 'hr': hr}
  if ref is not None:
    shape = tf.shape(ref)
    height, width = tf.minimum(shape[0], hr_patch), tf.minimum(shape[1], hr_patch)
    paired_y, paired_x = tf.minimum(y0, shape[0] - height), tf.minimum(x0, shape[1] - width)
    free_y, free_x = crop_origin(shape, height, width, seeds[2])
    if ref_augment == 'mixed':
      independent = tf.random.stateless_uniform([], seeds[3], dtype=tf.float64) < independent_prob
    else:
      independent = tf.constant(ref_augment == 'independent')
    y = tf.where(independent, free_y, paired_y)
    x = tf.where(independent, free_x, paired_x)
    k = tf.where(independent, draws[2] % 4, draws[0] % 4)
    flip = tf.where(independent, draws[3] % 2 == 1, draws[1] % 2 == 1)
    ref = symmetric_pad_to(ref[y:y + height, x:x + width], hr_patch)
    ref = dihedral(ref, k, flip)
    out['ref'] = tf.ensure_shape(ref, [hr_patch, hr_patch, 3])
  return out


def _similarity_view(img: tf.Tensor, center: tf.Tensor, size: int, angle: tf.Tensor,
                     zoom: tf.Tensor) -> tf.Tensor:
  """A size x size uint8 view of img (H, W, 3) centred at `center` (y, x; float), rotated by
  `angle` radians and magnified `zoom` times (bilinear; reflected at the borders)."""
  cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
  half = (size - 1) / 2.0
  # Output (x, y) -> input (x_in, y_in) = center + R(angle) / zoom (p - half).
  a0, a1 = cos, -sin
  b0, b1 = sin, cos
  a2 = center[1] - half * (a0 + a1)
  b2 = center[0] - half * (b0 + b1)
  transform = tf.cast(tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])[None], tf.float32)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=tf.cast(img, tf.float32)[None], transforms=transform,
      output_shape=tf.constant([size, size]), fill_value=0.0, interpolation='BILINEAR',
      fill_mode='REFLECT')[0]
  return tf.cast(tf.clip_by_value(tf.floor(out + 0.5), 0.0, 255.0), tf.uint8)


def shifted_view_example(hr: tf.Tensor, seed: tf.Tensor, max_shift: tf.Tensor, *, hr_patch: int,
                         scale: int, photometric: float, quantum: int = 1,
                         rotate: float = 0.0, zoom: float = 0.0) -> dict[str, tf.Tensor]:
  """An HR crop and a reference cut from the same image `shift` pixels away (see `RefMix`).

  Args:
    hr: (H, W, 3) uint8, H, W >= hr_patch; the shift on each axis is clamped to the room the
      image leaves (H - hr_patch, W - hr_patch).
    seed: (2,) int64 stateless seed.
    max_shift: largest |shift| per axis in HR pixels (float scalar).
    hr_patch, scale: as `augment_example`.
    photometric: relative gain jitter p of the reference (offset +- 100 p levels).
    quantum: the shift is a multiple of this many HR pixels.
    rotate, zoom: when either is > 0, the reference is instead resampled (bilinear) around the
      shifted window's centre, turned by an angle uniform in +-`rotate` degrees and magnified by a
      factor uniform in 1 +- `zoom` (as real references are never pure translations); the draws
      use their own seed, so the HR crops are those of the untransformed views.

  Returns:
    {'lr', 'hr', 'ref'} uint8 as `augment_example`; the reference has the HR's rotation and flip.
  """
  seeds = tf.random.experimental.stateless_split(seed, 4)
  shape = tf.shape(hr)
  room = tf.stack([shape[0] - hr_patch, shape[1] - hr_patch])
  m = tf.cast(tf.floor(max_shift / quantum), tf.int32)
  shift = quantum * tf.random.stateless_uniform([2], seeds[0], -m, m + 1, dtype=tf.int32)
  shift = tf.clip_by_value(shift, -room, room)
  # Both windows inside the image: the HR origin ranges over [max(0, -d), room - max(0, d)].
  low = tf.maximum(0, -shift)
  high = room - tf.maximum(0, shift)
  u = tf.random.stateless_uniform([2], seeds[1], dtype=tf.float64)
  origin = low + tf.cast(tf.floor(u * tf.cast(high - low + 1, tf.float64)), tf.int32)
  origin = tf.minimum(origin, high)
  crop = hr[origin[0]:origin[0] + hr_patch, origin[1]:origin[1] + hr_patch]
  if rotate > 0 or zoom > 0:
    draws = tf.random.stateless_uniform([2], tf.random.experimental.stateless_fold_in(seed, 7),
                                        -1.0, 1.0, dtype=tf.float32)
    center = tf.cast(origin + shift, tf.float32) + (hr_patch - 1) / 2.0
    ref = _similarity_view(hr, center, hr_patch, draws[0] * math.radians(rotate),
                           1.0 + draws[1] * zoom)
  else:
    ref = hr[origin[0] + shift[0]:origin[0] + shift[0] + hr_patch,
             origin[1] + shift[1]:origin[1] + shift[1] + hr_patch]
  if photometric > 0:
    jitter = tf.random.stateless_uniform([2], seeds[2], -photometric, photometric,
                                         dtype=tf.float64)
    ref = tf.cast(ref, tf.float64) * (1.0 + jitter[0]) + 100.0 * jitter[1]
    ref = tf.cast(tf.clip_by_value(tf.floor(ref + 0.5), 0.0, 255.0), tf.uint8)
  draws = tf.random.stateless_uniform([2], seeds[3], 0, 8, dtype=tf.int32)
  k, flip = draws[0] % 4, draws[1] % 2 == 1
  crop = tf.ensure_shape(dihedral(crop, k, flip), [hr_patch, hr_patch, 3])
  ref = tf.ensure_shape(dihedral(ref, k, flip), [hr_patch, hr_patch, 3])
  return {'lr': imresize_tf(crop, 1.0 / scale), 'hr': crop, 'ref': ref}


def _png_size(data: bytes) -> tuple[int, int] | None:
  """(height, width) from a PNG header, or None if `data` is not a PNG."""
  if data[:8] != _PNG_SIGNATURE or len(data) < 24:
    return None
  return int.from_bytes(data[20:24], 'big'), int.from_bytes(data[16:20], 'big')


def _checked_records(names: list[bytes], hrs: list[bytes], refs: list[bytes], source: str,
                     kind: str, hr_patch: int) -> dict[str, tf.Tensor]:
  if not hrs:
    raise ValueError(f'no records in {source}')
  for name, hr, ref in zip(names, hrs, refs):
    size = _png_size(hr)
    if size and min(size) < hr_patch:
      raise ValueError(f'record {name.decode()!r} in {source} has a {size[0]}x{size[1]} HR image, '
                       f'smaller than hr_patch={hr_patch}')
    if kind == 'refsr' and not ref:
      raise ValueError(f"kind='refsr' needs a 'ref' feature, record {name.decode()!r} in "
                       f'{source} has none (SISR data such as div2k needs kind=sisr)')
  out = {'hr': tf.constant(hrs)}
  if kind == 'refsr':
    out['ref'] = tf.constant(refs)
  return out


def load_tfds_records(name: str, data_dir: str | None, split: str, kind: str, hr_patch: int,
                      process_index: int, process_count: int) -> dict[str, tf.Tensor]:
  """This host's share of a prepared TFDS dataset, in stored order, as encoded PNG bytes.

  The host reads `tfds.even_splits(split, process_count)[process_index]`: contiguous, disjoint
  ranges of the stored order whose sizes differ by at most one example. The dataset is opened from
  its files (`tfds.builder` falls back to them when the builder class is not imported), so
  training needs only the prepared folder.

  Raises:
    ValueError: the dataset is not prepared in `data_dir`, has no such split, fewer examples than
      hosts, or records that do not fit `kind` / `hr_patch` (one line each).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  where = f'{data_dir or "the default TFDS data_dir"}'
  hint = ('prepare it with python -m ssen_jax.data_prep.tfds_build --tfds_name NAME '
          '--dataset_dir DIR --tfds_data_dir DATA_DIR')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except  (DatasetNotFoundError and kin)
    raise ValueError(f'TFDS dataset {name!r} not found in {where}: {hint} '
                     f'({type(e).__name__})') from None
  if not tf.io.gfile.exists(os.path.join(builder.data_dir, 'dataset_info.json')):
    raise ValueError(f'TFDS dataset {name!r} is not prepared in {where}: {hint}')
  splits = builder.info.splits
  if split not in splits:
    raise ValueError(f'TFDS dataset {name!r} has no split {split!r} (it has '
                     f'{", ".join(sorted(splits))})')
  total = splits[split].num_examples
  if total < process_count:
    raise ValueError(f'TFDS dataset {name!r} split {split!r} has {total} examples but there are '
                     f'{process_count} hosts: each host needs at least one example')
  features = builder.info.features
  keys = [k for k in (datasets.FEATURE_NAME, datasets.FEATURE_HR, datasets.FEATURE_REF)
          if k in features]
  if datasets.FEATURE_HR not in keys:
    raise ValueError(f"TFDS dataset {name!r} has no '{datasets.FEATURE_HR}' feature")
  host_split = tfds.even_splits(split, n=process_count)[process_index]
  ds = builder.as_dataset(
      split=host_split, shuffle_files=False,
      decoders={k: tfds.decode.SkipDecoding() for k in keys},
      read_config=tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False))
  names, hrs, refs = [], [], []
  for batch in ds.batch(512).as_numpy_iterator():
    hrs += batch[datasets.FEATURE_HR].tolist()
    names += batch[datasets.FEATURE_NAME].tolist() if datasets.FEATURE_NAME in batch \
        else [b''] * len(batch[datasets.FEATURE_HR])
    refs += batch[datasets.FEATURE_REF].tolist() if datasets.FEATURE_REF in batch \
        else [b''] * len(batch[datasets.FEATURE_HR])
  return _checked_records(names, hrs, refs, f'TFDS {name}[{host_split}] in {where}', kind,
                          hr_patch)


def create_train_iterator(*, tfds_name: str, kind: str, hr_patch: int, scale: int,
                          local_batch_size: int, seed: int, start_step: int, process_index: int,
                          process_count: int, ref_augment: str = 'independent',
                          independent_prob: float = 0.5, ref_mix: RefMix = RefMix(),
                          num_threads: int | None = None, tfds_data_dir: str | None = None,
                          tfds_split: str = 'train',
                          examples_per_host: Callable[[int], int] | None = None
                          ) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator of this host's training batches, starting at `start_step`.

  Args:
    tfds_name: a TFDS dataset prepared by `data_prep.tfds_build` (e.g. 'ssen_cufed',
      'ssen_demo'), read from `tfds_data_dir` (None: TFDS's default), split `tfds_split`; each
      host reads its `tfds.even_splits` share (`load_tfds_records`).
    kind: 'refsr' (records with 'ref', e.g. CUFED) or 'sisr' (HR only, e.g. DIV2K).
    hr_patch: HR crop size (160 for CUFED, 192 for DIV2K in the paper); multiple of `scale`.
    scale: SR factor.
    local_batch_size: B, this host's share of the global batch.
    seed: global seed (the same on every host).
    start_step: the first step to produce (0, or the restored step).
    process_index: this host's index (jax.process_index()).
    process_count: number of hosts (jax.process_count()).
    ref_augment: 'independent', 'paired' or 'mixed' (see `augment_example`).
    independent_prob: the share of independent references with 'mixed'.
    ref_mix: shifted-view and unrelated references (`RefMix`; kind 'refsr' only).
    num_threads: tf.data private thread pool size (None: TensorFlow's default, all cores).
    examples_per_host: called with the number of examples this host read, returns how many of
      them (the first, in stored order) to use; the training loop passes the minimum over all
      hosts, so every host's epoch has the same length (`tfds.even_splits` ranges differ by at
      most one example, so at most one example per host is dropped). None: all.

  Returns:
    Iterator of {'lr': (B, hr_patch/scale, hr_patch/scale, 3), 'hr': (B, hr_patch, hr_patch, 3),
    'ref': (B, hr_patch, hr_patch, 3) (refsr only)} float32 numpy arrays in [0, 1].
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  if hr_patch % scale:
    raise ValueError(f'hr_patch={hr_patch} is not a multiple of scale={scale}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, {process_count})')
  if ref_mix.active and kind != 'refsr':
    raise ValueError(f'ref_mix needs kind=refsr, got {kind!r}')
  if ref_mix.total > 1 + 1e-9:
    raise ValueError(f'ref_mix probabilities add up to more than 1: {ref_mix}')
  if not tfds_name:
    raise ValueError('no training data: tfds_name is empty (a dataset prepared by '
                     'python -m ssen_jax.data_prep.tfds_build)')
  hide_gpus_from_tf()
  records = load_tfds_records(tfds_name, tfds_data_dir or None, tfds_split, kind, hr_patch,
                              process_index, process_count)
  num_examples = int(records['hr'].shape[0])
  if examples_per_host is not None:
    used = int(examples_per_host(num_examples))
    if not 0 < used <= num_examples:
      raise ValueError(f'examples_per_host gave {used} for a host with {num_examples} examples')
    if used < num_examples:
      records = {k: v[:used] for k, v in records.items()}
      num_examples = used
  batch = int(local_batch_size)
  host_seed = tf.constant([seed, process_index], tf.int64)
  shuffle_seed = tf.random.experimental.stateless_fold_in(host_seed, 0)
  augment_seed = tf.random.experimental.stateless_fold_in(host_seed, 1)

  def make_example(position: tf.Tensor) -> dict[str, tf.Tensor]:
    epoch, offset = position // num_examples, position % num_examples
    index = tf.random.experimental.index_shuffle(
        offset, tf.random.experimental.stateless_fold_in(shuffle_seed, epoch),
        tf.constant(num_examples - 1, tf.int64))
    step, slot = position // batch, position % batch
    ex_seed = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(augment_seed, step), slot)
    hr = tf.io.decode_png(tf.gather(records['hr'], index), channels=3)
    ref = tf.io.decode_png(tf.gather(records['ref'], index), channels=3) if 'ref' in records \
        else None
    if ref_mix.active:
      out = _mixed_example(hr, ref, index, step, ex_seed)
    else:
      out = augment_example(hr, ref, ex_seed, hr_patch=hr_patch, scale=scale,
                            ref_augment=ref_augment, independent_prob=independent_prob)
    return {k: tf.cast(v, tf.float32) / 255.0 for k, v in out.items()}

  def _mixed_example(hr, ref, index, step, ex_seed):
    """One example whose reference source is drawn from `ref_mix` (the draw uses its own seed)."""
    mix_seed = tf.random.experimental.stateless_fold_in(ex_seed, 1 << 20)
    u = tf.random.stateless_uniform([], mix_seed, dtype=tf.float64)
    def from_record():
      return augment_example(hr, ref, ex_seed, hr_patch=hr_patch, scale=scale,
                             ref_augment=ref_augment, independent_prob=independent_prob)
    def shifted(far=False):
      return shifted_view_example(hr, ex_seed, ref_mix.max_shift(step, far=far),
                                  hr_patch=hr_patch, scale=scale, photometric=ref_mix.photometric,
                                  quantum=ref_mix.shift_quantum,
                                  rotate=ref_mix.far_rotate if far else 0.0,
                                  zoom=ref_mix.far_zoom if far else 0.0)
    def aligned():
      jitter = tf.constant(float(ref_mix.aligned_jitter), tf.float64)
      return shifted_view_example(hr, ex_seed, jitter, hr_patch=hr_patch,
                                  scale=scale, photometric=ref_mix.photometric)
    def unrelated():
      draw = tf.random.experimental.stateless_fold_in(mix_seed, 1)
      other = (index + 1 + tf.random.stateless_uniform(
          [], draw, 0, max(num_examples - 1, 1), dtype=tf.int64)) % num_examples
      other_hr = tf.io.decode_png(tf.gather(records['hr'], other), channels=3)
      return augment_example(hr, other_hr, ex_seed, hr_patch=hr_patch, scale=scale,
                             ref_augment='independent')
    p_shift, p_unrel = ref_mix.shifted_prob, ref_mix.shifted_prob + ref_mix.unrelated_prob
    p_aligned = p_unrel + ref_mix.aligned_prob
    return tf.case([(u < p_shift, shifted), (u < p_unrel, unrelated), (u < p_aligned, aligned),
                    (u < p_aligned + ref_mix.far_prob, lambda: shifted(far=True))],
                   default=from_record)

  ds = tf.data.Dataset.range(start_step * batch, np.iinfo(np.int64).max)
  ds = ds.map(make_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  if num_threads:
    options.threading.private_threadpool_size = num_threads
    options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options).as_numpy_iterator()
