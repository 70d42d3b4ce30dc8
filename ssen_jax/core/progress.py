"""Progress lines that tell the time: `[i/N] what (E s elapsed, ETA T s)`.

One helper for every long loop of the tools: the evaluation's images (during and after training),
a folder of images, the tiles of a large one. The estimate is the mean time of the items that did
real work so far times the items left (items skipped at once, such as an output kept because it
exists, do not count towards the mean); 'ETA ?' until one has finished.
"""
from __future__ import annotations

import time
from typing import Callable


class Progress:
  """Counts items of a loop of `total` and formats one line per item.

  Example:
    progress = Progress(len(files), log=print)
    for path in files:
      ...
      progress.step(f'{path.name}: done')   # -> "[1/3] a.png: done (1.2 s elapsed, ETA 2 s)"
  """

  def __init__(self, total: int, log: Callable[[str], None] | None = None, *,
               clock: Callable[[], float] = time.perf_counter):
    self.total = total
    self.log = log
    self.clock = clock
    self.start = clock()
    self.done = 0  # Items seen.
    self.worked = 0  # Items that did real work (count towards the estimate).

  def eta(self) -> float | None:
    """Seconds left, or None before any item that did real work has finished."""
    if not self.worked:
      return None
    return (self.clock() - self.start) / self.worked * (self.total - self.done)

  def line(self, text: str) -> str:
    eta = self.eta()
    return (f'[{self.done}/{self.total}] {text} ({self.clock() - self.start:.1f} s elapsed, '
            f'ETA {"?" if eta is None else f"{eta:.0f} s"})')

  def step(self, text: str, *, worked: bool = True, items: int = 1) -> str:
    """Counts `items` items done together (`worked=False`: they took no real time) and logs the
    line."""
    self.done += items
    self.worked += items if worked else 0
    message = self.line(text)
    if self.log is not None:
      self.log(message)
    return message
