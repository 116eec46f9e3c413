"""Centroid gradients (Han et al. 2016, Eq. 3) of one big shared layer: share.lookup's VJP vs the original's loop.

  python bench/centroid_grad.py [--size 4096] [--k 13] [--kept 0.08] [--repeats 5]

The PyTorch original computes a centroid's gradient with a Python loop over the
layer's distinct weight values: for each value, the sum of dW where the
weight equals it. Reimplemented here in numpy (the same passes over the
tensor, on the same CPU), twice: finding the values with np.unique as it
does, and with the codebook handed over (its loop alone). Ours is the jitted
VJP of `share.lookup`: one segment_sum over the indices.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).parents[1]))
from bench.common import interleaved_medians, print_table  # noqa: E402
from dc_jax import share  # noqa: E402

_SIZE = flags.DEFINE_integer("size", 4096, "The layer is size x size.")
_K = flags.DEFINE_integer("k", 13, "Clusters.")
_KEPT = flags.DEFINE_float("kept", 0.08, "Fraction of weights that survive pruning (the rest are 0).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds after the warm-up one.")


def loop_over_unique_values(weight: np.ndarray, weight_grad: np.ndarray) -> np.ndarray:
  """The original's approach: one masked sum of dW per distinct nonzero weight value."""
  values = np.unique(weight)
  return np.array([weight_grad[weight == value].sum() for value in values if value != 0], np.float32)


def loop_over_codebook(weight: np.ndarray, weight_grad: np.ndarray, codebook: np.ndarray) -> np.ndarray:
  """The same loop, given the values: no np.unique pass."""
  return np.array([weight_grad[weight == value].sum() for value in codebook], np.float32)


@jax.jit
def centroid_grads(codebook: jax.Array, indices: jax.Array, mask: jax.Array, weight_grad: jax.Array) -> jax.Array:
  _, vjp = jax.vjp(lambda c: share.lookup(c, indices, mask), codebook)
  return vjp(weight_grad)[0]


def main(argv):
  del argv
  n, k = _SIZE.value, _K.value
  rng = np.random.default_rng(0)
  codebook = np.sort(rng.uniform(-0.1, 0.1, k)).astype(np.float32)
  codebook = codebook[codebook != 0]
  mask = rng.random((n, n)) < _KEPT.value
  indices = np.where(mask, rng.integers(0, k, (n, n)), 0).astype(share.index_dtype(k))
  weight = np.where(mask, codebook[indices], 0).astype(np.float32)
  weight_grad = rng.standard_normal((n, n)).astype(np.float32)
  on_device = [jnp.asarray(a) for a in (codebook, indices, mask, weight_grad)]

  ours = np.asarray(centroid_grads(*on_device))
  np.testing.assert_allclose(loop_over_unique_values(weight, weight_grad), ours, rtol=1e-3, atol=1e-2)
  np.testing.assert_allclose(loop_over_codebook(weight, weight_grad, codebook), ours, rtol=1e-3, atol=1e-2)
  medians = interleaved_medians({
      "share.lookup VJP (jit)": lambda: centroid_grads(*on_device),
      "numpy loop + np.unique": lambda: loop_over_unique_values(weight, weight_grad),
      "numpy loop over codebook": lambda: loop_over_codebook(weight, weight_grad, codebook),
  }, _REPEATS.value)
  print(f"backend={jax.default_backend()} layer {n}x{n}, k={k}, {1 - mask.mean():.1%} zeros; results agree")
  print_table("centroid gradient, median per call:", medians, "share.lookup VJP (jit)")
  for name in ("numpy loop + np.unique", "numpy loop over codebook"):
    print(f"  speed-up of ours over {name}: {medians[name] / medians['share.lookup VJP (jit)']:.1f}x")


if __name__ == "__main__":
  app.run(main)
