"""The compiled sparse products, with and without vector gathers, against numpy's dense ones."""

import numpy as np
import pytest

from dc_jax import gathers, sparse_kernels

needs_gathers = pytest.mark.skipif(not gathers.available(), reason="no AVX-512 gathers on this CPU")


def pruned(inputs: int, outputs: int, kept: float, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return np.where(rng.random((inputs, outputs)) < kept, rng.standard_normal((inputs, outputs)), 0).astype(np.float32)


def test_output_rows_hold_each_blocks_kept_weights_output_by_output_in_input_order():
  kernel = pruned(2 * sparse_kernels.INPUT_BLOCK + 300, 200, 0.1)
  rows = sparse_kernels.output_rows(kernel)
  assert rows.shape == kernel.shape and rows.nnz == np.count_nonzero(kernel) and rows.inputs.dtype == np.uint16
  assert rows.starts.shape == (3, 201) and rows.starts[0, 0] == 0 and rows.starts[-1, -1] == rows.nnz
  np.testing.assert_array_equal(rows.starts[1:, 0], rows.starts[:-1, -1])  # The blocks follow one another.
  for b in range(3):
    first = b * sparse_kernels.INPUT_BLOCK
    block = kernel[first:first + sparse_kernels.INPUT_BLOCK]
    np.testing.assert_array_equal(np.diff(rows.starts[b]), np.count_nonzero(block, axis=0))
    for j in (0, 7, 199):
      start, end = rows.starts[b, j], rows.starts[b, j + 1]
      np.testing.assert_array_equal(first + rows.inputs[start:end], first + np.flatnonzero(block[:, j]))
      np.testing.assert_array_equal(rows.weights[start:end], block[block[:, j] != 0, j])
  assert rows.nbytes == rows.starts.nbytes + 2 * rows.nnz + 4 * rows.nnz


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("vector_gathers", [True, False])
def test_products_equal_the_dense_ones(batch, threads, vector_gathers):
  kernel = pruned(9000, 60, 0.15)  # Three blocks of inputs; ~81,000 kept: two threads split, x is gathered.
  rows = sparse_kernels.output_rows(kernel)
  assert rows.nnz >= max(sparse_kernels.PARALLEL_NONZEROS, sparse_kernels.GATHER_NONZEROS)
  x = np.random.default_rng(1).standard_normal((batch, 9000)).astype(np.float32)
  product = sparse_kernels.matmul(x, rows, threads, vector_gathers)
  assert product.dtype == np.float32 and product.shape == (batch, 60)
  np.testing.assert_allclose(product, x.astype(np.float64) @ kernel, rtol=1e-4, atol=1e-4)


@needs_gathers
def test_gathered_rows_sum_every_length_whole_sixteens_and_a_masked_rest_and_add_when_asked():
  lengths = np.array([0, 1, 15, 16, 17, 32, 33, 47])
  starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  rng = np.random.default_rng(2)
  inputs = rng.integers(0, 100, starts[-1]).astype(np.uint16)
  weights = rng.integers(-8, 8, starts[-1]).astype(np.float32)  # Small integers: every sum exact.
  x = rng.integers(-8, 8, 100).astype(np.float32)
  expected = [np.sum(weights[s:e] * x[inputs[s:e]]) for s, e in zip(starts[:-1], starts[1:])]
  out = np.full(lengths.size, 1000.0, np.float32)
  gathers.rows_product(starts, inputs, weights, x, out, accumulate=False)
  np.testing.assert_array_equal(out, expected)
  gathers.rows_product(starts, inputs, weights, x, out, accumulate=True)
  np.testing.assert_array_equal(out, 2 * np.array(expected))


def test_outputs_with_no_kept_weight_are_zero_and_remainders_are_summed():
  kernel = np.zeros((13, 4), np.float32)
  kernel[:, 1] = np.arange(1, 14)  # 13 kept: one block of eight, then five one by one.
  kernel[[0, 12], 3] = 2.0
  rows = sparse_kernels.output_rows(kernel)
  x = np.ones((1, 13), np.float32)
  np.testing.assert_array_equal(sparse_kernels.matmul(x, rows), [[0.0, 91.0, 0.0, 4.0]])


def test_kernels_with_more_than_65536_inputs_keep_uint16_indices_by_block():
  kernel = np.zeros((70_000, 2), np.float32)
  kernel[[3, 65_536, 69_999], 0] = [1.0, 2.0, 3.0]
  rows = sparse_kernels.output_rows(kernel)
  assert rows.inputs.dtype == np.uint16 and rows.starts.shape[0] == -(-70_000 // sparse_kernels.INPUT_BLOCK)
  x = np.arange(70_000, dtype=np.float32)[None]
  np.testing.assert_array_equal(sparse_kernels.matmul(x, rows), [[3.0 + 2 * 65_536.0 + 3 * 69_999.0, 0.0]])


def test_a_mismatched_input_is_refused():
  rows = sparse_kernels.output_rows(pruned(30, 20, 0.5))
  with pytest.raises(ValueError, match=r"valid: \[batch, 30\]"):
    sparse_kernels.matmul(np.ones((1, 31), np.float32), rows)
