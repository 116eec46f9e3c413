"""Centroid gradients (Han et al. 2016, Eq. 3) of one big shared layer: share.lookup's VJP vs the original's loop.

  python bench/centroid_grad.py [--size 4096] [--k 13] [--kept 0.08] [--repeats 5]

The PyTorch original computes a centroid's gradient with a Python loop over the
layer's distinct weight values: for each value, the sum of dW where the
weight equals it. It runs here in PyTorch (CPU) when torch is installed, and
reimplemented in numpy (the same passes over the tensor, on the same CPU),
twice: finding the values with np.unique as it does, and with the codebook
handed over (its loop alone). Ours is the jitted VJP of `share.lookup`, as
fine-tuning runs it: a gather of the kept weights' gradients and one
segment_sum over their indices (positions and indices are fixed while
fine-tuning, so `share.split` computes them once); and, for comparison, the
same VJP without them (a pass over the whole layer).
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

try:
  import torch
except ImportError:  # Optional: pip install torch --index-url https://download.pytorch.org/whl/cpu
  torch = None

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


def torch_loop_over_unique_values(weight: "torch.Tensor", weight_grad: "torch.Tensor") -> np.ndarray:
  """The original's loop in PyTorch."""
  values = torch.unique(weight)
  return torch.stack([weight_grad[weight == value].sum() for value in values if value != 0]).numpy()


def loop_over_codebook(weight: np.ndarray, weight_grad: np.ndarray, codebook: np.ndarray) -> np.ndarray:
  """The same loop, given the values: no np.unique pass."""
  return np.array([weight_grad[weight == value].sum() for value in codebook], np.float32)


@jax.jit
def centroid_grads(codebook: jax.Array, indices: jax.Array, mask: jax.Array, weight_grad: jax.Array,
                   kept: share.KeptWeights | None = None) -> jax.Array:
  _, vjp = jax.vjp(lambda c: share.lookup(c, indices, mask, "sum", kept), codebook)
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
  kept = share.kept_weights(indices, mask)

  ours = "share.lookup VJP, kept weights"
  contenders = {
      ours: lambda: centroid_grads(*on_device, kept),
      "share.lookup VJP, whole layer": lambda: centroid_grads(*on_device),
      "numpy loop + np.unique": lambda: loop_over_unique_values(weight, weight_grad),
      "numpy loop over codebook": lambda: loop_over_codebook(weight, weight_grad, codebook),
  }
  if torch is not None:
    torch_weight, torch_grad = torch.from_numpy(weight), torch.from_numpy(weight_grad)
    contenders["torch loop + unique"] = lambda: torch_loop_over_unique_values(torch_weight, torch_grad)
  expected = np.asarray(centroid_grads(*on_device, kept))
  for name, fn in contenders.items():
    np.testing.assert_allclose(np.asarray(fn()), expected, rtol=1e-3, atol=1e-2, err_msg=name)
  medians = interleaved_medians(contenders, _REPEATS.value)
  threads = f", torch {torch.__version__} on {torch.get_num_threads()} threads" if torch is not None else ""
  print(f"backend={jax.default_backend()} layer {n}x{n}, k={k}, {1 - mask.mean():.1%} zeros{threads}; results agree")
  print_table("centroid gradient, median per call:", medians, ours)
  for name in list(contenders)[1:]:
    print(f"  speed-up of ours over {name}: {medians[name] / medians[ours]:.1f}x")


if __name__ == "__main__":
  app.run(main)
