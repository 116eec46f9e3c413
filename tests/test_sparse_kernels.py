"""The compiled sparse products against numpy's dense ones."""

import numpy as np
import pytest

from dc_jax import sparse_kernels


def pruned(inputs: int, outputs: int, kept: float, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return np.where(rng.random((inputs, outputs)) < kept, rng.standard_normal((inputs, outputs)), 0).astype(np.float32)


def test_output_rows_hold_each_outputs_kept_weights_in_input_order():
  kernel = pruned(300, 200, 0.1)
  rows = sparse_kernels.output_rows(kernel)
  assert rows.shape == (300, 200) and rows.nnz == np.count_nonzero(kernel) and rows.inputs.dtype == np.uint16
  np.testing.assert_array_equal(np.diff(rows.starts), np.count_nonzero(kernel, axis=0))
  for j in (0, 7, 199):
    start, end = rows.starts[j], rows.starts[j + 1]
    np.testing.assert_array_equal(rows.inputs[start:end], np.flatnonzero(kernel[:, j]))
    np.testing.assert_array_equal(rows.weights[start:end], kernel[kernel[:, j] != 0, j])
  assert rows.nbytes == rows.starts.nbytes + 2 * rows.nnz + 4 * rows.nnz


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("threads", [1, 2])
def test_products_equal_the_dense_ones(batch, threads):
  kernel = pruned(600, 500, 0.3)  # 90,000 kept weights: above PARALLEL_NONZEROS, so two threads do split.
  rows = sparse_kernels.output_rows(kernel)
  assert rows.nnz >= sparse_kernels.PARALLEL_NONZEROS
  x = np.random.default_rng(1).standard_normal((batch, 600)).astype(np.float32)
  product = sparse_kernels.matmul(x, rows, threads)
  assert product.dtype == np.float32 and product.shape == (batch, 500)
  np.testing.assert_allclose(product, x.astype(np.float64) @ kernel, rtol=1e-4, atol=1e-4)


def test_outputs_with_no_kept_weight_are_zero_and_remainders_are_summed():
  kernel = np.zeros((13, 4), np.float32)
  kernel[:, 1] = np.arange(1, 14)  # 13 kept: one block of eight, then five one by one.
  kernel[[0, 12], 3] = 2.0
  rows = sparse_kernels.output_rows(kernel)
  x = np.ones((1, 13), np.float32)
  np.testing.assert_array_equal(sparse_kernels.matmul(x, rows), [[0.0, 91.0, 0.0, 4.0]])


def test_kernels_with_more_than_65536_inputs_index_them_as_int32():
  kernel = np.zeros((70_000, 2), np.float32)
  kernel[[3, 65_536, 69_999], 0] = [1.0, 2.0, 3.0]
  rows = sparse_kernels.output_rows(kernel)
  assert rows.inputs.dtype == np.int32
  x = np.arange(70_000, dtype=np.float32)[None]
  np.testing.assert_array_equal(sparse_kernels.matmul(x, rows), [[3.0 + 2 * 65_536.0 + 3 * 69_999.0, 0.0]])


def test_a_mismatched_input_is_refused():
  rows = sparse_kernels.output_rows(pruned(30, 20, 0.5))
  with pytest.raises(ValueError, match=r"valid: \[batch, 30\]"):
    sparse_kernels.matmul(np.ones((1, 31), np.float32), rows)
