"""Pruned fully connected kernels stored output by output, and their products with x, compiled.

What the `sparse` inference form multiplies with (the paper's Fig. 9: batch-1
sparse matrix-vector products). scipy's CSR and CSC store each kept weight
as a float32 and an int32 index (8 B); here the input indices are uint16
wherever the kernel has at most 65,536 inputs (6 B a weight, 25% less host
memory), and each output's sum runs on eight accumulators instead of one
chain of dependent additions (2.5 against 3.2 ms on 4096x9216 at 9% kept).
On the quiet 2-core machine one thread matches scipy's CSC product and
beats its CSR one, 2.3-3.1x faster than the dense XLA product at 9% kept;
a second thread pays only on a second physical core (there, two busy threads
ran at 1.05x one: its two vCPUs share a core). bench/sparse_fc.py,
BENCHMARKS.md. No scipy at run time.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os

import numba
import numpy as np

# Kept weights below which a product runs on one thread: handing work to another costs ~20-50 us.
PARALLEL_NONZEROS = 1 << 16


@dataclasses.dataclass(frozen=True)
class OutputRows:
  """A kernel [in, out]: output j's kept inputs and weights are inputs[s:e], weights[s:e], s, e = starts[j:j + 2]."""

  starts: np.ndarray  # int64 [out + 1].
  inputs: np.ndarray  # Ascending within each output; uint16 where the kernel has at most 65,536 inputs, else int32.
  weights: np.ndarray  # float32.
  shape: tuple[int, int]  # (in, out), as the kernel's.

  @property
  def nnz(self) -> int:
    return int(self.weights.size)

  @property
  def nbytes(self) -> int:
    return int(self.starts.nbytes + self.inputs.nbytes + self.weights.nbytes)


def output_rows(kernel: np.ndarray) -> OutputRows:
  """The nonzero weights of a dense kernel [in, out], output by output."""
  kernel = np.asarray(kernel, np.float32)
  by_output = np.ascontiguousarray(kernel.T)
  outputs, inputs = np.nonzero(by_output)  # Row-major order: by output, then ascending input.
  starts = np.zeros(kernel.shape[1] + 1, np.int64)
  np.cumsum(np.bincount(outputs, minlength=kernel.shape[1]), out=starts[1:])
  index_dtype = np.uint16 if kernel.shape[0] <= 1 << 16 else np.int32
  return OutputRows(starts, inputs.astype(index_dtype), by_output[outputs, inputs], tuple(kernel.shape))


def matmul(x: np.ndarray, rows: OutputRows, threads: int = 1) -> np.ndarray:
  """x [batch, in] @ kernel -> [batch, out] in float32, on up to `threads` threads.

  The outputs are cut into `threads` runs of about equal kept weights: the
  first computed on the calling thread, the others each on a thread of a
  pool (the compiled loops release the GIL). Not numba's `parallel`: its
  OpenMP threads spin after each product, and made the small products that
  followed take milliseconds instead of microseconds.
  """
  x = np.asarray(x, np.float32)
  if x.ndim != 2 or x.shape[1] != rows.shape[0]:
    raise ValueError(f"x of shape {x.shape} against a kernel of shape {rows.shape}; valid: [batch, {rows.shape[0]}]")
  parts = max(1, threads) if rows.nnz >= PARALLEL_NONZEROS else 1
  vector = x.shape[0] == 1
  by_input = x[0] if vector else np.ascontiguousarray(x.T)  # [in, batch]: each kept weight scales one row.
  out = np.empty(rows.shape[1] if vector else (rows.shape[1], x.shape[0]), np.float32)

  def run(lo: int, hi: int) -> None:  # Outputs lo..hi - 1.
    (_vector if vector else _batch)(rows.starts[lo:hi + 1], rows.inputs, rows.weights, by_input, out[lo:hi])

  if parts == 1:
    run(0, rows.shape[1])
  else:
    cuts = np.searchsorted(rows.starts, np.linspace(0, rows.nnz, parts + 1)[1:-1])
    bounds = np.unique(np.concatenate([[0], cuts, [rows.shape[1]]]))
    others = [_pool().submit(run, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    run(bounds[0], bounds[1])  # The first run on this thread: one thread fewer to wake.
    for other in others:
      other.result()
  return out[None] if vector else np.ascontiguousarray(out.T)


@functools.cache
def _pool() -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="dc_jax.sparse")


@numba.njit(cache=True, nogil=True)
def _vector(starts, inputs, weights, x, out):
  """out[j] = sum of weights[p] * x[inputs[p]] over output j's kept weights, eight partial sums at a time.

  Plain loads, not vector gathers: with fastmath, LLVM gathers x, and this
  CPU's gathers made the product twice as slow as a chain of scalar adds.
  """
  for j in range(out.shape[0]):
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    p, end = starts[j], starts[j + 1]
    while p + 8 <= end:
      s0 += weights[p] * x[inputs[p]]
      s1 += weights[p + 1] * x[inputs[p + 1]]
      s2 += weights[p + 2] * x[inputs[p + 2]]
      s3 += weights[p + 3] * x[inputs[p + 3]]
      s4 += weights[p + 4] * x[inputs[p + 4]]
      s5 += weights[p + 5] * x[inputs[p + 5]]
      s6 += weights[p + 6] * x[inputs[p + 6]]
      s7 += weights[p + 7] * x[inputs[p + 7]]
      p += 8
    while p < end:
      s0 += weights[p] * x[inputs[p]]
      p += 1
    out[j] = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@numba.njit(cache=True, nogil=True)
def _batch(starts, inputs, weights, by_input, out):
  """out[j, :] = sum of weights[p] * by_input[inputs[p], :]: one contiguous row of the batch per kept weight."""
  for j in range(out.shape[0]):
    out[j] = 0.0
    for p in range(starts[j], starts[j + 1]):
      weight, row = weights[p], inputs[p]
      for b in range(out.shape[1]):
        out[j, b] += weight * by_input[row, b]
