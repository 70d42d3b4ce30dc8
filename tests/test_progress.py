"""ssen_jax.core.progress: i/N lines with an estimate of the time left."""
from ssen_jax.core import progress


def test_estimate_is_the_mean_time_of_the_items_that_worked_times_those_left():
  now = [0.0]
  lines = []
  counter = progress.Progress(5, lines.append, clock=lambda: now[0])
  counter.step('a: kept', worked=False)  # Took no time: 'ETA ?' and no rate from it.
  now[0] = 4.0
  counter.step('b: wrote')  # 4 s for one real item; 3 left -> 12 s.
  now[0] = 10.0
  counter.step('c: wrote')  # 10 s for two -> 5 s each; 2 left -> 10 s.
  assert lines == ['[1/5] a: kept (0.0 s elapsed, ETA ?)',
                   '[2/5] b: wrote (4.0 s elapsed, ETA 12 s)',
                   '[3/5] c: wrote (10.0 s elapsed, ETA 10 s)']
  quiet = progress.Progress(2, clock=lambda: 0.0)  # No log: the line is only returned.
  assert quiet.step('x') == '[1/2] x (0.0 s elapsed, ETA 0 s)'


def test_items_done_together_count_as_many():
  now = [0.0]
  counter = progress.Progress(8, clock=lambda: now[0])
  now[0] = 8.0
  assert counter.step('images 1-4', items=4) == '[4/8] images 1-4 (8.0 s elapsed, ETA 8 s)'
