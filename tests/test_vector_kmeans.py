"""Masked vector k-means: a Lloyd fixed point over kept coordinates, and its initialisations."""

import numpy as np
import pytest

from dc_jax import vector_kmeans
from dc_jax.errors import ConfigError


def _masked_vectors(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """n vectors of d weights, about 40% kept, every vector with at least one kept weight."""
  rng = np.random.default_rng(seed)
  mask = rng.random((n, d)) < 0.4
  mask[np.arange(n), rng.integers(0, d, n)] = True
  return np.where(mask, rng.normal(size=(n, d)), 0.0).astype(np.float32), mask


@pytest.mark.parametrize("init", vector_kmeans.INITS)
@pytest.mark.parametrize("n, d, k", [(3000, 2, 16), (9000, 4, 32), (700, 8, 64)])  # 9000 > CHUNK: two chunks.
def test_converged_result_is_a_masked_lloyd_fixed_point(init, n, d, k):
  vectors, mask = _masked_vectors(n, d)
  result = vector_kmeans.kmeans(vectors, mask, k, init, max_iterations=500, seed=1)
  assert result.converged and result.centroids.shape == (k, d)
  distances = np.stack([vector_kmeans.masked_distances(vectors, mask, c) for c in result.centroids], axis=1)
  mine = distances[np.arange(n), result.labels]
  np.testing.assert_array_less(mine, distances.min(axis=1) + 1e-5)  # Each vector nearest its centroid.
  for c in range(k):
    members = result.labels == c
    counts = mask[members].sum(axis=0)
    means = (vectors[members] * mask[members]).sum(axis=0, dtype=np.float64) / np.maximum(counts, 1)
    np.testing.assert_allclose(result.centroids[c][counts > 0], means[counts > 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(result.inertia, mine.sum(), rtol=1e-4)


def test_fewer_distinct_vectors_than_k_give_one_centroid_each_and_zero_inertia():
  base = np.array([[1.0, 2.0], [-1.0, 0.5], [0.25, -3.0]], np.float32)
  vectors = np.repeat(base, 50, axis=0)
  result = vector_kmeans.kmeans(vectors, np.ones_like(vectors, bool), 8)
  assert result.centroids.shape == (3, 2) and result.inertia == 0.0
  np.testing.assert_array_equal(result.centroids[result.labels], vectors)


def test_the_same_seed_gives_the_same_clusters_and_another_seed_may_not():
  vectors, mask = _masked_vectors(2000, 4)
  a, b = (vector_kmeans.kmeans(vectors, mask, 16, seed=3) for _ in range(2))
  np.testing.assert_array_equal(a.centroids, b.centroids)
  np.testing.assert_array_equal(a.labels, b.labels)
  assert not np.array_equal(vector_kmeans.kmeans(vectors, mask, 16, seed=4).centroids, a.centroids)


def test_a_1d_initialisation_is_a_config_error():
  with pytest.raises(ConfigError, match="share.init='linear' with vectors; valid: kmeans\\+\\+, random"):
    vector_kmeans.kmeans(np.zeros((4, 2), np.float32), np.ones((4, 2), bool), 2, "linear")
