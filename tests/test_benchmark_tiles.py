"""`benchmark --what tiles`: the plan's choice timed against the tilings it compares (tiny sizes)."""
from ssen_jax.benchmarks import harness
from ssen_jax.benchmarks import tiles
from ssen_jax.inference import tiling

from conftest import REPO_ROOT


def test_tiles_figure_at_tiny_size(monkeypatch):
  monkeypatch.setattr(tiling, 'SEARCH_TILES', (128,))  # Two candidates: two compilations.
  monkeypatch.setattr(tiles, 'MAX_PREDICTED_RATIO', 100.0)  # Both timed.
  result = tiles.bench_tiles(1, True, lr_size=(264, 264),
                             config_spec=str(REPO_ROOT / 'configs' / 'refsr.py'))
  rows = {r['tiling']: r for r in result['tiles']}
  assert len(rows) == 2 and 'untiled 264x264' in rows, rows
  assert sum(r['default'] == 'yes' for r in rows.values()) == 1
  cheapest = min(r['predicted_gop'] for r in rows.values())
  for r in rows.values():
    assert abs(r['predicted_vs_cheapest'] - r['predicted_gop'] / cheapest) < 1e-9
    assert r['call_s'] > 0 and abs(r['image_s'] - r['calls'] * r['call_s']) < 1e-9
    assert r['vs_fastest'] >= 1 and r['cpu_vs_fastest'] >= 1
  assert min(r['vs_fastest'] for r in rows.values()) == 1
  (wall, cpu) = result['ratios']
  assert wall['target'] == '<= 1.3' and wall['value'] >= 1 and cpu['value'] >= 1
  result.update(what='tiles', machine=harness.machine_info(), load_average_after=0.0)
  text = harness.to_markdown(result)
  assert '| untiled 264x264 | 1 |' in text and 'default plan (' in text
  assert all(r['gb_per_call'] > 0 for r in rows.values())


def test_tilings_over_the_memory_budget_are_listed_not_timed(monkeypatch):
  """A tiling the plan would refuse for memory is not run (on a shared machine it could swap)."""
  monkeypatch.setattr(tiling, 'SEARCH_TILES', (128,))
  monkeypatch.setattr(tiles, 'MAX_PREDICTED_RATIO', 100.0)
  per_px = 1000  # Bytes per LR pixel of one call, by fiat: untiled 264x264 needs 70 MB.
  monkeypatch.setattr(tiling.Upscaler, 'estimate_bytes', lambda self, h, w: per_px * h * w)
  monkeypatch.setattr(tiling, 'default_memory_bytes',
                      lambda *_: tiling.host_bytes(264, 264, 4) + per_px * 200 * 200)
  result = tiles.bench_tiles(1, True, lr_size=(264, 264),
                             config_spec=str(REPO_ROOT / 'configs' / 'refsr.py'))
  rows = {r['tiling']: r for r in result['tiles']}
  untiled = rows.pop('untiled 264x264')
  (tiled,) = rows.values()
  assert untiled['untimed'] == 'over the memory budget' and untiled['call_s'] is None
  assert untiled['default'] == '' and tiled['default'] == 'yes'
  assert tiled['call_s'] > 0 and tiled['vs_fastest'] == 1
  result.update(what='tiles', machine=harness.machine_info(), load_average_after=0.0)
  assert '| over the memory budget |' in harness.to_markdown(result)
