"""Our 1-D k-means against scikit-learn's KMeans on a VGG19-classifier-sized kernel, side by side.

  python bench/kmeans.py            # 4096 x 4096 = 16.8M weights, k = 256 and 32 (sklearn: minutes)
  python bench/kmeans.py --n 1000000

Both start from the same linear initial centroids (the paper's default);
scikit-learn runs Lloyd with n_init=1 and its default tolerance; ours runs to
convergence (assignments unchanged, at most 1000 iterations), then again for
only as many iterations as scikit-learn ran. Speedups are scikit-learn's time
over ours; inertia ratios below 1 mean ours clusters better. Two kinds of
weights: dense (normal), and the same kernel magnitude-pruned to 7.5%, whose
gap around zero leaves linear centroids empty at the start.
"""

import argparse
import time

import numpy as np
from sklearn.cluster import KMeans

from dc_jax import kmeans


def _time(fn):
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def compare(name: str, values: np.ndarray, k: int) -> None:
  start = np.linspace(values.min(), values.max(), k).reshape(-1, 1)
  theirs, theirs_s = _time(lambda: KMeans(k, init=start, n_init=1, algorithm="lloyd").fit(values.reshape(-1, 1)))
  rows = [("sklearn", theirs_s, theirs.n_iter_, theirs.inertia_)]
  for cap in (1000, theirs.n_iter_):  # Converged, then as many iterations as scikit-learn ran.
    ours, ours_s = _time(lambda: kmeans.kmeans_1d(values, k, "linear", max_iterations=cap))
    rows.append(("dc_jax", ours_s, ours.iterations, ours.inertia))
  for who, seconds, iterations, inertia in rows:
    print(f"{name:<8}{values.size:>12,}{k:>5}  {who:<8}{seconds:>9.2f}s{iterations:>7}{inertia:>14.6g}"
          f"{theirs_s / seconds:>10.1f}x{inertia / theirs.inertia_:>10.4f}", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=4096 * 4096, help="weights in the kernel")
  parser.add_argument("--k", type=int, nargs="+", default=[256, 32], help="clusters")
  args = parser.parse_args()
  dense = (np.random.default_rng(0).standard_normal(args.n) * 0.01).astype(np.float32)
  pruned = dense[np.abs(dense) >= np.quantile(np.abs(dense), 1 - 0.075)]
  kmeans.kmeans_1d(dense[:kmeans.HISTOGRAM_MIN], 2, max_iterations=2)  # Compiles numba's loops before any timing.
  print(f"{'weights':<8}{'n':>12}{'k':>5}  {'who':<8}{'time':>10}{'iters':>7}{'inertia':>14}"
        f"{'speedup':>11}{'inertia':>10}")
  print(f"{'':<65}{'/sklearn':>10}")
  for values, name in ((dense, "dense"), (pruned, "pruned")):
    for k in args.k:
      compare(name, values, k)


if __name__ == "__main__":
  main()
