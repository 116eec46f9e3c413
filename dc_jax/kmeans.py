"""Exact 1-D k-means (Lloyd) on the weights of one layer: what weight sharing clusters with.

Clusters of scalars are contiguous runs of the sorted values, so after one
sort an iteration is a binary search for the k - 1 midpoints between
centroids and differences of float64 prefix sums: O(k log n) per iteration,
memory linear in n, no n x k distance matrix. The prefix sums are stored per
block of 64 values and finished on demand (`_Prefix`). Empty clusters (the linear
initialisation leaves many in the gap that pruning opens around zero) take
over half of the cluster with the largest squared error, so every code is
used. Labelling the original (unsorted) values is one compiled pass: a grid
lookup, then a comparison with the few thresholds in the value's cell.
From HISTOGRAM_MIN values on, the sort itself is most of the time: Lloyd
then starts on a histogram and finishes exactly (`_kmeans_on_histogram`).
There, the passes over all the values (counting and summing per cell,
pulling out cells, labelling) and Lloyd's thousand-odd iterations over the
cells are numba-compiled loops: each fuses what took numpy several passes
and temporaries, and gives the same numbers to the bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numba
import numpy as np

from dc_jax.errors import ConfigError

INITS = ("linear", "density", "random", "kmeans++")


@dataclasses.dataclass(frozen=True)
class KMeansResult:
  centroids: np.ndarray  # float64, sorted, distinct; only clusters that have members.
  labels: np.ndarray  # int32, one per input value, into `centroids`.
  inertia: float  # Sum of squared distances to the assigned centroid, in float64.
  iterations: int  # Lloyd iterations run.
  converged: bool  # True if the assignment stopped changing before the iteration cap.


def _initial_centroids(sorted_values: np.ndarray, prefix: np.ndarray, k: int, init: str,
                       rng: np.random.Generator) -> np.ndarray:
  """k sorted initial centroids within [min, max] (the paper's Fig. 4), from values with more than k distinct."""
  if init == "linear":
    return np.linspace(float(sorted_values[0]), float(sorted_values[-1]), k)
  if init == "density":
    # Evenly spaced on the y-axis of the CDF, then read off its x-axis.
    return np.interp(np.linspace(0.0, sorted_values.size - 1, k), np.arange(sorted_values.size),
                     sorted_values.astype(np.float64))
  if init == "random":
    return np.sort(rng.choice(_distinct(sorted_values), size=k, replace=False)).astype(np.float64)
  if init == "kmeans++":
    return _kmeans_plus_plus(sorted_values, prefix, k, rng)
  raise ConfigError(f"share.init={init!r} is not an initialisation; valid: {', '.join(INITS)}")


def _distinct(sorted_values: np.ndarray) -> np.ndarray:
  keep = np.empty(sorted_values.size, bool)
  keep[0] = True
  np.not_equal(sorted_values[1:], sorted_values[:-1], out=keep[1:])
  return sorted_values[keep]


def _thresholds(centroids: np.ndarray) -> np.ndarray:
  """The k - 1 midpoints rounded down to float32: a float32 x is <= a midpoint exactly when <= its threshold.

  So the float32 weights are compared with float32 numbers, never copied to float64.
  """
  midpoints = (centroids[:-1] + centroids[1:]) / 2
  rounded = midpoints.astype(np.float32)
  return np.where(rounded > midpoints, np.nextafter(rounded, np.float32(-np.inf)), rounded)


_compiled_thresholds = numba.njit(cache=True)(_thresholds)  # The same, inside the compiled `_cell_iterations`.


def _cluster_bounds(sorted_values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """k + 1 positions in the sorted values: cluster j is [bounds[j], bounds[j+1]).

  A value exactly between two centroids goes to the lower one, as in an argmin.
  """
  inner = np.searchsorted(sorted_values, _thresholds(centroids), side="right")
  return np.concatenate([[0], inner, [sorted_values.size]])


def _kmeans_plus_plus(sorted_values: np.ndarray, prefix: np.ndarray, k: int,
                      rng: np.random.Generator) -> np.ndarray:
  """Arthur & Vassilvitskii's D^2 sampling, exact, in O(k (k + log n)) from prefix sums of x and x^2.

  The D^2 mass of each region (the values nearest one chosen centre) is
  read off the prefix sums; the sampled value is found by bisection on the
  (monotone) cumulative mass inside its region.
  """
  squares = _Prefix(sorted_values, squares=True)
  n = sorted_values.size
  centres = np.array([sorted_values[rng.integers(n)]])
  while centres.size < k:
    bounds = _cluster_bounds(sorted_values, centres)
    lo, hi = bounds[:-1], bounds[1:]

    def mass(region, end):  # D^2 mass of sorted_values[lo[region]:end] around centre `region`.
      c, start = centres[region], lo[region]
      return ((squares[end] - squares[start]) - 2 * c * (prefix[end] - prefix[start]) + c * c * (end - start))

    masses = np.maximum(mass(np.arange(centres.size), hi), 0.0)
    cumulative = np.cumsum(masses)
    if cumulative[-1] <= 0.0:
      break
    target = rng.random() * cumulative[-1]
    region = min(int(np.searchsorted(cumulative, target, side="right")), centres.size - 1)
    target -= cumulative[region] - masses[region]
    start, end = int(lo[region]), int(hi[region])  # Invariant: mass(start) <= target < mass(end).
    while end - start > 1:
      middle = (start + end) // 2
      if mass(region, middle) > target:
        end = middle
      else:
        start = middle
    centres = np.unique(np.append(centres, sorted_values[start]))
  return centres


def _split_largest(sorted_values: np.ndarray, prefix: np.ndarray, squares: np.ndarray, centroids: np.ndarray,
                   bounds: np.ndarray, empty: np.ndarray, number: np.ndarray | None = None) -> np.ndarray:
  """Each empty cluster takes half of the cluster with the largest squared error, split at its mean.

  Linear initialisation leaves many centroids in the gap that pruning opens
  around zero; this puts them where they lower the error most (a 2-means
  split of one contiguous run, read off the prefix sums). `number[p]` is how
  many values the first p points stand for (a histogram's cells); None: p.
  """
  def error(lo, hi):
    n = np.maximum(hi - lo if number is None else number[hi] - number[lo], 1)
    return (squares[hi] - squares[lo]) - np.square(prefix[hi] - prefix[lo]) / n

  full = ~empty
  lo, hi, centres = bounds[:-1][full], bounds[1:][full], centroids[full]
  errors = error(lo, hi)
  for _ in range(int(empty.sum())):
    j = int(np.argmax(errors))
    if errors[j] <= 0.0:
      break
    cut = lo[j] + int(np.searchsorted(sorted_values[lo[j]:hi[j]], centres[j], side="right"))
    cut = min(max(cut, lo[j] + 1), hi[j] - 1)
    halves = np.array([[lo[j], cut], [cut, hi[j]]])
    counts = halves[:, 1] - halves[:, 0] if number is None else number[halves[:, 1]] - number[halves[:, 0]]
    means = (prefix[halves[:, 1]] - prefix[halves[:, 0]]) / counts
    lo = np.concatenate([lo[:j], halves[:, 0], lo[j + 1:]])
    hi = np.concatenate([hi[:j], halves[:, 1], hi[j + 1:]])
    centres = np.concatenate([centres[:j], means, centres[j + 1:]])
    errors = np.concatenate([errors[:j], error(halves[:, 0], halves[:, 1]), errors[j + 1:]])
  return np.concatenate([centres, centroids[empty][:centroids.size - centres.size]])


def kmeans_1d(values: np.ndarray, k: int, init: str = "linear", max_iterations: int = 1000,
              seed: int = 0) -> KMeansResult:
  """Lloyd's k-means on scalars, exactly, with sums in float64.

  The values are sorted once; clusters are then contiguous runs, so an
  iteration is a binary search for the k - 1 midpoints and differences of
  prefix sums: no n x k distances, memory linear in n. Fewer than k distinct
  values give one centroid per distinct value (inertia 0). From HISTOGRAM_MIN
  values on, with the linear or density start, Lloyd runs on a histogram
  first and is finished by exact iterations (no sort; the same guarantees).
  """
  if k < 1:
    raise ConfigError(f"k={k} clusters; valid: k >= 1")
  values = np.asarray(values, np.float32).ravel()
  if values.size == 0:
    return KMeansResult(np.zeros(0), np.zeros(0, np.int32), 0.0, 0, True)
  if values.size >= HISTOGRAM_MIN and init in HISTOGRAM_INITS:
    result = _kmeans_on_histogram(values, k, init, max_iterations)
    if result is not None:
      return result
  sorted_values = np.sort(values)
  if not (np.isfinite(sorted_values[0]) and np.isfinite(sorted_values[-1])):  # NaN sorts last.
    raise ValueError("k-means input has NaN or Inf values")
  prefix = _prefix_sums(sorted_values)
  if 1 + np.count_nonzero(sorted_values[1:] != sorted_values[:-1]) <= k:
    return _assign(values, sorted_values, prefix, _distinct(sorted_values), 0, True)
  centroids = _initial_centroids(sorted_values, prefix, k, init, np.random.default_rng(seed))
  centroids, iterations, converged, squares = _lloyd(
      sorted_values, prefix, lambda: _Prefix(sorted_values, squares=True), centroids, max_iterations)
  return _assign(values, sorted_values, prefix, centroids, iterations, converged, squares)


def _lloyd(sorted_values: np.ndarray, prefix: _Prefix, squares_of: Callable[[], _Prefix], centroids: np.ndarray,
           max_iterations: int) -> tuple[np.ndarray, int, bool, _Prefix | None]:
  """Lloyd over the sorted values until the clusters stop changing: (centroids, iterations, converged, squares).

  `squares_of()` gives prefix sums of squares, built only if a cluster empties.
  """
  bounds, squares, converged, iterations = None, None, False, 0
  while iterations < max_iterations:
    new_bounds = _cluster_bounds(sorted_values, centroids)
    if bounds is not None and np.array_equal(new_bounds, bounds):
      converged = True
      break
    bounds, iterations = new_bounds, iterations + 1
    counts = bounds[1:] - bounds[:-1]
    empty = counts == 0
    sums = prefix[bounds]  # One lookup per bound, shared by two clusters.
    means = (sums[1:] - sums[:-1]) / np.maximum(counts, 1)
    centroids = np.where(empty, centroids, means)
    if empty.any():
      if squares is None:
        squares = squares_of()
      centroids = np.sort(_split_largest(sorted_values, prefix, squares, centroids, bounds, empty))
  return centroids, iterations, converged, squares


HISTOGRAM_MIN = 1 << 22  # Values from which clustering starts on a histogram, not a sort (`_kmeans_on_histogram`).
HISTOGRAM_CELLS = 1 << 20  # Cells of that histogram.
HISTOGRAM_INITS = ("linear", "density")  # The others draw from the sorted values, so they always sort.
_LABEL_BLOCK_BITS = 6  # Cells per block of the labelling pass's table: 2**6, a 64 KB table for 2**20 cells.


def _kmeans_on_histogram(values: np.ndarray, k: int, init: str, max_iterations: int) -> KMeansResult | None:
  """Lloyd on a histogram of the values, finished by exact Lloyd iterations: an exact fixed point, no sort.

  Sorting 16.8M float32 weights costs more than all of Lloyd's iterations
  after it. The grid's cells are contiguous runs of the sorted values, so
  Lloyd first runs on the cells' means, weighted by their counts, until it
  settles; the cells that then hold a threshold are pulled out and sorted (a
  few per cent of the values at most), and exact iterations continue: the count and sum
  below each threshold are those of the cells before it plus the exact part
  of its own cell. `converged` means, as from the sort, that an exact
  iteration changed no assignment. The labels come from the histogram's
  cells too, in the pass that pulls the final thresholds' cells for the
  inertia. None if the values fill k cells or fewer
  (the sort handles few distinct values exactly).
  """
  histogram = _Histogram(values)
  occupied = np.flatnonzero(histogram.counts)
  if occupied.size <= k:
    return None
  counts, sums = histogram.counts[occupied], histogram.sums[occupied]
  number = _running_sums(counts)
  if init == "linear":
    centroids = np.linspace(histogram.low, histogram.high, k)
  else:  # "density": the values at k evenly spaced ranks, each read as its cell's mean.
    ranked = np.searchsorted(number[1:], np.linspace(0, values.size - 1, k), side="right")
    centroids = sums[ranked] / counts[ranked]
  centroids, iterations = _lloyd_on_cells(histogram, counts, sums, number, centroids, max_iterations - 1)
  bounds = None
  while iterations < max_iterations:
    new_bounds, totals = histogram.below(_thresholds(centroids))
    if bounds is not None and np.array_equal(new_bounds, bounds):
      break
    bounds, iterations = new_bounds, iterations + 1
    counts = np.diff(bounds)
    centroids = np.sort(np.where(counts == 0, centroids, np.diff(totals) / np.maximum(counts, 1)))
  labels = histogram.labels(_thresholds(centroids))
  new_bounds, totals = histogram.below(_thresholds(centroids))
  converged = bounds is not None and np.array_equal(new_bounds, bounds)
  members = np.diff(new_bounds)
  if not members.all():  # Centroids left without members are dropped: the labels above each move down one.
    labels = np.take((np.cumsum(members > 0) - 1).astype(np.int32), labels)
  centroids, sums, members = centroids[members > 0], np.diff(totals)[members > 0], members[members > 0]
  inertia = max(_sum_of_squares(values) - float(np.sum(centroids * (2 * sums - members * centroids))), 0.0)
  return KMeansResult(centroids, labels, inertia, iterations, converged)


def _lloyd_on_cells(histogram: _Histogram, counts: np.ndarray, sums: np.ndarray, number: np.ndarray,
                    centroids: np.ndarray, max_iterations: int) -> tuple[np.ndarray, int]:
  """Lloyd over the occupied cells' means (`sums` / `counts`; `number`: running counts): (centroids, iterations).

  The iterations are compiled (`_cell_iterations`: ~5 us each at k = 256
  against ~70 us in numpy, and the linear start runs a thousand); they
  come back here only when a cluster empties, to be split (`_split_largest`).
  The bounds come from the grid, not a binary search over a million means:
  the means below a threshold are those of the occupied cells before its
  cell, and its own cell's if not above it.
  """
  prefix, means = _running_sums(sums), sums / counts
  occupied_through = _running_sums(histogram.counts > 0)[1:]
  bounds, iterations, squares = np.zeros(0, np.int64), 0, None
  while True:
    centroids, bounds, iterations, emptied = _cell_iterations(
        centroids, bounds, iterations, max_iterations, number, prefix, means, occupied_through, histogram.counts,
        *histogram.grid)
    if not emptied:
      return centroids, iterations
    if squares is None:
      squares = sums * sums
      squares = _running_sums(np.divide(squares, counts, out=squares))
    empty = np.diff(number[bounds]) == 0
    centroids = np.sort(_split_largest(means, prefix, squares, centroids, bounds, empty, number))


class _Histogram:
  """The values' counts and float64 sums in HISTOGRAM_CELLS cells of a monotone grid, and exact sums below any x.

  `below` pulls out and sorts the values of the cells its thresholds fall in
  (and of their neighbours, where the next iterations' thresholds will
  likely fall); everything else is read off the cells' prefix sums. Each
  pull is a pass over all the values, so each one reaches twice as far as
  the last: thresholds that creep for hundreds of exact iterations cost a
  few passes, not one every few iterations.

  The passes over all the values (counting and summing, pulling, labelling)
  are compiled loops that recompute each value's cell (`_cell`) instead of
  storing it: a subtraction and a multiplication cost less than reading 8
  bytes a value, and 16.8M cells would take 134 MB.
  """

  _NEIGHBOURS = 8  # Cells pulled out on each side of a threshold's cell, at the first pull.

  def __init__(self, values: np.ndarray):
    self.values = values
    low, high = values.min(), values.max()
    if not (np.isfinite(low) and np.isfinite(high)):
      raise ValueError("k-means input has NaN or Inf values")
    self.low, self.high = float(low), float(high)
    self.grid = _grid_parameters(self.low, self.high, HISTOGRAM_CELLS)
    # Counts as int32 (int64 past 2**31 values): the counts and sums, 12 MB, then stay in cache better.
    self.counts = np.zeros(HISTOGRAM_CELLS, np.int32 if values.size < 2**31 else np.int64)
    self.sums = np.zeros(HISTOGRAM_CELLS)
    _count_and_sum(values, *self.grid, self.counts, self.sums)
    self.number_before, self.sum_before = _running_sums(self.counts), _running_sums(self.sums)
    self.pulled, self.reach = np.zeros(HISTOGRAM_CELLS, bool), self._NEIGHBOURS
    self.pulled_cells, self.pulled_before = np.zeros(0, np.int64), np.zeros(1, np.int64)
    self.exact, self.exact_prefix = np.zeros(0, np.float32), np.zeros(1)

  def _cells(self, thresholds: np.ndarray) -> np.ndarray:
    """The thresholds' cells, by the values' arithmetic (`_cell`)."""
    return _cells_of(thresholds, *self.grid, self.counts.size)

  def _pull(self, cells: np.ndarray) -> None:
    """Adds these cells' values to the sorted values pulled out (one pass over all the values)."""
    near = (cells[:, None] + np.arange(-self.reach, self.reach + 1)).ravel()
    self.reach *= 2
    self.pulled[np.clip(near, 0, self.counts.size - 1)] = True
    self._index_pulled()
    self._keep(_values_in(self.values, *self.grid, self.pulled, self.pulled_before[-1]))

  def _index_pulled(self) -> None:
    """The cells marked in `pulled`, and how many values the ones before each hold (`below` reads both)."""
    self.pulled_cells = np.flatnonzero(self.pulled)
    self.pulled_before = _running_sums(self.counts[self.pulled_cells])

  def _keep(self, pulled_values: np.ndarray) -> None:
    """Sorts the values of the cells marked in `pulled` (all of them) and sums them for `below`."""
    self.exact = np.sort(pulled_values)
    self.exact_prefix = _running_sums(self.exact)

  def labels(self, thresholds: np.ndarray) -> np.ndarray:
    """Each value's count of thresholds below it, in one pass (`_labels_and_inside`); pulls just the thresholds' cells.

    The values in the thresholds' cells are the ones `below` needs at these
    thresholds, so they replace the pulled ones.
    """
    cells = self._cells(thresholds)
    self.pulled[:] = False
    self.pulled[cells] = True
    self._index_pulled()
    labels, inside = np.empty(self.values.size, np.int32), np.empty(self.pulled_before[-1], np.float32)
    _labels_and_inside(self.values, *self.grid, self.counts.size, thresholds, cells, labels, inside)
    self._keep(inside)
    return labels

  def below(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cluster bounds and the sums of the values before each: [0, #(x <= t_1), ..., n] and [0, ..., sum(x)]."""
    cells = self._cells(thresholds)
    if not self.pulled[cells].all():
      self._pull(cells[~self.pulled[cells]])
    ranks = np.searchsorted(self.exact, thresholds, side="right")  # Pulled values <= t: earlier cells', then its own.
    first = self.pulled_before[np.searchsorted(self.pulled_cells, cells)]
    numbers = self.number_before[cells] + (ranks - first)
    totals = self.sum_before[cells] + (self.exact_prefix[ranks] - self.exact_prefix[first])
    return (np.concatenate([[0], numbers, [self.values.size]]),
            np.concatenate([[0.0], totals, [self.sum_before[-1]]]))


def _running_sums(values: np.ndarray) -> np.ndarray:
  """[0, x0, x0 + x1, ...] in int64 (integers, booleans) or float64: numpy's cumsum to the bit, several times faster.

  numpy's cumsum of a million cells and the concatenate take ~6 ms; this
  path needs half a dozen of them per call.
  """
  out = np.empty(values.size + 1, np.float64 if values.dtype.kind == "f" else np.int64)
  _accumulate(values, out)
  return out


@numba.njit(cache=True)
def _accumulate(values: np.ndarray, out: np.ndarray) -> None:
  """out = [0, x0, x0 + x1, ...], added in order as numpy's cumsum adds (x0 itself first, not 0 + x0: -0.0 stays)."""
  out[0] = 0
  if values.size:
    out[1] = values[0]
  for i in range(1, values.size):
    out[i + 1] = out[i] + values[i]


@numba.njit(cache=True)
def _cell(value: np.float32, low: np.float32, scale: np.float32, cells: int) -> int:
  """The histogram cell of a float32: (value - low) * scale in float32, truncated towards zero, clipped to the cells.

  Monotone in the value, and the same for values and thresholds: numpy's
  cast and clip, to the bit. NaN and products past 2**63 (a scale that
  overflows to inf, when all the values lie within ~1e-33) go to cell 0,
  where numpy's cast gives INT64_MIN. A select, not a branch: a third faster.
  """
  x = (value - low) * scale
  return min(max(int(x), 0), cells - 1) if x < 9223372036854775808.0 else 0


@numba.njit(cache=True)
def _cell_iterations(centroids: np.ndarray, bounds: np.ndarray, iterations: int, max_iterations: int,
                     number: np.ndarray, prefix: np.ndarray, means: np.ndarray, occupied_through: np.ndarray,
                     cell_counts: np.ndarray, low: np.float32,
                     scale: np.float32) -> tuple[np.ndarray, np.ndarray, int, bool]:
  """Lloyd iterations over the occupied cells (see `_lloyd_on_cells`): (centroids, bounds, iterations, emptied).

  Runs until the bounds repeat or `max_iterations`, or returns after the
  iteration that left a cluster empty (emptied: True; its centroid kept). The
  float64 operations are `_lloyd`'s, in its order. `bounds` are the last
  iteration's (empty at the start). `occupied_through[c]` counts the
  occupied cells up to c, so an occupied c's mean is `means[that - 1]`.
  """
  k, cells = centroids.size, cell_counts.size
  while iterations < max_iterations:
    thresholds = _compiled_thresholds(centroids)
    new_bounds = np.empty(k + 1, np.int64)
    new_bounds[0], new_bounds[k] = 0, number.size - 1
    for j in range(k - 1):
      cell = _cell(thresholds[j], low, scale, cells)
      through = occupied_through[cell]
      new_bounds[j + 1] = through - (cell_counts[cell] > 0 and means[through - 1] > thresholds[j])
    if bounds.size > 0 and np.array_equal(new_bounds, bounds):
      break
    bounds, iterations, centroids, emptied = new_bounds, iterations + 1, centroids.copy(), False
    for j in range(k):
      count = number[bounds[j + 1]] - number[bounds[j]]
      if count:
        centroids[j] = (prefix[bounds[j + 1]] - prefix[bounds[j]]) / count
      else:
        emptied = True
    if emptied:
      return centroids, bounds, iterations, True
  return centroids, bounds, iterations, False


@numba.njit(cache=True)
def _cells_of(values: np.ndarray, low: np.float32, scale: np.float32, cells: int) -> np.ndarray:
  """`_cell` of each of a few values (thresholds)."""
  out = np.empty(values.size, np.int64)
  for i in range(values.size):
    out[i] = _cell(values[i], low, scale, cells)
  return out


@numba.njit(cache=True)
def _count_and_sum(values: np.ndarray, low: np.float32, scale: np.float32, counts: np.ndarray,
                   sums: np.ndarray) -> None:
  """Adds each value to its cell's count and float64 sum (zeros to start): one pass, in the values' order.

  The sums are bincount's, to the bit; but numpy would take a pass for the
  cells, stored (134 MB for 16.8M values), and two bincounts, the one with
  weights over a float64 copy of the values (134 MB more).
  """
  for value in values:
    cell = _cell(value, low, scale, counts.size)
    counts[cell] += 1
    sums[cell] += value


@numba.njit(cache=True)
def _values_in(values: np.ndarray, low: np.float32, scale: np.float32, marked: np.ndarray, size: int) -> np.ndarray:
  """The `size` values whose cells are marked, in their order: one pass, no mask over all the values."""
  out, filled = np.empty(size, np.float32), 0
  for value in values:
    if marked[_cell(value, low, scale, marked.size)]:
      out[filled] = value
      filled += 1
  return out


@numba.njit(cache=True)
def _labels_and_inside(values: np.ndarray, low: np.float32, scale: np.float32, cells: int, thresholds: np.ndarray,
                       threshold_cells: np.ndarray, labels: np.ndarray, inside: np.ndarray) -> None:
  """Each value's count of (sorted) thresholds below it into `labels`; the values in their cells into `inside`.

  A threshold in an earlier cell is below every value of a cell, one in a
  later cell above it, so a value is compared only with its own cell's. The
  thresholds before a cell are counted from a table over blocks of
  2**_LABEL_BLOCK_BITS cells (small enough to stay in cache, where one over the
  cells would not) and the few in the cell's block before it.
  """
  first = np.zeros(((cells - 1) >> _LABEL_BLOCK_BITS) + 2, np.int32)  # Thresholds in the blocks before each.
  for cell in threshold_cells:
    first[(cell >> _LABEL_BLOCK_BITS) + 1] += 1
  for block in range(first.size - 1):
    first[block + 1] += first[block]
  filled = 0
  for i in range(values.size):
    value = values[i]
    cell = _cell(value, low, scale, cells)
    label, end = first[cell >> _LABEL_BLOCK_BITS], first[(cell >> _LABEL_BLOCK_BITS) + 1]
    while label < end and threshold_cells[label] < cell:
      label += 1
    if label < end and threshold_cells[label] == cell:
      while label < end and threshold_cells[label] == cell and thresholds[label] < value:
        label += 1
      if filled < inside.size:  # The sort path's labels collect nothing (an empty `inside`).
        inside[filled] = value
        filled += 1
    labels[i] = label


_BLOCK = 64  # Values per block of `_Prefix`: one float64 stored per block, the rest summed on demand.
_SQUARES_CHUNK = 1 << 20  # Values squared at a time into float64 (bounded memory).


def _sum_of_squares(values: np.ndarray) -> float:
  """sum(x^2) of float32 values in float64, a fixed-size chunk at a time, each summed pairwise as numpy sums.

  A float32's square is exact in float64, so only the additions round. A
  float64 dot would go through a BLAS that is several times slower, and much
  more so when the cores are busy; numpy's square and sum of each chunk, to
  the bit what `_pairwise_squares` gives, take half as long again.
  """
  return float(sum(_pairwise_squares(values, start, min(_SQUARES_CHUNK, values.size - start))
                   for start in range(0, values.size, _SQUARES_CHUNK)))


@numba.njit(cache=True)
def _pairwise_squares(values: np.ndarray, start: int, n: int) -> float:
  """sum(float64(x)^2) of values[start:start + n] in the order of numpy's pairwise sum (eight accumulators per block
  of at most 128, halves split at a multiple of 8), so the same to the bit, without a float64 copy."""
  if n < 8:
    total = 0.0
    for i in range(start, start + n):
      total += np.float64(values[i]) ** 2
    return total
  if n > 128:
    half = n // 2 - n // 2 % 8
    return _pairwise_squares(values, start, half) + _pairwise_squares(values, start + half, n - half)
  r0, r1 = np.float64(values[start]) ** 2, np.float64(values[start + 1]) ** 2
  r2, r3 = np.float64(values[start + 2]) ** 2, np.float64(values[start + 3]) ** 2
  r4, r5 = np.float64(values[start + 4]) ** 2, np.float64(values[start + 5]) ** 2
  r6, r7 = np.float64(values[start + 6]) ** 2, np.float64(values[start + 7]) ** 2
  stop = start + n - n % 8
  for i in range(start + 8, stop, 8):
    r0, r1 = r0 + np.float64(values[i]) ** 2, r1 + np.float64(values[i + 1]) ** 2
    r2, r3 = r2 + np.float64(values[i + 2]) ** 2, r3 + np.float64(values[i + 3]) ** 2
    r4, r5 = r4 + np.float64(values[i + 4]) ** 2, r5 + np.float64(values[i + 5]) ** 2
    r6, r7 = r6 + np.float64(values[i + 6]) ** 2, r7 + np.float64(values[i + 7]) ** 2
  total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
  for i in range(stop, start + n):
    total += np.float64(values[i]) ** 2
  return total


class _Prefix:
  """S[p] = x_0 + ... + x_{p-1} of the sorted values (or of their squares) in float64, for any p (scalar or array).

  Float32 sums misplace points near cluster boundaries, and a float64 cumsum
  of 16.8M weights takes 0.12 s and 134 MB. So only each block's running sum
  is stored; a query adds the at most 63 values before p in its block. Indexing
  works as on the array [0, x0, x0 + x1, ...] it stands for.
  """

  def __init__(self, sorted_values: np.ndarray, squares: bool = False):
    self.values, self.squares = sorted_values, squares
    full = sorted_values[:sorted_values.size // _BLOCK * _BLOCK]
    if squares:
      sums = np.concatenate([np.square(full[i:i + _SQUARES_CHUNK], dtype=np.float64).reshape(-1, _BLOCK).sum(axis=1)
                             for i in range(0, full.size, _SQUARES_CHUNK)] or [np.zeros(0)])
    else:
      sums = full.reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64)
    self.blocks = np.concatenate([[0.0], np.cumsum(sums)])

  def __getitem__(self, positions: np.ndarray | int) -> np.ndarray:
    positions = np.asarray(positions, np.int64)
    block = positions // _BLOCK
    start = block * _BLOCK
    offsets = np.arange(_BLOCK - 1)
    window = self.values[np.minimum(start[..., None] + offsets, self.values.size - 1)].astype(np.float64)
    if self.squares:
      window *= window
    inside = offsets < (positions - start)[..., None]
    return self.blocks[block] + np.where(inside, window, 0.0).sum(axis=-1)


def _prefix_sums(values: np.ndarray) -> _Prefix:
  """[0, x0, x0 + x1, ...] of sorted values, accumulated in float64 (see `_Prefix`)."""
  return _Prefix(values)


def _assign(values: np.ndarray, sorted_values: np.ndarray, prefix: _Prefix, centroids: np.ndarray,
            iterations: int, converged: bool, squares: _Prefix | None = None) -> KMeansResult:
  """Labels for the final centroids, dropping centroids left without members, and the inertia.

  The inertia is sum(x^2) - sum_j (2 c_j S_j - n_j c_j^2), with each cluster's
  sum S_j read off the prefix sums.
  """
  bounds = _cluster_bounds(sorted_values, centroids)
  counts = np.diff(bounds)
  centroids, bounds, counts = centroids[counts > 0], np.concatenate([[0], bounds[1:][counts > 0]]), counts[counts > 0]
  sums = np.diff(prefix[bounds])
  squares = _Prefix(sorted_values, squares=True) if squares is None else squares
  total = float(squares[sorted_values.size])
  inertia = max(total - float(np.sum(centroids * (2 * sums - counts * centroids))), 0.0)
  labels = _labels(values, float(sorted_values[0]), float(sorted_values[-1]), centroids)
  return KMeansResult(centroids, labels, inertia, iterations, converged)


def _labels(values: np.ndarray, low: float, high: float, centroids: np.ndarray) -> np.ndarray:
  """Each value's cluster: how many thresholds (midpoints, `_thresholds`) lie below it; one compiled pass, O(n).

  Values fall into a uniform grid of cells by a monotone float32 map, and so
  do the thresholds, by the same arithmetic (`_cell`): a value is compared
  only with the few thresholds in its own cell (`_labels_and_inside`, the
  histogram path's pass): exactly what the sorted bounds give, with no sort
  of the values' order.
  """
  if centroids.size == 1:
    return np.zeros(values.size, np.int32)
  cells = min(1 << 20, 64 * centroids.size)
  low, scale = _grid_parameters(low, high, cells)
  thresholds = _thresholds(centroids)
  labels = np.empty(values.size, np.int32)
  _labels_and_inside(values, low, scale, cells, thresholds, _cells_of(thresholds, low, scale, cells), labels,
                     np.empty(0, np.float32))
  return labels


def _grid_parameters(low: float, high: float, cells: int) -> tuple[np.float32, np.float32]:
  """The float32 offset and scale that map [low, high] onto cells 0..cells - 1."""
  return np.float32(low), np.float32((cells - 1) / max(high - low, np.finfo(np.float32).tiny))


