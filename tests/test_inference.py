"""The three inference forms give the dense decode's logits, from a file written and read back by the codec."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dc_jax import codec, inference, share as sharing
from dc_jax.models import LeNet300100, LeNet5, VGG
from dc_jax.share import SharedKernel


def pruned_shared(variables, k: int, kept: float, seed: int = 0, group_size: int = 0, vector_size: int = 1):
  """Every kernel pruned to about `kept` and shared over k sorted centroids (a row per group, or k vectors)."""
  rng = np.random.default_rng(seed)

  def share(path, leaf):
    if path[-1].key != "kernel":
      return np.asarray(leaf)
    mask = rng.random(leaf.shape) < kept
    scale = np.sqrt(2 / (kept * np.prod(leaf.shape[:-1])))  # He initialisation of the kept weights: logits that vary.
    rows = (-(-leaf.shape[-1] // group_size),) if group_size else ()
    codebook = np.sort(rng.normal(0.0, scale, (*rows, k)), axis=-1).astype(np.float32)
    indices = np.where(mask, rng.integers(0, k, leaf.shape), 0).astype(np.uint8 if k <= 256 else np.uint16)
    if vector_size > 1:
      present = sharing.vectors(mask, vector_size).any(-1)
      codebook = rng.normal(0.0, scale, (k, vector_size)).astype(np.float32)
      indices = np.where(present, rng.integers(0, k, present.shape), 0).astype(np.uint8)
    return SharedKernel(codebook, indices, mask, group_size=group_size, vector_size=vector_size)

  return jax.tree_util.tree_map_with_path(share, variables)


MODELS = {
    "lenet300100": (LeNet300100(), (28, 28, 1), 13, 0.07),
    "lenet5": (LeNet5(), (28, 28, 1), 13, 0.1),
    "tiny_vgg": (VGG(depth=11, width=1 / 16, classifier_widths=(32,)), (32, 32, 3), 13, 0.3),
}


def decoded(name, tmp_path, k=None, group_size=0, vector_size=1):
  model, shape, default_k, kept = MODELS[name]
  variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)))
  variables = jax.tree.map(np.asarray, variables)
  path = tmp_path / f"{name}.dcz"
  codec.write(path, pruned_shared(variables, k or default_k, kept, group_size=group_size, vector_size=vector_size))
  images = jax.random.normal(jax.random.key(1), (3, *shape))
  return model, codec.read(path), images


@pytest.mark.parametrize("name, group_size, vector_size", [(name, 0, 1) for name in sorted(MODELS)]
                         + [("lenet300100", 1, 1), ("lenet5", 3, 1)]  # A codebook per channel, per 3 channels.
                         + [("lenet300100", 0, 4), ("lenet5", 0, 3)])  # Vectors; 3 divides no fan-in of LeNet-5.
def test_forms_agree_with_the_dense_decode(name, group_size, vector_size, tmp_path):
  model, variables, images = decoded(name, tmp_path, group_size=group_size, vector_size=vector_size)
  dense = inference.predictor(model, variables, "dense")(images)
  if name != "tiny_vgg":  # The dense form is the dense decode (unjitted, VGG's ops compile one by one: slow).
    expected = model.apply(jax.tree.map(
        lambda leaf: leaf.materialize() if isinstance(leaf, SharedKernel) else leaf, variables,
        is_leaf=lambda leaf: isinstance(leaf, SharedKernel)), images)
    chex.assert_trees_all_close(dense, expected, atol=1e-5, rtol=1e-5)
  for form, nibbles in (("codebook", None), ("codebook", False), ("sparse", None)):
    logits = inference.predictor(model, variables, form, nibbles)(images)
    chex.assert_trees_all_close(logits, dense, atol=1e-5, rtol=1e-5)
  assert float(jnp.std(dense)) > 1e-3  # Logits that differ between images: a comparison that could fail.


def test_sparse_form_at_batch_1_takes_the_matrix_vector_path(tmp_path):
  model, variables, images = decoded("lenet300100", tmp_path)
  one = inference.predictor(model, variables, "sparse")(images[:1])
  chex.assert_trees_all_close(one, inference.predictor(model, variables, "dense")(images[:1]), atol=1e-5, rtol=1e-5)


def test_codebook_form_holds_one_byte_per_weight_or_half(tmp_path):
  model, variables, images = decoded("lenet300100", tmp_path)
  dense = inference.predictor(model, variables, "dense")
  uint8 = inference.predictor(model, variables, "codebook", nibbles=False)
  packed = inference.predictor(model, variables, "codebook")
  weights = 784 * 300 + 300 * 100 + 100 * 10
  biases = 4 * (300 + 100 + 10)
  assert dense.device_bytes == 4 * weights + biases
  assert uint8.device_bytes == weights + biases + 3 * 4 * 14  # + three codebooks of 13 + 1 (0.0) float32.
  assert packed.device_bytes == weights // 2 + biases + 3 * 4 * 14
  chex.assert_trees_all_close(packed(images), dense(images), atol=1e-5, rtol=1e-5)


def test_256_clusters_keep_a_bit_packed_mask_and_decode_exactly(tmp_path):
  model, variables, _ = decoded("lenet300100", tmp_path, k=256)
  kernel = variables["params"]["ip1"]["kernel"]
  small = inference.compact(kernel)
  assert small.codes.dtype == np.uint8 and small.mask_bits.size == -(-kernel.mask.size // 8)
  np.testing.assert_array_equal(inference.expand(small), kernel.materialize())


def test_sparse_form_moves_fc_kernels_off_the_device(tmp_path):
  model, variables, _ = decoded("lenet300100", tmp_path)
  sparse = inference.predictor(model, variables, "sparse")
  assert set(sparse.matrices) == {("ip1",), ("ip2",), ("ip3",)}
  assert "kernel" not in sparse.variables["params"]["ip1"]
  assert sparse.matrices[("ip1",)].nnz == int(variables["params"]["ip1"]["kernel"].mask.sum())


def test_unknown_form_is_refused(tmp_path):
  model, variables, _ = decoded("lenet300100", tmp_path)
  with pytest.raises(ValueError, match="codebook"):
    inference.predictor(model, variables, "bcsr")


def test_sparse_form_on_two_threads_gives_the_same_logits(tmp_path):
  model, variables, images = decoded("lenet300100", tmp_path)
  one = inference.predictor(model, variables, "sparse")
  two = inference.predictor(model, variables, "sparse", threads=2)
  chex.assert_trees_all_close(two(images[:1]), one(images[:1]), atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(two(images), one(images), atol=1e-5, rtol=1e-5)
