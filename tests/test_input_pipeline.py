"""tf.data input: determinism, exact resume, host split, MATLAB LR, eager vs in-graph augmentation."""
import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from ssen_jax.data import datasets
from ssen_jax.data import imresize as ir
from ssen_jax.data import input_pipeline as ip
from ssen_jax.data_prep import tfds_build


def _prepare(tmp_path, pairs):
  """pairs: [(hr uint8, ref uint8 or None)] -> the create_train_iterator arguments of a TFDS
  dataset holding them in this order (names 000, 001, ...): `ssen_cufed` for pairs with
  references, else the HR-only `ssen_sr_folder/other` (its split is 'test')."""
  manual = tmp_path / 'raw'
  with_refs = pairs[0][1] is not None
  for i, (hr, ref) in enumerate(pairs):
    folder = manual / 'input' if with_refs else manual
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f'{i:03d}.png').write_bytes(datasets.encode_png(hr))
    if with_refs:
      (manual / 'ref').mkdir(exist_ok=True)
      (manual / 'ref' / f'{i:03d}.png').write_bytes(datasets.encode_png(ref))
  name, split = ('ssen_cufed', 'train') if with_refs else ('ssen_sr_folder/other', 'test')
  tfds_build.prepare(name, manual, tmp_path / 'tfds')
  return dict(tfds_name=name, tfds_data_dir=str(tmp_path / 'tfds'), tfds_split=split)


@pytest.fixture(scope='module')
def photo_data(tmp_path_factory):
  """10 photo pairs: HR 48x40..48x49, refs of assorted sizes (padded to the HR's when smaller)."""
  src = skimage.data.astronaut()
  pairs = [(src[i * 40:i * 40 + 48, i * 30:i * 30 + 40 + i], src[i * 30:i * 30 + 20 + 4 * i, :36])
           for i in range(10)]
  return _prepare(tmp_path_factory.mktemp('photo'), pairs)


def _flat(count):
  """`count` constant-colour 32x32 HR images (value 20 i + 10): batches reveal which they hold."""
  return [(np.full((32, 32, 3), 20 * i + 10, np.uint8), None) for i in range(count)]


@pytest.fixture(scope='module')
def flat_data(tmp_path_factory):
  return _prepare(tmp_path_factory.mktemp('flat'), _flat(8))


def _iter(data, **kw):
  args = dict(kind='refsr', hr_patch=32, scale=4, local_batch_size=4, seed=0, start_step=0,
              process_index=0, process_count=1, **data)
  args.update(kw)
  return ip.create_train_iterator(**args)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_shapes_ranges_and_lr_is_matlab_bicubic_of_hr(photo_data):
  (batch,) = _take(_iter(photo_data), 1)
  assert set(batch) == {'lr', 'hr', 'ref'}
  assert batch['lr'].shape == (4, 8, 8, 3) and batch['hr'].shape == batch['ref'].shape == (
      4, 32, 32, 3)
  for v in batch.values():
    assert v.dtype == np.float32 and 0 <= v.min() and v.max() <= 1
    np.testing.assert_array_equal(np.round(v * 255) / 255, v)  # uint8 levels.
  hr_u8 = np.round(batch['hr'] * 255).astype(np.uint8)
  for i in range(4):
    np.testing.assert_array_equal(np.round(batch['lr'][i] * 255), ir.imresize(hr_u8[i], 0.25))
  (sisr,) = _take(_iter(photo_data, kind='sisr', hr_patch=24, local_batch_size=3), 1)
  assert set(sisr) == {'lr', 'hr'} and sisr['lr'].shape == (3, 6, 6, 3)


def test_deterministic_and_exact_resume(photo_data):
  run = _take(_iter(photo_data, seed=7), 5)  # 20 examples of 10: crosses two epochs.
  again = _take(_iter(photo_data, seed=7), 5)
  resumed = _take(_iter(photo_data, seed=7, start_step=3), 2)
  for a, b in zip(run, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for a, b in zip(run[3:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other = _take(_iter(photo_data, seed=8), 1)[0]
  assert not np.array_equal(other['hr'], run[0]['hr'])
  assert not np.array_equal(run[1]['hr'], run[0]['hr'])


def _ids(batch):
  return [int(round((v * 255 - 10) / 20)) for v in batch['hr'][:, 0, 0, 0]]


def test_each_epoch_is_a_permutation_and_hosts_are_disjoint(flat_data):
  steps = _take(_iter(flat_data, kind='sisr'), 4)
  epoch0, epoch1 = sum(map(_ids, steps[:2]), []), sum(map(_ids, steps[2:]), [])
  assert sorted(epoch0) == sorted(epoch1) == list(range(8))
  assert epoch0 != epoch1 and epoch0 != list(range(8))
  hosts = [set(sum(map(_ids, _take(_iter(flat_data, kind='sisr', process_index=p,
                                         process_count=2, local_batch_size=2), 4)), []))
           for p in range(2)]
  assert hosts == [{0, 1, 2, 3}, {4, 5, 6, 7}]  # tfds.even_splits: contiguous ranges.
  with pytest.raises(ValueError, match=r'has 8 examples but there are 9 hosts: each host needs '
                                       r'at least one example'):
    _iter(flat_data, kind='sisr', process_count=9, process_index=0)


def test_any_host_count_reads_even_ranges_and_equal_epochs(flat_data, tmp_path):
  """No shard count has to suit the host count: 3 hosts of 8 examples read 3, 3 and 2, and
  `examples_per_host` (the loop passes the minimum over hosts) makes every epoch of every host
  that long."""
  shares = [sorted(sum(map(_ids, _take(_iter(flat_data, kind='sisr', process_index=p,
                                             process_count=3, local_batch_size=1), 3)), []))
            for p in range(3)]
  assert shares[:2] == [[0, 1, 2], [3, 4, 5]] and set(shares[2]) == {6, 7}
  # 7 examples on 2 hosts: host 0 reads 4, host 1 reads 3; both use 3 per epoch.
  odd = _prepare(tmp_path, _flat(7))
  seen = []
  def balance(n):
    seen.append(n)
    return 3
  for host in range(2):
    it = _iter(odd, kind='sisr', process_index=host, process_count=2, local_batch_size=3,
               examples_per_host=balance)
    epochs = [sorted(_ids(b)) for b in _take(it, 3)]  # One batch of 3 = one epoch.
    assert epochs[0] == epochs[1] == epochs[2] == ([0, 1, 2] if host == 0 else [4, 5, 6])
  assert seen == [4, 3]
  with pytest.raises(ValueError, match='examples_per_host gave 5'):
    _iter(odd, kind='sisr', process_count=2, process_index=0, examples_per_host=lambda n: 5)


def test_bad_configurations(photo_data, flat_data):
  with pytest.raises(ValueError, match="needs a 'ref'"):
    _iter(flat_data)
  with pytest.raises(ValueError, match='smaller than hr_patch'):
    _iter(photo_data, hr_patch=44)
  with pytest.raises(ValueError, match='multiple of scale'):
    _iter(photo_data, hr_patch=30)
  with pytest.raises(ValueError, match='no training data: tfds_name is empty'):
    _iter(dict(photo_data, tfds_name=''))


def test_imresize_tf_matches_numpy():
  hr = skimage.data.coffee()[:64, :44]
  np.testing.assert_array_equal(ip.imresize_tf(tf.constant(hr), 0.25).numpy(),
                                ir.imresize(hr, 0.25))
  batched = tf.function(lambda x: ip.imresize_tf(x, 0.25))(tf.constant(np.stack([hr, hr[::-1]])))
  np.testing.assert_array_equal(batched.numpy()[1], ir.imresize(hr[::-1], 0.25))
  lr = hr[:16, :11] / 255.0
  np.testing.assert_allclose(ip.imresize_tf(tf.constant(lr), 4).numpy(), ir.imresize(lr, 4),
                             atol=1e-12)


def test_dihedral_and_padding_match_numpy_eagerly_and_in_graph():
  img = skimage.data.chelsea()[:12, :17]
  graph_dihedral = tf.function(ip.dihedral)
  seen = set()
  for k in range(4):
    for flip in (False, True):
      expected = np.rot90(img, k)
      expected = expected[:, ::-1] if flip else expected
      for fn in (ip.dihedral, graph_dihedral):
        np.testing.assert_array_equal(fn(tf.constant(img), tf.constant(k), tf.constant(flip)),
                                      expected)
      seen.add(expected.tobytes())
  assert len(seen) == 8
  small = img[:5, :7]
  expected = np.pad(small, ((0, 15), (0, 13), (0, 0)), mode='symmetric')  # Pads > size.
  np.testing.assert_array_equal(ip.symmetric_pad_to(tf.constant(small), 20), expected)
  np.testing.assert_array_equal(
      tf.function(lambda x: ip.symmetric_pad_to(x, 20))(tf.constant(small)), expected)


def test_augment_example_same_eagerly_and_inside_tf_data():
  hr = tf.constant(skimage.data.astronaut()[:50, :45])
  ref = tf.constant(skimage.data.astronaut()[100:120, 200:260])  # 20 high: padded to 32.
  seeds = tf.constant([[1, 2], [3, 4], [5, 6]], tf.int64)
  fn = lambda h, r, s: ip.augment_example(h, r, s, hr_patch=32, scale=4)
  eager = [fn(hr, ref, s) for s in seeds]
  ds = tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: fn(hr, ref, s),
                                                     num_parallel_calls=2)
  for e, g in zip(eager, ds.as_numpy_iterator()):
    for k in ('lr', 'hr', 'ref'):
      np.testing.assert_array_equal(e[k].numpy(), g[k])
  assert not np.array_equal(eager[0]['hr'], eager[1]['hr'])
  # The reference keeps only pixel values of the original (crop + reflect + dihedral).
  ref_values = {tuple(p) for p in ref.numpy().reshape(-1, 3)}
  assert {tuple(p) for p in eager[0]['ref'].numpy().reshape(-1, 3)} <= ref_values


def test_paired_reference_follows_the_hr_crop_and_rotation():
  img = tf.constant(skimage.data.astronaut()[:60, :52])
  seeds = [tf.constant([s, 7], tf.int64) for s in range(6)]
  for s in seeds:
    paired = ip.augment_example(img, img, s, hr_patch=32, scale=4, ref_augment='paired')
    np.testing.assert_array_equal(paired['ref'].numpy(), paired['hr'].numpy())
  independent = [ip.augment_example(img, img, s, hr_patch=32, scale=4) for s in seeds]
  assert any(not np.array_equal(o['ref'].numpy(), o['hr'].numpy()) for o in independent)
  with pytest.raises(ValueError, match='ref_augment'):
    ip.augment_example(img, img, seeds[0], hr_patch=32, scale=4, ref_augment='bogus')


def _dihedral_set(img):
  out = []
  for k in range(4):
    r = np.rot90(img, k)
    out += [r, r[:, ::-1]]
  return out


def test_mixed_reference_augment_is_paired_or_independent():
  img = tf.constant(skimage.data.astronaut()[:60, :52])
  for s in range(6):
    seed = tf.constant([s, 7], tf.int64)
    paired = ip.augment_example(img, img, seed, hr_patch=32, scale=4, ref_augment='paired')
    indep = ip.augment_example(img, img, seed, hr_patch=32, scale=4, ref_augment='independent')
    for p, want in [(0.0, paired), (1.0, indep)]:
      mixed = ip.augment_example(img, img, seed, hr_patch=32, scale=4, ref_augment='mixed',
                                 independent_prob=p)
      for k in ('hr', 'ref'):
        np.testing.assert_array_equal(mixed[k].numpy(), want[k].numpy())
  halves = [ip.augment_example(img, img, tf.constant([s, 9], tf.int64), hr_patch=32, scale=4,
                               ref_augment='mixed', independent_prob=0.5) for s in range(16)]
  aligned = sum(np.array_equal(h['ref'].numpy(), h['hr'].numpy()) for h in halves)
  assert 2 <= aligned <= 14  # Some paired, some independent.


def test_shifted_view_is_the_same_image_shifted_and_rotated_with_the_hr():
  img = skimage.data.astronaut()[100:180, 150:230]  # 80x80: room 48 for a 32 patch.
  for s in range(8):
    seed = tf.constant([s, 3], tf.int64)
    ex = ip.shifted_view_example(tf.constant(img), seed, tf.constant(5.0, tf.float64),
                                 hr_patch=32, scale=4, photometric=0.0)
    hr, ref = ex['hr'].numpy(), ex['ref'].numpy()
    found = []
    for cand in range(8):  # The dihedral transform the HR crop got, and where it came from.
      for y in range(49):
        for x in range(49):
          if np.array_equal(_dihedral_set(img[y:y + 32, x:x + 32])[cand], hr):
            found.append((cand, y, x))
    cand, y, x = found[0]
    shifts = [(dy, dx) for dy in range(-5, 6) for dx in range(-5, 6)
              if 0 <= y + dy <= 48 and 0 <= x + dx <= 48 and np.array_equal(
                  _dihedral_set(img[y + dy:y + dy + 32, x + dx:x + dx + 32])[cand], ref)]
    assert shifts, f'seed {s}: the reference is not a <= 5 px shift of the HR crop'
    np.testing.assert_array_equal(ex['lr'].numpy(), ir.imresize(hr, 0.25))
  aligned = ip.shifted_view_example(tf.constant(img), seed, tf.constant(0.0, tf.float64),
                                    hr_patch=32, scale=4, photometric=0.0)
  np.testing.assert_array_equal(aligned['ref'].numpy(), aligned['hr'].numpy())
  jittered = ip.shifted_view_example(tf.constant(img), seed, tf.constant(0.0, tf.float64),
                                     hr_patch=32, scale=4, photometric=0.1)
  assert not np.array_equal(jittered['ref'].numpy(), jittered['hr'].numpy())


def test_rotated_and_zoomed_views():
  ramp = np.tile(np.arange(160, dtype=np.uint8)[None, :, None], (160, 1, 3))  # value = column.
  view = lambda img, angle, zoom: ip._similarity_view(
      tf.constant(img), tf.constant([79.5, 59.5]), 96, tf.constant(angle, tf.float32),
      tf.constant(zoom, tf.float32)).numpy()[..., 0].astype(float)
  np.testing.assert_array_equal(view(ramp, 0.0, 1.0), ramp[32:128, 12:108, 0])  # A plain crop.
  cols = np.arange(96)
  np.testing.assert_allclose(view(ramp, 0.0, 2.0)[10], 59.5 + (cols - 47.5) / 2, atol=0.51)
  turned = view(ramp, np.pi / 2, 1.0)  # 90 degrees: the column ramp becomes a row ramp.
  assert np.ptp(turned[:, 48]) > 90 and np.ptp(turned[48, 20:76]) <= 1
  # In shifted_view_example the transform draws its own seed: the HR crop is the plain one's.
  img = skimage.data.astronaut()[100:260, 150:310]
  seed = tf.constant([4, 2], tf.int64)
  kw = dict(hr_patch=96, scale=4, photometric=0.0)
  plain = ip.shifted_view_example(tf.constant(img), seed, tf.constant(32.0, tf.float64), **kw)
  turned = ip.shifted_view_example(tf.constant(img), seed, tf.constant(32.0, tf.float64),
                                   rotate=6.0, zoom=0.1, **kw)
  np.testing.assert_array_equal(plain['hr'].numpy(), turned['hr'].numpy())
  diff = np.abs(plain['ref'].numpy().astype(int) - turned['ref'].numpy().astype(int))
  assert diff.mean() > 3  # Resampled, not the crop ...
  assert np.abs(plain['ref'].numpy()[40:56, 40:56].astype(float).mean()
                - turned['ref'].numpy()[40:56, 40:56].astype(float).mean()) < 25  # ... of it.


def test_shift_curriculum():
  mix = ip.RefMix(shifted_prob=1.0, shift_ramp_start=100, shift_max=12.0, shift_ramp_steps=200)
  values = [float(mix.max_shift(tf.constant(s, tf.int64))) for s in (0, 100, 200, 300, 5000)]
  assert values == [0.0, 0.0, 6.0, 12.0, 12.0]
  at_once = ip.RefMix(shifted_prob=1.0, shift_ramp_start=10, shift_max=4.0)
  assert [float(at_once.max_shift(tf.constant(s, tf.int64))) for s in (9, 10)] == [0.0, 4.0]
  far = ip.RefMix(far_prob=1.0, shift_ramp_start=100, shift_max=12.0, shift_ramp_steps=200,
                  far_max=40.0)
  values = [float(far.max_shift(tf.constant(s, tf.int64), far=True)) for s in (100, 200, 300)]
  assert values == [0.0, 20.0, 40.0]


def test_ref_mix_sources(tmp_path):
  # Four distinct photos, each stored with a constant reference that gives its source away.
  src = skimage.data.astronaut()
  pairs = [(src[i * 100:i * 100 + 64, i * 90:i * 90 + 64].copy(),
            np.full((64, 64, 3), 50 * i, np.uint8)) for i in range(4)]
  data = _prepare(tmp_path, pairs)
  plain = _take(_iter(data), 3)
  zero_mix = _take(_iter(data, ref_mix=ip.RefMix(shift_max=3.0)), 3)
  for a, b in zip(plain, zero_mix):  # Inactive mixing: the plain stream, bitwise.
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])

  def source_of(patch):
    """Index of the photo a 32x32 patch (any dihedral transform) was cut from, else None."""
    for i, (hr, _) in enumerate(pairs):
      for y in range(33):
        for x in range(33):
          if any(np.array_equal(d, patch) for d in _dihedral_set(hr[y:y + 32, x:x + 32])):
            return i
    return None

  unrelated = _take(_iter(data, local_batch_size=2, ref_mix=ip.RefMix(unrelated_prob=1.0)), 2)
  shifted = _take(_iter(data, local_batch_size=2, ref_mix=ip.RefMix(shifted_prob=1.0,
                                                                       shift_max=0.0)), 2)
  for batch in unrelated:
    for hr, ref in zip(batch['hr'], batch['ref']):
      hr_src = source_of(np.round(hr * 255).astype(np.uint8))
      ref_src = source_of(np.round(ref * 255).astype(np.uint8))
      assert None not in (hr_src, ref_src) and hr_src != ref_src
  aligned = _take(_iter(data, local_batch_size=2, ref_mix=ip.RefMix(
      aligned_prob=1.0, shifted_prob=0.0, shift_max=8.0)), 2)
  for batch in shifted + aligned:
    np.testing.assert_array_equal(batch['ref'], batch['hr'])  # Aligned (before the ramp).
  # Far views: the same photo, moved by more than shift_max (0 here).
  far = _take(_iter(data, local_batch_size=2, ref_mix=ip.RefMix(far_prob=1.0, shift_max=0.0,
                                                                   far_max=32.0)), 2)
  moved = 0
  for batch in far:
    for hr, ref in zip(batch['hr'], batch['ref']):
      hr_u8, ref_u8 = (np.round(x * 255).astype(np.uint8) for x in (hr, ref))
      assert source_of(hr_u8) == source_of(ref_u8) is not None
      moved += not np.array_equal(hr_u8, ref_u8)
  assert moved >= 3
  with pytest.raises(ValueError, match='more than 1'):
    _iter(data, ref_mix=ip.RefMix(shifted_prob=0.7, unrelated_prob=0.5))
  with pytest.raises(ValueError, match='more than 1'):
    _iter(data, ref_mix=ip.RefMix(shifted_prob=0.5, aligned_prob=0.6))
  with pytest.raises(ValueError, match='kind=refsr'):
    _iter(data, kind='sisr', ref_mix=ip.RefMix(unrelated_prob=0.5))
