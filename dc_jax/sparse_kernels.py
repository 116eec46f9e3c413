"""Pruned fully connected kernels stored by blocks of inputs, output by output, and their products with x.

What the `sparse` inference form multiplies with (the paper's Fig. 9: batch-1
sparse matrix-vector products). scipy's CSR and CSC store each kept weight
as a float32 and an int32 index (8 B); here the inputs are cut into blocks
of INPUT_BLOCK, each with its own output-by-output rows, so every index is a
uint16 counted from its block's first input (6 B a weight, 25% less host
memory) and each block's part of x stays in the L1 cache while it is
gathered (4096x9216 at 9% kept: 1.4 against 1.9 ms in one block). At batch
1 the product runs on AVX-512 gathers (`gathers`) where this CPU has them,
else on compiled loops with eight partial sums per output. A second thread
pays only on a second physical core (the 2-core test machine's two vCPUs
share one: two busy threads ran at 1.05x one). bench/sparse_fc.py,
BENCHMARKS.md. No scipy at run time.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os

import numba
import numpy as np

from dc_jax import gathers

# Kept weights below which a product runs on one thread: handing work to another costs ~20-50 us.
PARALLEL_NONZEROS = 1 << 16
# Kept weights below which x is loaded one by one even where it can be gathered: the gathered call cost 13-19 us
# more on LeNet's ip1 (16K kept) and VGG19's fc3 (1.2K kept) than the loads' 12-20 us.
GATHER_NONZEROS = 1 << 16
# Inputs a block: 16 KB of x, half of a 32 KB L1 data cache (4096x9216, gathered: blocks of 1536-4608 inputs
# took 1.39-1.57 ms, one block of 9216 took 1.92 ms).
INPUT_BLOCK = 1 << 12


@dataclasses.dataclass(frozen=True)
class OutputRows:
  """A kernel [in, out] by blocks of INPUT_BLOCK inputs, and within a block, output by output.

  In block b, output j's kept weights are weights[s:e] and their inputs are
  b * INPUT_BLOCK + inputs[s:e], with s, e = starts[b, j], starts[b, j + 1].
  """

  starts: np.ndarray  # int64 [blocks, out + 1], into inputs and weights, where the blocks follow one another.
  inputs: np.ndarray  # uint16, counted from the block's first input; ascending within each output.
  weights: np.ndarray  # float32.
  shape: tuple[int, int]  # (in, out), as the kernel's.

  @property
  def nnz(self) -> int:
    return int(self.weights.size)

  @property
  def nbytes(self) -> int:
    return int(self.starts.nbytes + self.inputs.nbytes + self.weights.nbytes)

  @functools.cached_property
  def kept_before(self) -> np.ndarray:
    """int64 [out + 1]: the kept weights of the outputs before each, over all blocks (where threads cut)."""
    return np.concatenate([[0], np.cumsum(np.diff(self.starts, axis=1).sum(0))])


def output_rows(kernel: np.ndarray) -> OutputRows:
  """The nonzero weights of a dense kernel [in, out], by blocks of inputs, then output by output."""
  kernel = np.asarray(kernel, np.float32)
  blocks = max(1, -(-kernel.shape[0] // INPUT_BLOCK))
  starts = np.zeros((blocks, kernel.shape[1] + 1), np.int64)
  inputs, weights = [], []
  for b in range(blocks):
    by_output = np.ascontiguousarray(kernel[b * INPUT_BLOCK:(b + 1) * INPUT_BLOCK].T)
    outputs, block_inputs = np.nonzero(by_output)  # Row-major order: by output, then ascending input.
    starts[b] = starts[b - 1, -1] if b else 0
    starts[b, 1:] += np.cumsum(np.bincount(outputs, minlength=kernel.shape[1]))
    inputs.append(block_inputs.astype(np.uint16))
    weights.append(by_output[outputs, block_inputs])
  return OutputRows(starts, np.concatenate(inputs), np.concatenate(weights), tuple(kernel.shape))


def matmul(x: np.ndarray, rows: OutputRows, threads: int = 1, vector_gathers: bool = True) -> np.ndarray:
  """x [batch, in] @ kernel -> [batch, out] in float32, on up to `threads` threads.

  At batch 1, x is gathered sixteen values at a time where this CPU can
  (`gathers.available()`) and the kernel keeps at least GATHER_NONZEROS,
  unless `vector_gathers` is False (the loads one by one that run elsewhere,
  for comparison).

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
  gather = vector and vector_gathers and rows.nnz >= GATHER_NONZEROS and gathers.available()
  by_input = x[0] if vector else np.ascontiguousarray(x.T)  # [in, batch]: each kept weight scales one row.
  out = np.empty(rows.shape[1] if vector else (rows.shape[1], x.shape[0]), np.float32)

  def run(lo: int, hi: int) -> None:  # Outputs lo..hi - 1.
    if gather:
      for b, starts in enumerate(rows.starts[:, lo:hi + 1]):
        block = by_input[b * INPUT_BLOCK:(b + 1) * INPUT_BLOCK]
        gathers.rows_product(starts, rows.inputs, rows.weights, block, out[lo:hi], accumulate=b > 0)
    else:
      (_vector if vector else _batch)(rows.starts[:, lo:hi + 1], rows.inputs, rows.weights, by_input, out[lo:hi])

  if parts == 1:
    run(0, rows.shape[1])
  else:
    cuts = np.searchsorted(rows.kept_before, np.linspace(0, rows.nnz, parts + 1)[1:-1])
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
  """out[j] = sum of weights[p] * x[inputs[p]] over output j's kept weights in each block, eight partial sums at a time.

  Plain loads: numba's own vectorized loop (fastmath) gathered x twice as
  slowly here as this chain of scalar adds; `gathers` has a faster vector form.
  """
  for b in range(starts.shape[0]):
    block = x[b * INPUT_BLOCK:]
    for j in range(out.shape[0]):
      s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
      p, end = starts[b, j], starts[b, j + 1]
      while p + 8 <= end:
        s0 += weights[p] * block[inputs[p]]
        s1 += weights[p + 1] * block[inputs[p + 1]]
        s2 += weights[p + 2] * block[inputs[p + 2]]
        s3 += weights[p + 3] * block[inputs[p + 3]]
        s4 += weights[p + 4] * block[inputs[p + 4]]
        s5 += weights[p + 5] * block[inputs[p + 5]]
        s6 += weights[p + 6] * block[inputs[p + 6]]
        s7 += weights[p + 7] * block[inputs[p + 7]]
        p += 8
      while p < end:
        s0 += weights[p] * block[inputs[p]]
        p += 1
      total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
      out[j] = out[j] + total if b else total


@numba.njit(cache=True, nogil=True)
def _batch(starts, inputs, weights, by_input, out):
  """out[j, :] = sum of weights[p] * by_input[first + inputs[p], :]: one contiguous row of the batch per kept weight."""
  out[:] = 0.0
  for b in range(starts.shape[0]):
    first = b * INPUT_BLOCK
    for j in range(out.shape[0]):
      for p in range(starts[b, j], starts[b, j + 1]):
        weight, row = weights[p], first + inputs[p]
        for k in range(out.shape[1]):
          out[j, k] += weight * by_input[row, k]
