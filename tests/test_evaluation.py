"""Reference-use controls of the RefSR evaluation: oracle, unrelated, ref_gain."""
import numpy as np
import pytest
import skimage.data

from ssen_jax.data import datasets
from ssen_jax.eval import protocol as evaluation
from ssen_jax.eval import tables
from ssen_jax.data import imresize as ir


def _groups(n=3):
  """n CUFED5-style groups from different photos; every level's reference is a different photo."""
  photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(),
            skimage.data.rocket()]
  exs = []
  for i in range(n):
    hr = photos[i][40:104, 60:124]
    refs = [photos[(i + 1 + j) % len(photos)][j * 20:j * 20 + 64, :64] for j in range(5)]
    refs[0] = hr.copy()  # XH: the HR itself, so a reference-copying model profits there.
    exs.append(datasets.make_example(f'{i:03d}', hr, 4, refs))
  return exs


def _blend_model(weight):
  """A 'model' that mixes the fitted reference into the bicubic upsampling: uses its reference."""
  def sr_jit(params, lr, ref):
    del params
    bicubic = np.clip(ir.imresize(np.asarray(lr[0], np.float64), 4), 0, 1)[None]
    return bicubic if ref is None else (1 - weight) * bicubic + weight * np.asarray(ref)
  return sr_jit


def test_controls_show_a_reference_copying_model():
  exs = _groups()
  res = evaluation.evaluate_model(exs, _blend_model(0.7), None, scale=4, uses_ref=True)
  assert set(res['levels']) == set(evaluation.LEVELS)
  assert set(res['controls']) == {'oracle', 'unrelated'}
  oracle, unrelated = res['controls']['oracle']['psnr'], res['controls']['unrelated']['psnr']
  assert oracle == pytest.approx(res['levels']['XH']['psnr'])  # XH is the HR here.
  assert oracle > unrelated + 5
  assert res['ref_gain'] == pytest.approx(res['levels']['XH']['psnr'] - unrelated)
  assert res['psnr'] == pytest.approx(np.mean([r['psnr'] for r in res['levels'].values()]))
  # The unrelated control pairs each group with the next group's XH reference.
  unrelated_refs = evaluation.control_examples(exs)['unrelated']
  for i, ex in enumerate(unrelated_refs):
    np.testing.assert_array_equal(ex['refs'][0], exs[(i + 1) % len(exs)]['refs'][0])
  table = tables.paper_table([('blend', res)], scale=4, per_level=True)
  assert '| method | XH | H | M | L | XL | mean | oracle | unrelated | ref_gain |' in table
  assert f'| {res["ref_gain"]:+.2f} |' in table
  scalars = tables.scalar_summary(res)
  assert scalars['eval/ref_gain'] == res['ref_gain']
  assert scalars['eval/psnr_oracle'] == oracle and scalars['eval/psnr_unrelated'] == unrelated
  assert 'ref_gain' in tables.describe(res) and 'oracle' in tables.describe(res)


def test_reference_free_model_gets_every_row_and_zero_gain():
  exs = _groups()
  res = evaluation.evaluate_model(exs, _blend_model(0.7), None, scale=4, uses_ref=False)
  assert res['per_level'] and res['ref_gain'] == 0.0
  rows = {**res['levels'], **res['controls']}
  assert set(rows) == set(evaluation.LEVELS) | set(evaluation.CONTROLS)
  assert len({r['psnr'] for r in rows.values()}) == 1
  table = tables.paper_table([('baseline', res)], scale=4, per_level=True)
  assert '| +0.00 |' in table


def test_single_group_has_no_unrelated_control():
  (ex,) = _groups(1)
  res = evaluation.evaluate_model([ex], _blend_model(0.5), None, scale=4, uses_ref=True)
  assert set(res['controls']) == {'oracle'} and res['ref_gain'] is None
  assert 'ref_gain' not in tables.scalar_summary(res)


def test_summary_images_show_bicubic_sr_hr_and_reference():
  exs = _groups(2)
  imgs = evaluation.summary_images(exs, _blend_model(1.0), None, scale=4, uses_ref=True, count=1)
  (name, panel), = imgs.items()
  assert name == 'eval/000' and panel.shape == (1, 64, 4 * 64, 3)
  hr = exs[0]['hr'] / 255.0
  np.testing.assert_allclose(panel[0, :, 128:192], hr, atol=1e-6)  # The HR panel.
  np.testing.assert_allclose(panel[0, :, 64:128], hr, atol=1e-6)  # SR = XH reference = HR.
