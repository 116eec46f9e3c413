"""Our 1-D k-means against scikit-learn's KMeans on a VGG19-classifier-sized kernel, side by side.

  python bench/kmeans.py            # 4096 x 4096 = 16.8M weights, k = 256 and 32 (sklearn: minutes)
  python bench/kmeans.py --n 1000000

Both start from the same linear initial centroids (the paper's default);
scikit-learn runs Lloyd with n_init=1 and its default tolerance. Two kinds of
weights: dense (normal), and the same kernel magnitude-pruned to 7.5%, whose
gap around zero leaves linear centroids empty at the start.
"""

import argparse
import time

import numpy as np
from sklearn.cluster import KMeans

from dc_jax import share


def _time(fn):
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def compare(name: str, values: np.ndarray, k: int) -> None:
  ours, ours_s = _time(lambda: share.kmeans_1d(values, k, "linear"))
  start = np.linspace(values.min(), values.max(), k).reshape(-1, 1)
  theirs, theirs_s = _time(lambda: KMeans(k, init=start, n_init=1, algorithm="lloyd").fit(values.reshape(-1, 1)))
  print(f"{name:<8}{values.size:>12,}{k:>5}{ours_s:>10.2f}s{ours.iterations:>7}{ours.inertia:>14.6g}"
        f"{theirs_s:>10.2f}s{theirs.n_iter_:>7}{theirs.inertia_:>14.6g}{theirs_s / ours_s:>9.1f}x"
        f"{ours.inertia / theirs.inertia_:>10.4f}", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=4096 * 4096, help="weights in the kernel")
  parser.add_argument("--k", type=int, nargs="+", default=[256, 32], help="clusters")
  args = parser.parse_args()
  dense = (np.random.default_rng(0).standard_normal(args.n) * 0.01).astype(np.float32)
  pruned = dense[np.abs(dense) >= np.quantile(np.abs(dense), 1 - 0.075)]
  print(f"{'weights':<8}{'n':>12}{'k':>5}{'ours':>11}{'iters':>7}{'inertia':>14}"
        f"{'sklearn':>11}{'iters':>7}{'inertia':>14}{'speedup':>10}{'inertia':>10}")
  print(f"{'':<93}{'ours/sk':>10}")
  for values, name in ((dense, "dense"), (pruned, "pruned")):
    for k in args.k:
      compare(name, values, k)


if __name__ == "__main__":
  main()
