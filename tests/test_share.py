"""Weight sharing: 1-D k-means against scikit-learn, the codebook representation, centroid gradients, fine-tuning."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dc_jax import models, prune, share, train
from dc_jax.errors import ConfigError


def _pruned_lenet(kept: float = 0.1):
  model = models.LeNet300100()
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  masks = prune.layer_fraction(params, kept)
  return model, prune.apply_masks(params, masks), masks


def test_quantize_shares_only_the_selected_kernels_with_the_narrowest_index_dtype():
  _, params, masks = _pruned_lenet()
  plan = share.Plan(k=[("ip1/kernel", 256), (".*", 257)], patterns=(r"ip[12]/kernel",))
  shared, rows = share.quantize(params, masks, plan)
  assert share.is_shared(shared["ip1"]["kernel"]) and share.is_shared(shared["ip2"]["kernel"])
  assert not share.is_shared(shared["ip3"]["kernel"])
  assert shared["ip1"]["kernel"].indices.dtype == jnp.uint8
  assert shared["ip2"]["kernel"].indices.dtype == jnp.uint16
  assert [(r["layer"], r["k"], r["clusters"]) for r in rows] == [("ip1/kernel", 256, 256), ("ip2/kernel", 257, 257)]
  dense = share.materialize(shared)
  chex.assert_trees_all_equal_shapes(dense, params)
  for name in ("ip1", "ip2"):
    kernel, mask = shared[name]["kernel"], np.asarray(masks[name]["kernel"])
    assert np.all(np.asarray(dense[name]["kernel"])[~mask] == 0.0)
    assert np.all(np.asarray(kernel.indices)[~mask] == 0)
    step = np.diff(np.asarray(kernel.codebook)).max()
    assert np.abs(np.asarray(dense[name]["kernel"]) - np.asarray(params[name]["kernel"]))[mask].max() <= step / 2
  chex.assert_trees_all_equal(dense["ip3"], params["ip3"])


def test_split_then_merge_is_the_identity_and_the_frozen_half_holds_kept_weights():
  _, params, masks = _pruned_lenet()
  shared, _ = share.quantize(params, masks, share.Plan(k=8))
  trainable, frozen = share.split(shared)
  chex.assert_shape(trainable["ip1"]["kernel"], (8,))
  chex.assert_trees_all_equal(share.merge(trainable, frozen), shared)  # Comparable with codec.read's tree.
  for name in ("ip1", "ip2", "ip3"):
    kernel, original = frozen[name]["kernel"], shared[name]["kernel"]
    positions = np.flatnonzero(np.asarray(original.mask))
    np.testing.assert_array_equal(kernel.kept.positions, positions)
    np.testing.assert_array_equal(kernel.kept.indices, np.asarray(original.indices).ravel()[positions])
  chex.assert_trees_all_equal(share.materialize_split(trainable, frozen), share.materialize(shared))


@pytest.mark.parametrize("reduction", share.REDUCTIONS)
@pytest.mark.parametrize("with_kept_weights", [False, True])
@pytest.mark.parametrize("k", [7, 300])  # 300 > 256: uint16 indices.
def test_centroid_gradient_is_the_segment_sum_of_its_weights_gradients(reduction, with_kept_weights, k):
  keys = jax.random.split(jax.random.key(0), 4)
  dtype = share.index_dtype(k)
  codebook = jnp.sort(jax.random.normal(keys[0], (k,)))
  indices = jax.random.randint(keys[1], (40, 30), 0, k).astype(dtype)
  mask = jax.random.bernoulli(keys[2], 0.3, (40, 30))
  indices = jnp.where(mask, indices, 0).astype(dtype)  # As quantize leaves them.
  assert indices.dtype == (jnp.uint16 if k > 256 else jnp.uint8) and int(indices.max()) > 255 * (k > 256)
  target = jax.random.normal(keys[3], (40, 30))
  kept = share.kept_weights(indices, mask) if with_kept_weights else None

  def loss(lookup_fn, c):
    return jnp.sum(jnp.sin(lookup_fn(c) * target))

  ours = jax.jit(jax.grad(lambda c: loss(lambda c: share.lookup(c, indices, mask, reduction, kept), c)))(codebook)
  autodiff = jax.grad(lambda c: loss(lambda c: jnp.where(mask, c[indices], 0.0), c))(codebook)
  if reduction == "mean":
    counts = np.bincount(np.asarray(indices)[np.asarray(mask)], minlength=k)
    autodiff = autodiff / np.maximum(counts, 1)
  chex.assert_trees_all_close(ours, autodiff, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("granularity, rows", [("channel", 10), ("group", 3)])  # 10 channels in groups of 4, 4, 2.
def test_granular_quantize_gives_a_codebook_row_per_group_with_local_indices(granularity, rows):
  rng = np.random.default_rng(0)
  weights = rng.standard_normal((30, 10)).astype(np.float32)
  mask = rng.random((30, 10)) < 0.5
  mask[:, 9] = False  # A channel without kept weights: its row is zeros.
  mask[:, 8] = False
  mask[0, 8] = True  # A channel with one kept weight: its row repeats that value.
  params, masks = {"fc": {"kernel": jnp.asarray(np.where(mask, weights, 0))}}, {"fc": {"kernel": jnp.asarray(mask)}}
  shared, rows_out = share.quantize(params, masks, share.Plan(k=4, granularity=granularity, group_size=4))
  kernel = shared["fc"]["kernel"]
  chex.assert_shape(kernel.codebook, (rows, 4))
  assert kernel.group_size == {"channel": 1, "group": 4}[granularity] and rows_out[0]["codebooks"] == rows
  assert kernel.indices.dtype == jnp.uint8 and int(kernel.indices.max()) <= 3
  dense = np.asarray(kernel.materialize())
  assert np.all(dense[~mask] == 0.0)
  codebook = np.asarray(kernel.codebook)
  for channel in range(10):
    row = codebook[channel // kernel.group_size]
    np.testing.assert_array_equal(dense[mask[:, channel], channel],
                                  row[np.asarray(kernel.indices)[mask[:, channel], channel]])
  if granularity == "channel":
    np.testing.assert_array_equal(codebook[9], np.zeros(4))
    np.testing.assert_array_equal(codebook[8], np.full(4, weights[0, 8]))


def test_layer_granularity_gives_matching_layers_their_codebooks_and_the_others_the_default():
  rng = np.random.default_rng(2)
  shapes = {"conv1": (3, 3, 2, 6), "conv10": (3, 3, 6, 5), "fc": (20, 4)}
  params = {name: {"kernel": jnp.asarray(rng.standard_normal(shape), jnp.float32)} for name, shape in shapes.items()}
  masks = {name: {"kernel": jnp.asarray(rng.random(shape) < 0.7)} for name, shape in shapes.items()}
  plan = share.Plan(k=4, granularity="tensor", layer_granularity=(("conv1/.*", "channel"),))
  shared, rows = share.quantize(params, masks, plan)
  assert {name: shared[name]["kernel"].group_size for name in shapes} == {"conv1": 1, "conv10": 0, "fc": 0}
  assert {name: shared[name]["kernel"].codebook.shape for name in shapes} == {
      "conv1": (6, 4), "conv10": (4,), "fc": (4,)}
  assert [row["codebooks"] for row in rows] == [6, 1, 1]
  # The first match wins, and the rest fall back to granularity (here group, of 2 channels: 6 = 2 + 2 + 2).
  plan = share.Plan(k=4, granularity="group", group_size=2,
                    layer_granularity=[("fc/.*", "tensor"), (".*", "channel"), ("conv1/.*", "tensor")])
  assert [plan.channels_per_codebook(f"{name}/kernel") for name in shapes] == [1, 1, 0]
  assert share.Plan(granularity="group", group_size=2).channels_per_codebook("conv1/kernel") == 2
  for name, layer in share.quantize(params, masks, plan)[0].items():
    kernel, mask = layer["kernel"], np.asarray(masks[name]["kernel"])
    assert kernel.group_size == plan.channels_per_codebook(f"{name}/kernel")
    for channel in range(shapes[name][-1]):  # Each channel's kept weights are its own row's centroids.
      row = np.asarray(kernel.codebook)[channel // kernel.group_size] if kernel.group_size else kernel.codebook
      assert np.isin(np.asarray(kernel.materialize())[..., channel][mask[..., channel]], row).all()


def test_a_codebook_per_channel_clusters_at_least_as_well_as_one_per_tensor():
  rng = np.random.default_rng(1)
  params = {"fc": {"kernel": jnp.asarray(rng.standard_normal((200, 16)) * rng.uniform(0.1, 3, 16), jnp.float32)}}
  masks = {"fc": {"kernel": jnp.asarray(rng.random((200, 16)) < 0.3)}}
  errors = {}
  for granularity in ("tensor", "channel"):
    shared, rows = share.quantize(params, masks, share.Plan(k=8, granularity=granularity))
    mask = np.asarray(masks["fc"]["kernel"])
    errors[granularity] = np.sum((np.asarray(shared["fc"]["kernel"].materialize()) - params["fc"]["kernel"])[mask] ** 2)
    np.testing.assert_allclose(errors[granularity], rows[0]["inertia"], rtol=1e-4)
  assert errors["channel"] < 0.75 * errors["tensor"]  # Channels of different scales: better, not just as good.


@pytest.mark.parametrize("reduction", share.REDUCTIONS)
@pytest.mark.parametrize("with_kept_weights", [False, True])
@pytest.mark.parametrize("group_size", [1, 4])  # 30 channels: 30 rows, or 8 rows (the last of 2 channels).
def test_grouped_centroid_gradient_is_autodiff_of_the_masked_gather(reduction, with_kept_weights, group_size):
  keys = jax.random.split(jax.random.key(1), 4)
  k, groups = 5, -(-30 // group_size)
  codebook = jnp.sort(jax.random.normal(keys[0], (groups, k)), axis=-1)
  mask = jax.random.bernoulli(keys[2], 0.4, (40, 30))
  indices = jnp.where(mask, jax.random.randint(keys[1], (40, 30), 0, k), 0).astype(jnp.uint8)
  target = jax.random.normal(keys[3], (40, 30))
  kept = share.kept_weights(indices, mask, k, group_size) if with_kept_weights else None
  rows = jnp.arange(30) // group_size

  def loss(lookup_fn, c):
    return jnp.sum(jnp.sin(lookup_fn(c) * target))

  ours = jax.jit(jax.grad(lambda c: loss(lambda c: share.lookup(c, indices, mask, reduction, kept, group_size), c)))(
      codebook)
  autodiff = jax.grad(lambda c: loss(lambda c: jnp.where(mask, c[rows, indices], 0.0), c))(codebook)
  if reduction == "mean":
    counts = np.zeros((groups, k))
    np.add.at(counts, (np.broadcast_to(np.asarray(rows), mask.shape)[np.asarray(mask)],
                       np.asarray(indices)[np.asarray(mask)]), 1)
    autodiff = autodiff / np.maximum(counts, 1)
  chex.assert_shape(ours, (groups, k))
  chex.assert_trees_all_close(ours, autodiff, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(ours)).max() > 0


def _finetune_state(train_unshared: bool = True, granularity: str = "tensor", vector_size: int = 1):
  model, params, masks = _pruned_lenet()
  init = "kmeans++" if vector_size > 1 else "linear"
  shared, _ = share.quantize(params, masks, share.Plan(k=16, granularity=granularity, vector_size=vector_size,
                                                       init=init))
  trainable, frozen = share.split(shared)
  tx = share.finetune_optimizer(optax.sgd(0.01, momentum=0.9), shared, train_unshared)
  state = share.SharedTrainState.create(apply_fn=model.apply, params=trainable, batch_stats={}, tx=tx, frozen=frozen)
  return state, shared


def _batch(seed: int):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.random((32, 28, 28, 1), np.float32)),
          "label": jnp.asarray(rng.integers(0, 10, 32), jnp.int32)}


@pytest.mark.parametrize("granularity, vector_size", [(g, 1) for g in share.GRANULARITIES] + [("tensor", 3)])
def test_finetuning_moves_only_codebooks_and_keeps_pruned_weights_at_zero(granularity, vector_size):
  state, shared = _finetune_state(granularity=granularity, vector_size=vector_size)
  for step in range(3):
    state, _ = train.train_step(state, _batch(step), jax.random.key(0))
  _, frozen = share.split(shared)
  chex.assert_trees_all_equal(state.frozen, frozen)  # Indices and masks, bit for bit.
  assert not np.allclose(state.params["ip1"]["kernel"], shared["ip1"]["kernel"].codebook)
  assert not np.allclose(state.params["ip1"]["bias"], shared["ip1"]["bias"])
  dense = share.materialize(state.shared_params())
  for name in ("ip1", "ip2", "ip3"):
    mask = np.asarray(shared[name]["kernel"].mask)
    assert np.all(np.asarray(dense[name]["kernel"])[~mask] == 0.0)
    assert len(np.unique(np.asarray(dense[name]["kernel"])[mask])) <= shared[name]["kernel"].codebook.size


def test_finetuning_without_unshared_leaves_biases_as_they_were():
  state, shared = _finetune_state(train_unshared=False)
  state, _ = train.train_step(state, _batch(0), jax.random.key(0))
  chex.assert_trees_all_equal(state.params["ip1"]["bias"], shared["ip1"]["bias"])
  assert not np.allclose(state.params["ip1"]["kernel"], shared["ip1"]["kernel"].codebook)


def test_materialisation_is_traced_once_for_all_steps():
  state, _ = _finetune_state()
  state, _ = train.train_step(state, _batch(0), jax.random.key(0))
  compiled = train.train_step._cache_size()
  for step in range(1, 4):
    state, _ = train.train_step(state, _batch(step), jax.random.key(0))
  assert train.train_step._cache_size() == compiled


@pytest.mark.parametrize("fields, message", [
    ({"init": "uniform"}, "share.init='uniform'"),
    ({"k": 1}, "share.k=1"),
    ({"k": 2 ** 16 + 1}, "share.k=65537"),
    ({"k": [("ip1/kernel", 0)]}, "'ip1/kernel'"),
    ({"max_iterations": 0}, "share.max_iterations=0"),
    ({"granularity": "row"}, "share.granularity='row'; valid: tensor, channel, group"),
    ({"granularity": "group", "group_size": 0}, "share.group_size=0; valid: an integer >= 1"),
    ({"vector_size": 0}, "share.vector_size=0; valid: an integer 1..16"),
    ({"vector_size": 17, "init": "kmeans++"}, "share.vector_size=17; valid: an integer 1..16"),
    ({"vector_size": 2, "init": "kmeans++", "granularity": "channel"},
     "share.granularity='channel'; valid: share.granularity='tensor'"),
    ({"vector_size": 2}, "share.init='linear' is 1-D; valid with share.vector_size=2: kmeans"),
    ({"layer_granularity": [("conv1.*", "row")]},
     "share.layer_granularity has ('conv1.*', 'row'); valid: (regex, granularity) pairs, "
     "granularity one of tensor, channel, group"),
    ({"layer_granularity": [("conv1.*",)]}, "share.layer_granularity has ('conv1.*',); valid"),
    ({"vector_size": 2, "init": "kmeans++", "layer_granularity": [("fc.*", "tensor"), ("conv1.*", "group")]},
     "share.layer_granularity=(('fc.*', 'tensor'), ('conv1.*', 'group')); valid: share.layer_granularity=() or"),
])
def test_bad_plan_is_a_config_error_naming_the_field(fields, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    share.Plan(**fields)


def test_index_dtype_is_the_narrowest_that_holds_k():
  assert [share.index_dtype(k) for k in (2, 256, 257, 65536)] == [np.uint8, np.uint8, np.uint16, np.uint16]


def test_plan_takes_the_configs_bits_and_layer_bits():
  assert share.Plan(bits=4).clusters("fc/kernel") == 16
  plan = share.Plan(bits=5, layer_bits=[("conv.*", 8)])
  assert plan.clusters("conv1/kernel") == 256 and plan.clusters("fc/kernel") == 32
  assert share.Plan(k=9, layer_bits=[("conv.*", 2)]).clusters("fc/kernel") == 9
  with pytest.raises(ConfigError, match="share.bits=17"):
    share.Plan(bits=17)


def test_quantize_reports_few_distinct_values_through_logging_not_print(caplog, capsys):
  params = {"d": {"kernel": jnp.asarray([[0.5, -0.5], [0.5, 0.25]])}}
  with caplog.at_level("WARNING", logger="dc_jax.share"):
    share.quantize(params, prune.all_kept(params), share.Plan(k=8))
  assert "3 distinct surviving values" in caplog.text and capsys.readouterr().out == ""


def test_bf16_and_f16_kernels_keep_their_dtype_through_quantize_and_materialize():
  params = {"a": {"kernel": jnp.linspace(-1, 1, 12, dtype=jnp.bfloat16).reshape(3, 4)},
            "b": {"kernel": jnp.linspace(-1, 1, 12, dtype=jnp.float16).reshape(3, 4)}}
  shared, _ = share.quantize(params, prune.all_kept(params), share.Plan(k=4))
  chex.assert_trees_all_equal_dtypes(share.materialize(shared), params)


def test_shared_train_state_needs_no_batch_stats_and_the_default_optimizer_trains_only_codebooks():
  model, params, masks = _pruned_lenet()
  shared, _ = share.quantize(params, masks, share.Plan(k=4))
  trainable, frozen = share.split(shared)
  state = share.SharedTrainState.create(apply_fn=model.apply, params=trainable, frozen=frozen,
                                        tx=share.finetune_optimizer(optax.sgd(0.1), shared))
  assert state.batch_stats == {}
  grads = jax.tree.map(jnp.ones_like, trainable)
  after = state.apply_gradients(grads=grads).params
  chex.assert_trees_all_equal(after["ip1"]["bias"], trainable["ip1"]["bias"])
  assert not np.array_equal(after["ip1"]["kernel"], trainable["ip1"]["kernel"])


def _pruned_conv(shape=(3, 3, 5, 6), kept: float = 0.4, seed: int = 0):
  """A pruned conv kernel whose fan-in (3 * 3 * 5 = 45) no vector size > 1 here divides."""
  rng = np.random.default_rng(seed)
  mask = rng.random(shape) < kept
  return {"conv": {"kernel": jnp.asarray(np.where(mask, rng.normal(size=shape), 0.0).astype(np.float32))}}, \
      {"conv": {"kernel": jnp.asarray(mask)}}


def test_vector_size_1_is_the_scalar_path_bit_for_bit():
  _, params, masks = _pruned_lenet()
  scalar, scalar_rows = share.quantize(params, masks, share.Plan(k=16))
  ones, one_rows = share.quantize(params, masks, share.Plan(k=16, vector_size=1))
  chex.assert_trees_all_equal(ones, scalar)
  kernels = [leaf for leaf in jax.tree.leaves(ones, is_leaf=share.is_shared) if share.is_shared(leaf)]
  assert one_rows == scalar_rows and kernels and all(kernel.vector_size == 1 for kernel in kernels)


@pytest.mark.parametrize("d", [2, 4, 5, 9])  # 45 inputs: 5 and 9 divide them, 2 and 4 leave a padded last vector.
def test_vector_quantize_gives_a_codebook_of_vectors_and_an_index_per_vector(d):
  params, masks = _pruned_conv()
  shared, rows = share.quantize(params, masks, share.Plan(k=8, vector_size=d, init="kmeans++"))
  kernel = shared["conv"]["kernel"]
  chex.assert_shape(kernel.codebook, (8, d))
  chex.assert_shape(kernel.indices, (6, -(-45 // d)))
  x, m = share.vectors(np.asarray(params["conv"]["kernel"]), d), share.vectors(np.asarray(masks["conv"]["kernel"]), d)
  assert np.all(np.asarray(kernel.indices)[~m.any(-1)] == 0) and rows[0]["vectors"] == int(m.any(-1).sum())
  expected = np.where(m, np.asarray(kernel.codebook)[np.asarray(kernel.indices)], 0.0)  # codebook[index][j] * mask.
  np.testing.assert_array_equal(share.vectors(np.asarray(kernel.materialize()), d), expected)
  np.testing.assert_allclose(np.sum((expected - x) ** 2), rows[0]["inertia"], rtol=1e-4)


@pytest.mark.parametrize("reduction", share.REDUCTIONS)
@pytest.mark.parametrize("with_kept_weights", [False, True])
@pytest.mark.parametrize("d", [2, 4])
def test_vector_centroid_gradient_is_autodiff_of_the_masked_vector_gather(reduction, with_kept_weights, d):
  params, masks = _pruned_conv()
  kernel = share.quantize(params, masks, share.Plan(k=6, vector_size=d, init="random"))[0]["conv"]["kernel"]
  codebook, indices, mask = kernel.codebook, kernel.indices, kernel.mask
  kept = share.kept_weights(indices, mask, vector_size=d) if with_kept_weights else None
  target = jax.random.normal(jax.random.key(1), mask.shape)

  def loss(weights):
    return jnp.sum(jnp.sin(weights * target))

  def by_hand(c):  # codebook[index][j] * mask, laid back out as the kernel: autodiff's own gather.
    padded = c[indices].reshape(6, -1)[:, :45].reshape(6, 3, 3, 5)
    return jnp.moveaxis(padded, 0, -1) * mask

  ours = jax.jit(jax.grad(lambda c: loss(share.lookup(c, indices, mask, reduction, kept, 0, d))))(codebook)
  autodiff = jax.grad(lambda c: loss(by_hand(c)))(codebook)
  if reduction == "mean":
    counts = np.zeros((6, d))
    np.add.at(counts, np.asarray(indices), share.vectors(np.asarray(mask), d))
    autodiff = autodiff / np.maximum(counts, 1)
  chex.assert_shape(ours, (6, d))
  chex.assert_trees_all_close(ours, autodiff, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(ours)).max() > 0
