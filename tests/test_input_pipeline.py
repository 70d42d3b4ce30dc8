"""tf.data input: determinism, exact resume, host split, MATLAB LR, eager vs in-graph augmentation."""
import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from ssen_jax import datasets
from ssen_jax import imresize as ir
from ssen_jax import input_pipeline as ip


def _write(tmp_path, pairs, num_shards, prefix='t'):
  """pairs: [(hr uint8, ref uint8 or None)] -> glob of `num_shards` round-robin shards."""
  shards = [[] for _ in range(num_shards)]
  for i, (hr, ref) in enumerate(pairs):
    feats = {'name': f'{i:03d}', 'hr': datasets.encode_png(hr)}
    if ref is not None:
      feats['ref'] = datasets.encode_png(ref)
    shards[i % num_shards].append(datasets.serialize_example(feats))
  for name, recs in zip(datasets.shard_names(prefix, num_shards), shards):
    datasets.write_tfrecord(tmp_path / name, recs)
  return str(tmp_path / f'{prefix}-*')


@pytest.fixture(scope='module')
def photo_pattern(tmp_path_factory):
  """10 photo pairs: HR 48x40..48x49, refs of assorted sizes (some smaller than the patch)."""
  src = skimage.data.astronaut()
  pairs = [(src[i * 40:i * 40 + 48, i * 30:i * 30 + 40 + i], src[i * 30:i * 30 + 20 + 4 * i, :36])
           for i in range(10)]
  return _write(tmp_path_factory.mktemp('photo'), pairs, num_shards=4)


@pytest.fixture(scope='module')
def flat_pattern(tmp_path_factory):
  """8 constant-colour 32x32 HR images (value 20 i + 10): batches reveal which examples they hold."""
  pairs = [(np.full((32, 32, 3), 20 * i + 10, np.uint8), None) for i in range(8)]
  return _write(tmp_path_factory.mktemp('flat'), pairs, num_shards=4, prefix='flat')


def _iter(pattern, **kw):
  args = dict(file_pattern=pattern, kind='refsr', hr_patch=32, scale=4, local_batch_size=4,
              seed=0, start_step=0, process_index=0, process_count=1)
  args.update(kw)
  return ip.create_train_iterator(**args)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_shapes_ranges_and_lr_is_matlab_bicubic_of_hr(photo_pattern):
  (batch,) = _take(_iter(photo_pattern), 1)
  assert set(batch) == {'lr', 'hr', 'ref'}
  assert batch['lr'].shape == (4, 8, 8, 3) and batch['hr'].shape == batch['ref'].shape == (
      4, 32, 32, 3)
  for v in batch.values():
    assert v.dtype == np.float32 and 0 <= v.min() and v.max() <= 1
    np.testing.assert_array_equal(np.round(v * 255) / 255, v)  # uint8 levels.
  hr_u8 = np.round(batch['hr'] * 255).astype(np.uint8)
  for i in range(4):
    np.testing.assert_array_equal(np.round(batch['lr'][i] * 255), ir.imresize(hr_u8[i], 0.25))
  (sisr,) = _take(_iter(photo_pattern, kind='sisr', hr_patch=24, local_batch_size=3), 1)
  assert set(sisr) == {'lr', 'hr'} and sisr['lr'].shape == (3, 6, 6, 3)


def test_deterministic_and_exact_resume(photo_pattern):
  run = _take(_iter(photo_pattern, seed=7), 5)  # 20 examples of 10: crosses two epochs.
  again = _take(_iter(photo_pattern, seed=7), 5)
  resumed = _take(_iter(photo_pattern, seed=7, start_step=3), 2)
  for a, b in zip(run, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for a, b in zip(run[3:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other = _take(_iter(photo_pattern, seed=8), 1)[0]
  assert not np.array_equal(other['hr'], run[0]['hr'])
  assert not np.array_equal(run[1]['hr'], run[0]['hr'])


def _ids(batch):
  return [int(round((v * 255 - 10) / 20)) for v in batch['hr'][:, 0, 0, 0]]


def test_each_epoch_is_a_permutation_and_hosts_are_disjoint(flat_pattern):
  steps = _take(_iter(flat_pattern, kind='sisr'), 4)
  epoch0, epoch1 = sum(map(_ids, steps[:2]), []), sum(map(_ids, steps[2:]), [])
  assert sorted(epoch0) == sorted(epoch1) == list(range(8))
  assert epoch0 != epoch1 and epoch0 != list(range(8))
  hosts = [set(sum(map(_ids, _take(_iter(flat_pattern, kind='sisr', process_index=p,
                                         process_count=2, local_batch_size=2), 4)), []))
           for p in range(2)]
  assert hosts[0] | hosts[1] == set(range(8)) and not hosts[0] & hosts[1]
  assert hosts[0] == {0, 2, 4, 6}  # Shards 0 and 2 (examples i % 4 in {0, 2}).
  with pytest.raises(ValueError, match='at least one shard'):
    _iter(flat_pattern, kind='sisr', process_count=5, process_index=0)


def test_bad_configurations(photo_pattern, flat_pattern, tmp_path):
  with pytest.raises(ValueError, match="needs a 'ref'"):
    _iter(flat_pattern)
  with pytest.raises(ValueError, match='smaller than hr_patch'):
    _iter(photo_pattern, hr_patch=44)
  with pytest.raises(ValueError, match='multiple of scale'):
    _iter(photo_pattern, hr_patch=30)
  with pytest.raises(ValueError, match='no TFRecord files'):
    _iter(str(tmp_path / 'nothing-*'))


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
