"""The paper's Fig. 9 on this CPU: batch-1 latency of pruned fully connected layers, sparse against dense.

  python bench/sparse_fc.py [--repeats 30] [--sweep_repeats 15] [--threads N]

Each layer's kernel is random, pruned at random to the stated fraction kept.
Contenders, run in turn (bench/common.py): the dense jitted `x @ W` (XLA: every
core); scipy's CSR and CSC matrix-vector products called directly (one core;
CSC of W.T is stored by the kernel's rows); ours (`dc_jax.sparse_kernels`:
blocks of 4096 inputs, uint16 input indices) with x loaded one kept weight
at a time (eight partial sums per output) and with AVX-512 gathers of
sixteen (`dc_jax.gathers`, where the CPU has them) on one thread, and on
--threads; ours through `jax.pure_callback` inside jit (`inference.sparse_matmul`,
what the `sparse` form runs, on --threads); and `jax.experimental.sparse` BCSR
and BCOO under jit. Then a sweep of the kept fraction on a 4096x4096 layer
finds the crossover density, where our product (on --threads) stops being
faster than dense.
"""

import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.experimental import sparse as jsparse

sys.path.insert(0, str(Path(__file__).parents[1]))
from bench.common import interleaved_medians  # noqa: E402
import scipy.sparse  # noqa: E402
from dc_jax import gathers, inference, sparse_kernels  # noqa: E402

_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed calls per contender and layer.")
_SWEEP_REPEATS = flags.DEFINE_integer("sweep_repeats", 15, "Timed calls per density of the sweep.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kernels and inputs.")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count() or 1, "Threads of our product (ours par, ours/jit).")

# (name, inputs, outputs, kept): LeNet-300-100's ip1 (paper Table 1), the paper's Fig. 9 shapes (AlexNet fc6,
# fc7 at 9% kept), and VGG19's classifier as this repository's CIFAR VGG19 has it (512->4096->4096->10) at ~3%.
LAYERS = (
    ("lenet300100 ip1", 784, 300, 0.07),
    ("fig9 4096x9216", 9216, 4096, 0.09),
    ("fig9 4096x4096", 4096, 4096, 0.09),
    ("vgg19 fc1", 512, 4096, 0.03),
    ("vgg19 fc2", 4096, 4096, 0.03),
    ("vgg19 fc3", 4096, 10, 0.03),
)
SWEEP = (0.01, 0.03, 0.05, 0.09, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def pruned_kernel(inputs: int, outputs: int, kept: float, rng: np.random.Generator) -> np.ndarray:
  weights = rng.standard_normal((inputs, outputs), np.float32)
  return np.where(rng.random((inputs, outputs), np.float32) < kept, weights, np.float32(0))


def contenders(kernel: np.ndarray, x: np.ndarray, everything: bool = True) -> dict:
  """Zero-argument calls computing `x @ kernel`, checked against each other before they are timed."""
  by_output = scipy.sparse.csr_array(np.ascontiguousarray(kernel.T))
  by_input = scipy.sparse.csr_array(kernel).T  # CSC of W.T, without a copy.
  rows = sparse_kernels.output_rows(kernel)
  dense_kernel, x_device = jnp.asarray(kernel), jnp.asarray(x)
  dense = jax.jit(lambda x, w: x @ w)
  calls = {"dense (jit x @ W)": lambda: dense(x_device, dense_kernel),
           "scipy CSR": lambda: by_output @ x[0],
           "scipy CSC (of W.T: W's rows)": lambda: by_input @ x[0],
           "ours, no gathers, one thread": lambda: sparse_kernels.matmul(x, rows, 1, vector_gathers=False),
           "ours, one thread": lambda: sparse_kernels.matmul(x, rows, 1),
           f"ours, {_THREADS.value} threads": lambda: sparse_kernels.matmul(x, rows, _THREADS.value)}
  if everything:
    callback = jax.jit(lambda x: inference.sparse_matmul(x, rows, _THREADS.value))  # What the `sparse` form runs.
    bcsr, bcoo = jsparse.BCSR.fromdense(jnp.asarray(kernel.T)), jsparse.BCOO.fromdense(jnp.asarray(kernel.T))
    product = jax.jit(lambda m, x: m @ x[0])
    calls |= {"ours via pure_callback": lambda: callback(x_device),
              "jax.experimental.sparse BCSR": lambda: product(bcsr, x_device),
              "jax.experimental.sparse BCOO": lambda: product(bcoo, x_device)}
  expected = np.asarray(calls["dense (jit x @ W)"]())
  for name, call in calls.items():
    np.testing.assert_allclose(np.asarray(call()).reshape(expected.shape), expected, rtol=1e-4, atol=1e-3,
                               err_msg=name)
  return calls


def main(argv):
  del argv
  rng = np.random.default_rng(_SEED.value)
  print(f"batch 1, float32, median of {_REPEATS.value} calls each (ms); speed-up = dense / scipy CSC, ours without "
        f"gathers on one thread, ours on one thread, ours on {_THREADS.value} threads, ours through jit "
        f"({_THREADS.value} threads); gathers: {gathers.available()}")
  print(f"{'layer':<17}{'in x out':>12}{'kept':>6}  " + "".join(f"{h:>9}" for h in
        ("dense", "CSR", "CSC", "loads 1", "ours 1", "ours par", "ours/jit", "BCSR", "BCOO", "x CSC", "x loads1",
         "x ours1", "x par", "x jit")))
  for name, inputs, outputs, kept in LAYERS:
    kernel = pruned_kernel(inputs, outputs, kept, rng)
    x = rng.standard_normal((1, inputs), np.float32)
    times = [1e3 * t for t in interleaved_medians(contenders(kernel, x), _REPEATS.value).values()]
    dense_ms, _, csc_ms, loads_ms, one_ms, par_ms, jit_ms = times[:7]
    print(f"{name:<17}{f'{inputs}x{outputs}':>12}{kept:>6.0%}  " + "".join(f"{t:>9.3f}" for t in times)
          + "".join(f"{dense_ms / t:>8.2f}x" for t in (csc_ms, loads_ms, one_ms, par_ms, jit_ms)), flush=True)
  print(f"\ncrossover sweep, 4096x4096, batch 1, median of {_SWEEP_REPEATS.value} (ms)")
  print(f"{'kept':>6}{'dense':>10}{'CSC':>10}{'loads 1':>10}{'ours 1':>10}{'ours par':>10}{'x CSC':>9}{'x loads1':>9}"
        f"{'x ours1':>9}{'x par':>9}")
  crossover = None
  for kept in SWEEP:
    kernel = pruned_kernel(4096, 4096, kept, rng)
    x = rng.standard_normal((1, 4096), np.float32)
    dense_s, _, csc_s, loads_s, one_s, par_s = interleaved_medians(contenders(kernel, x, everything=False),
                                                          _SWEEP_REPEATS.value).values()
    if crossover is None and par_s >= dense_s:
      crossover = kept
    print(f"{kept:>6.0%}" + "".join(f"{1e3 * t:>10.3f}" for t in (dense_s, csc_s, loads_s, one_s, par_s))
          + "".join(f"{dense_s / t:>8.2f}x" for t in (csc_s, loads_s, one_s, par_s)), flush=True)
  print(f"sparse stops paying at {crossover:.0%} kept" if crossover else "sparse pays at every density swept")


if __name__ == "__main__":
  app.run(main)
