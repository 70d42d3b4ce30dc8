"""The embedded demo dataset: offline, deterministic, idempotent, read through TFDS ('ssen_demo')."""
import socket

import numpy as np
import pytest

from ssen_jax.data_prep import layouts
from ssen_jax.data_prep import tfds_build
from ssen_jax.data import datasets
from ssen_jax.data import demo_data
from ssen_jax.data import input_pipeline


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
  mp = pytest.MonkeyPatch()
  mp.setattr(socket, 'socket', lambda *a, **k: pytest.fail('demo data tried to use the network'))
  try:
    return demo_data.build_demo_data(tmp_path_factory.mktemp('demo'))
  finally:
    mp.undo()


def test_layout_counts_and_training_batches_through_tfds(demo, tmp_path, monkeypatch):
  """The demo's TFDS dataset keeps the order of its earlier 4 round-robin TFRecord shards (so its
  training stream is bit for bit the one of that storage); one host or two read it."""
  monkeypatch.setattr(socket, 'socket', lambda *a, **k: pytest.fail('TFDS tried the network'))
  assert demo.num_train == 240 and demo.num_eval == 24
  assert len(list((demo.train_raw_dir / 'ref').glob('*.png'))) == 240
  builder = tfds_build.prepare('ssen_demo', demo.root, tmp_path / 'tfds')
  assert builder.info.splits['train'].num_examples == 240
  names = [job.name for job in layouts.find_cufed(demo.train_raw_dir)]  # Sorted.
  shards = [names[s::demo_data.NUM_SHARDS] for s in range(demo_data.NUM_SHARDS)]
  stored = [ex['name'].decode() for ex in builder.as_dataset(split='train').as_numpy_iterator()]
  assert stored == sum(shards, [])
  common = dict(kind='refsr', hr_patch=96, scale=4, local_batch_size=3, seed=0, start_step=0,
                ref_augment='paired',
                ref_mix=input_pipeline.RefMix(aligned_prob=0.6, shifted_prob=0.25,
                                              unrelated_prob=0.15, shift_quantum=4))
  for host, count in [(0, 1), (1, 2)]:
    batch = next(input_pipeline.create_train_iterator(
        tfds_name='ssen_demo', tfds_data_dir=str(tmp_path / 'tfds'), process_index=host,
        process_count=count, **common))
    assert batch['lr'].shape == (3, 24, 24, 3) and batch['ref'].shape == (3, 96, 96, 3)


def test_eval_groups_are_cufed5_with_decreasing_similarity(demo):
  groups = datasets.load_cufed5(demo.eval_dir, 4)
  assert [g['name'] for g in groups] == [f'{i:03d}' for i in range(24)]
  for g in groups:
    assert g['hr'].shape == (128, 128, 3) and g['lr'].shape == (32, 32, 3)
    assert len(g['refs']) == 5
    err = [np.mean(np.abs(r.astype(float) - g['hr'])) for r in g['refs']]
    assert err[0] < err[4], (g['name'], err)  # XH resembles the HR more than XL does.
    assert err[0] == min(err)  # XH is the closest reference.


def test_consecutive_eval_groups_come_from_different_photos(demo):
  """The evaluation's `unrelated` control (next group's XH reference) must share no content."""
  groups = datasets.load_cufed5(demo.eval_dir, 4)
  for i, g in enumerate(groups):
    nxt = groups[(i + 1) % len(groups)]['refs'][0].astype(float)
    own = np.mean(np.abs(g['refs'][0].astype(float) - g['hr']))
    assert own < 0.7 * np.mean(np.abs(nxt - g['hr'])), g['name']
    # Even the best 16x16 match of an HR patch in the next group's XH is poor.
    patch = g['hr'][56:72, 56:72].astype(float)
    best = min(np.mean(np.abs(nxt[y:y + 16, x:x + 16] - patch))
               for y in range(0, 113, 4) for x in range(0, 113, 4))
    assert best > 4, g['name']


def test_train_and_eval_sources_are_disjoint_and_pairs_related():
  assert not set(demo_data.TRAIN_SOURCES) & set(demo_data.EVAL_SOURCES)
  pairs = demo_data.make_train_pairs()[:10]
  own = [np.mean(np.abs(hr.astype(float) - ref)) for _, hr, ref in pairs]
  shuffled = [np.mean(np.abs(hr.astype(float) - pairs[(i + 1) % 10][2]))
              for i, (_, hr, _) in enumerate(pairs)]
  assert np.mean(own) < 0.6 * np.mean(shuffled)


def test_idempotent_and_deterministic(demo, tmp_path):
  manifest = demo.root / 'manifest.json'
  mtime = manifest.stat().st_mtime_ns
  assert demo_data.build_demo_data(demo.root.parent) == demo
  assert manifest.stat().st_mtime_ns == mtime  # Reused, not rebuilt.
  again = demo_data.build_demo_data(tmp_path)
  files = sorted(p.relative_to(demo.root) for p in demo.root.rglob('*') if p.is_file())
  assert files == sorted(p.relative_to(again.root) for p in again.root.rglob('*') if p.is_file())
  for f in files:
    assert (demo.root / f).read_bytes() == (again.root / f).read_bytes(), f
  assert not list(tmp_path.glob('.*tmp*'))
