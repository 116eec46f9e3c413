"""Exact 1-D k-means: every initialisation, scikit-learn's inertia from the same start, labels, empty clusters."""

import chex
import numpy as np
import pytest
from sklearn.cluster import KMeans

from dc_jax import kmeans


def _pruned_like(n: int, seed: int = 0) -> np.ndarray:
  """Normal weights with the middle cut out, as magnitude pruning leaves them (two lobes, a gap at 0)."""
  w = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 0.05
  return w[np.abs(w) > 0.05]


@pytest.mark.parametrize("init", kmeans.INITS)
def test_each_initialisation_gives_sorted_distinct_centroids_within_the_range(init):
  values = np.sort(_pruned_like(20_000)).astype(np.float64)
  prefix = np.concatenate([[0.0], np.cumsum(values)])
  centroids = kmeans._initial_centroids(values, prefix, 32, init, np.random.default_rng(1))
  chex.assert_shape(centroids, (32,))
  assert np.all(np.diff(centroids) > 0)
  assert centroids[0] >= values[0] and centroids[-1] <= values[-1]


@pytest.mark.parametrize("init", kmeans.INITS)
def test_kmeans_reaches_scikit_learns_inertia_from_the_same_initial_centroids(init):
  values = np.random.default_rng(0).standard_normal(30_000).astype(np.float32)
  sorted_values = np.sort(values).astype(np.float64)
  prefix = np.concatenate([[0.0], np.cumsum(sorted_values)])
  start = kmeans._initial_centroids(sorted_values, prefix, 16, init, np.random.default_rng(0))
  reference = KMeans(16, init=start.reshape(-1, 1), n_init=1, algorithm="lloyd", tol=0.0,
                     max_iter=1000).fit(values.reshape(-1, 1))
  ours = kmeans.kmeans_1d(values, 16, init, seed=0)
  assert ours.converged
  assert ours.inertia == pytest.approx(reference.inertia_, rel=1e-3)
  np.testing.assert_allclose(ours.centroids, np.sort(reference.cluster_centers_.ravel()), atol=1e-4)


def test_labels_are_the_nearest_centroid_and_the_inertia_is_their_squared_error():
  values = np.concatenate([_pruned_like(5_000), np.float32([0.5, -0.5, 0.5])])
  result = kmeans.kmeans_1d(values, 13, "kmeans++", seed=3)
  distances = np.abs(values[:, None].astype(np.float64) - result.centroids[None, :])
  np.testing.assert_array_equal(distances[np.arange(values.size), result.labels], distances.min(axis=1))
  errors = np.square(values - result.centroids[result.labels])
  assert result.inertia == pytest.approx(errors.sum(), rel=1e-9)


def test_linear_initialisation_puts_every_centroid_to_use_despite_the_pruning_gap():
  values = _pruned_like(50_000)
  start = np.linspace(values.min(), values.max(), 64)
  assert np.sum((start > -0.05) & (start < 0.05)) > 10  # Many start in the gap, with no weight near them.
  result = kmeans.kmeans_1d(values, 64, "linear")
  assert result.centroids.size == 64
  assert np.bincount(result.labels, minlength=64).min() > 0


@pytest.mark.parametrize("k", [16, 32, 64])
def test_kmeans_on_two_lobe_pruned_weights_with_empty_clusters_matches_scikit_learn_from_the_same_start(k):
  """The case real runs hit: linear centroids start in the pruning gap with no weight near them (empty clusters).

  scikit-learn moves an empty cluster to the point farthest from its centre, we split the cluster of largest
  error, so the two may end in different local optima: measured within 4.1% of each other's inertia (k = 32).
  """
  values = _pruned_like(60_000)
  start = np.linspace(values.min(), values.max(), k)
  nearest = np.abs(values[:, None] - start[None, :]).argmin(axis=1)
  assert np.sum(np.bincount(nearest, minlength=k) == 0) >= 2  # Empty from the start.
  reference = KMeans(k, init=start.reshape(-1, 1), n_init=1, algorithm="lloyd", tol=0.0,
                     max_iter=1000).fit(values.reshape(-1, 1).astype(np.float64))
  ours = kmeans.kmeans_1d(values, k, "linear")
  assert ours.converged and ours.centroids.size == k
  assert np.bincount(ours.labels, minlength=k).min() > 0  # Every code in use, as in scikit-learn's result.
  assert np.bincount(reference.labels_, minlength=k).min() > 0
  assert ours.inertia <= 1.05 * reference.inertia_
  assert ours.inertia >= 0.95 * reference.inertia_
  errors = np.square(values.astype(np.float64) - ours.centroids[ours.labels])
  assert ours.inertia == pytest.approx(errors.sum(), rel=1e-9)


def test_fewer_distinct_values_than_k_gives_one_exact_centroid_each():
  values = np.float32([0.25, -1.0, 0.25, 3.0, -1.0])
  result = kmeans.kmeans_1d(values, 13)
  np.testing.assert_array_equal(result.centroids, [-1.0, 0.25, 3.0])
  np.testing.assert_array_equal(result.labels, [1, 0, 1, 2, 0])
  assert result.inertia == 0.0


@pytest.mark.parametrize("n", [1, 63, 64, 1000, 4099])
def test_block_prefix_sums_match_a_float64_cumsum_at_every_position(n):
  values = np.sort(np.random.default_rng(n).standard_normal(n).astype(np.float32))
  positions = np.arange(n + 1)
  for squares in (False, True):
    exact = np.concatenate([[0.0], np.cumsum(values.astype(np.float64) ** (2 if squares else 1))])
    prefix = kmeans._Prefix(values, squares=squares)
    np.testing.assert_allclose(prefix[positions], exact, rtol=1e-12, atol=1e-9)
    assert float(prefix[n]) == pytest.approx(exact[-1], rel=1e-12, abs=1e-9)  # A scalar position too.


def test_labels_count_the_thresholds_below_each_value_even_for_values_on_a_threshold():
  """Crowded thresholds (several in one grid cell) and values exactly on midpoints: as searchsorted gives them."""
  rng = np.random.default_rng(0)
  centroids = np.sort(np.concatenate([rng.standard_normal(40), 1e-6 * np.arange(8)])).astype(np.float64)
  thresholds = kmeans._thresholds(centroids)
  values = np.concatenate([rng.standard_normal(20_000).astype(np.float32), thresholds,
                           np.nextafter(thresholds, np.float32(np.inf))])
  labels = kmeans._labels(values, float(values.min()), float(values.max()), centroids)
  np.testing.assert_array_equal(labels, np.searchsorted(thresholds, values, side="left"))


@pytest.fixture
def small_histogram(monkeypatch):
  """The histogram path on inputs small enough for a test: from 1,000 values on, with 4,096 cells."""
  monkeypatch.setattr(kmeans, "HISTOGRAM_MIN", 1_000)
  monkeypatch.setattr(kmeans, "HISTOGRAM_CELLS", 4_096)


def _sorted_path(values: np.ndarray, k: int, init: str = "linear", max_iterations: int = 1000) -> kmeans.KMeansResult:
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(kmeans, "HISTOGRAM_MIN", 1 << 62)
    return kmeans.kmeans_1d(values, k, init, max_iterations)


@pytest.mark.parametrize("init", kmeans.HISTOGRAM_INITS)
@pytest.mark.parametrize("k", [16, 64])
def test_the_histogram_path_ends_at_an_exact_lloyd_fixed_point(small_histogram, init, k):
  """Converged means what it means after the sort: every value at its nearest centroid, each centroid its mean."""
  values = np.concatenate([_pruned_like(120_000, seed=k), np.float32([0.3, 0.3, -0.3])])
  result = kmeans.kmeans_1d(values, k, init)
  assert result.converged and result.centroids.size == k
  distances = np.abs(values[:, None].astype(np.float64) - result.centroids[None, :])
  np.testing.assert_array_equal(distances[np.arange(values.size), result.labels], distances.min(axis=1))
  members = np.bincount(result.labels, minlength=k)
  means = np.bincount(result.labels, weights=values.astype(np.float64), minlength=k) / members
  np.testing.assert_allclose(result.centroids, means, rtol=1e-12)
  errors = np.square(values - result.centroids[result.labels])
  assert result.inertia == pytest.approx(errors.sum(), rel=1e-9)
  assert result.inertia <= 1.01 * _sorted_path(values, k, init).inertia  # Another path, as good a fixed point.


def test_the_histogram_path_is_exact_when_thresholds_keep_leaving_the_pulled_cells(small_histogram, monkeypatch):
  """Few, wide cells: the cell phase lands far from the exact fixed point and the exact phase pulls cells again."""
  monkeypatch.setattr(kmeans, "HISTOGRAM_CELLS", 64)
  values = np.random.default_rng(5).standard_normal(50_000).astype(np.float32)
  result = kmeans.kmeans_1d(values, 24)
  assert result.converged
  members = np.bincount(result.labels, minlength=24)
  means = np.bincount(result.labels, weights=values.astype(np.float64), minlength=24) / members
  np.testing.assert_allclose(result.centroids, means, rtol=1e-12)
  np.testing.assert_array_equal(result.labels, np.searchsorted(kmeans._thresholds(result.centroids), values))


def test_the_histogram_path_stops_at_the_iteration_cap_with_a_consistent_result(small_histogram):
  values = np.random.default_rng(6).standard_normal(80_000).astype(np.float32)
  result = kmeans.kmeans_1d(values, 64, max_iterations=3)
  assert result.iterations == 3 and not result.converged
  errors = np.square(values - result.centroids[result.labels])
  assert result.inertia == pytest.approx(errors.sum(), rel=1e-9)
  assert result.inertia < _sorted_path(values, 64, max_iterations=1).inertia


def test_the_histogram_paths_labels_index_the_centroids_left_after_empty_ones_are_dropped(small_histogram):
  values = np.random.default_rng(0).standard_normal(20_000).astype(np.float32)
  result = kmeans.kmeans_1d(values, 32, max_iterations=1)  # One linear centroid in a tail is left empty.
  assert result.centroids.size == 31
  np.testing.assert_array_equal(result.labels, np.searchsorted(kmeans._thresholds(result.centroids), values))
  errors = np.square(values - result.centroids[result.labels])
  assert result.inertia == pytest.approx(errors.sum(), rel=1e-9)


def test_starts_drawn_from_the_values_and_few_occupied_cells_take_the_sort(small_histogram):
  values = _pruned_like(40_000, seed=3)
  for init in ("random", "kmeans++"):
    ours, sorted_ = kmeans.kmeans_1d(values, 13, init, seed=2), None
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(kmeans, "HISTOGRAM_MIN", 1 << 62)
      sorted_ = kmeans.kmeans_1d(values, 13, init, seed=2)
    np.testing.assert_array_equal(ours.centroids, sorted_.centroids)
  few = np.repeat(np.float32([-1.0, 0.0, 2.0, 2.5]), 1_000)
  result = kmeans.kmeans_1d(few, 13)
  np.testing.assert_array_equal(result.centroids, [-1.0, 0.0, 2.0, 2.5])
  assert result.inertia == 0.0


def test_the_histogram_path_rejects_nan(small_histogram):
  values = np.random.default_rng(7).standard_normal(5_000).astype(np.float32)
  values[17] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    kmeans.kmeans_1d(values, 8)


def test_small_inputs_get_the_labels_of_a_binary_search():
  rng = np.random.default_rng(3)
  values = np.concatenate([rng.standard_normal(3000), [0.0, 0.0, 1e-8]]).astype(np.float32)
  result = kmeans.kmeans_1d(values, 13)
  searched = np.searchsorted(kmeans._thresholds(result.centroids), values, side="left")
  np.testing.assert_array_equal(result.labels, searched)
  assert len(np.unique(result.labels)) == 13
