"""Timing helpers shared by the benchmarks: contenders run in turn, so machine noise hits them alike."""

import statistics
import time
from collections.abc import Callable, Sequence

import jax


def time_once(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def interleaved_medians(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
  """Median seconds per call of each contender, after one warm-up (compiling) call each.

  Rounds run every contender once, in turn, so that a burst of load from
  other processes slows all of them rather than one.
  """
  for fn in contenders.values():
    time_once(fn)
  times = {name: [] for name in contenders}
  for _ in range(repeats):
    for name, fn in contenders.items():
      times[name].append(time_once(fn))
  return {name: statistics.median(ts) for name, ts in times.items()}


def print_table(title: str, medians: dict[str, float], baseline: str, unit: str = "ms",
                extra: Sequence[str] = ()) -> None:
  """One line per contender: median and its ratio to `baseline`."""
  scale = {"ms": 1e3, "s": 1.0}[unit]
  print(title, *extra, flush=True)
  width = max(24, *map(len, medians))
  for name, seconds in medians.items():
    print(f"  {name:<{width}} {seconds * scale:10.2f} {unit}   x{seconds / medians[baseline]:.3f} vs {baseline}",
          flush=True)
