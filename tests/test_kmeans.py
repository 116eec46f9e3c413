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
  labels = kmeans._labels(values, np.sort(values), centroids)
  np.testing.assert_array_equal(labels, np.searchsorted(thresholds, values, side="left"))


def test_small_inputs_get_the_labels_of_the_jitted_grid(monkeypatch):
  rng = np.random.default_rng(3)
  values = np.concatenate([rng.standard_normal(3000), [0.0, 0.0, 1e-8]]).astype(np.float32)
  result = kmeans.kmeans_1d(values, 13)  # 3003 values: numpy's binary search.
  monkeypatch.setattr(kmeans, "SMALL", 0)
  jitted = kmeans._labels(values, np.sort(values), result.centroids)
  np.testing.assert_array_equal(result.labels, jitted)
  assert len(np.unique(jitted)) == 13
