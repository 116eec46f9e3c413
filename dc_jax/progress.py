"""What a training run tells the person waiting for it: rate, time left, and the projected time of the schedule.

tqdm draws a bar on a terminal and nothing otherwise (a log file, a CI job,
`nohup`); there a line every `every` seconds says where the stage is, how fast
it goes and how long it has left. The first steps after compiling are timed
once, so that a schedule that would take days says so in its first minute.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import jax
from absl import logging

# Steps timed after the first (compiling) one before the step time is reported, unless they took this many
# seconds (one full-width VGG19 step on a CPU does) or the call ends.
TIMED_STEPS, TIMED_SECONDS = 3, 5.0
EVERY_SECONDS = 30.0  # Progress lines when no bar is shown.


def bar_shown() -> bool:
  """Whether tqdm draws its bar (on a terminal): progress lines are logged only where it does not."""
  return sys.stderr.isatty()


def duration(seconds: float) -> str:
  """12 s, 4 min 05 s, 3 h 20 min, 2.5 days."""
  if seconds < 60:
    return f"{seconds:.0f} s"
  if seconds < 3600:
    return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
  if seconds < 2 * 86400:
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"
  return f"{seconds / 86400:.1f} days"


class Progress:
  """Tracks one `fit` call: logs progress lines (when no bar is shown) and reports its step time once."""

  def __init__(self, stage: str, epochs: int, first_epoch: int, steps: int, batch_size: int, log_lines: bool,
               on_step_time: Callable[[float], None] | None = None, every: float | None = None):
    self.stage, self.epochs, self.steps, self.batch_size = stage, epochs, steps, batch_size
    self.log_lines, self.on_step_time = log_lines, on_step_time
    self.every = EVERY_SECONDS if every is None else every
    self.total = (epochs - first_epoch) * steps  # Steps this call runs.
    self.done = 0
    self.timing_start: tuple[float, int] | None = None  # (time, steps done) after the compiling step.
    self.last_line = time.perf_counter()

  def advance(self, epoch: int, step_in_epoch: int, steps_done: int, metrics: Any) -> None:
    """After a dispatch that brought this call to `steps_done` steps (`step_in_epoch` of epoch `epoch`)."""
    self.done = steps_done
    if self.timing_start is None:  # The first dispatch compiles: time from its end on.
      jax.block_until_ready(metrics)
      self.timing_start = (time.perf_counter(), steps_done)
      return
    start, start_done = self.timing_start
    timed = steps_done - start_done
    if self.on_step_time is not None:
      jax.block_until_ready(metrics)  # Only until reported: slow steps are then timed as they finish.
      elapsed = time.perf_counter() - start
      if timed >= TIMED_STEPS or elapsed >= TIMED_SECONDS or steps_done == self.total:
        callback, self.on_step_time = self.on_step_time, None
        callback(elapsed / timed)
    now = time.perf_counter()
    if self.log_lines and now - self.last_line >= self.every:
      jax.block_until_ready(metrics)  # Dispatch runs ahead of the devices: count only finished steps.
      now = self.last_line = time.perf_counter()
      per_step = (now - start) / timed
      logging.info("%s: epoch %d/%d, step %d/%d, %s images/s, about %s left in this stage", self.stage, epoch + 1,
                   self.epochs, step_in_epoch, self.steps, f"{self.batch_size / per_step:,.0f}",
                   duration(per_step * (self.total - steps_done)))
