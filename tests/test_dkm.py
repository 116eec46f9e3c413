"""Differentiable k-means: its gradient, its hard limit, masks through fine-tuning, snapping to SharedKernels."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from configs import lenet5
from dc_jax import dkm, experiment, models, prune, provenance, share, train
from dc_jax.errors import ConfigError


def _pruned_lenet(kept: float = 0.1):
  model = models.LeNet300100()
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  masks = prune.layer_fraction(params, kept)
  return model, prune.apply_masks(params, masks), masks


def _batch(seed: int):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.random((32, 28, 28, 1), np.float32)),
          "label": jnp.asarray(rng.integers(0, 10, 32), jnp.int32)}


def _dkm_state(k: int = 4, plan: dkm.Plan = dkm.Plan(), train_unshared: bool = True):
  model, params, masks = _pruned_lenet()
  shared, _ = share.quantize(params, masks, share.Plan(k=k))
  state = dkm.DKMTrainState.create(apply_fn=model.apply, params=params,
                                   tx=dkm.optimizer(optax.sgd(0.05, momentum=0.9), shared, masks, train_unshared),
                                   soft=dkm.start(shared, params), plan=plan)
  return state, shared, masks


def test_gradient_through_the_iterations_matches_finite_differences():
  weights = jax.random.normal(jax.random.key(0), (12,), jnp.float32)
  centroids = jnp.asarray([-1.0, 0.0, 1.2])
  target = jax.random.normal(jax.random.key(1), (12,))

  def loss(w):
    soft, c = dkm.soft_cluster(w, centroids, jnp.float32(0.3), 3)
    return jnp.sum(jnp.sin(soft * target)) + jnp.sum(c ** 2)

  check_grads(loss, (weights,), order=1, modes=("rev",), eps=1e-3, atol=2e-2, rtol=2e-2)
  assert float(jnp.abs(jax.grad(loss)(weights)).max()) > 0.0


def test_at_a_low_temperature_soft_weights_are_the_nearest_centroids():
  weights = jax.random.normal(jax.random.key(0), (200,))
  centroids = jnp.asarray([-1.5, -0.5, 0.5, 1.5])
  soft, final = dkm.soft_cluster(weights, centroids, jnp.float32(1e-6), 1)
  nearest = final[jnp.argmin(jnp.abs(weights[:, None] - final[None, :]), axis=1)]
  chex.assert_trees_all_close(soft, nearest, atol=1e-5)
  # One iteration moved the centroids as one of Lloyd's would: to the means of their members.
  members = jnp.argmin(jnp.abs(weights[:, None] - centroids[None, :]), axis=1)
  chex.assert_trees_all_close(final, jnp.asarray([weights[members == j].mean() for j in range(4)]), atol=1e-4)


def test_a_centroid_no_weight_is_near_stays_where_it_was():
  soft, final = dkm.soft_cluster(jnp.asarray([0.0, 0.1, 0.2]), jnp.asarray([0.1, 50.0]), jnp.float32(1e-3), 3)
  assert float(final[1]) == 50.0 and bool(jnp.all(jnp.isfinite(soft)))


def test_finetuning_moves_kept_weights_and_keeps_pruned_weights_at_exactly_zero():
  state, _, masks = _dkm_state()
  before, initial = state.params, state.soft
  for step in range(3):
    state, _ = train.train_step(state, _batch(step), jax.random.key(0))
  for name in ("ip1", "ip2", "ip3"):
    mask = np.asarray(masks[name]["kernel"])
    weights = np.asarray(state.params[name]["kernel"])
    assert np.all(weights[~mask] == 0.0)
    assert np.all(np.asarray(state.variables(state.params)["params"][name]["kernel"])[~mask] == 0.0)
    assert not np.allclose(weights[mask], np.asarray(before[name]["kernel"])[mask])
  assert not np.allclose(state.soft["ip1"]["kernel"].centroids, initial["ip1"]["kernel"].centroids)  # Carried.


def test_without_unshared_training_biases_stay_as_they_were():
  state, _, _ = _dkm_state(train_unshared=False)
  after, _ = train.train_step(state, _batch(0), jax.random.key(0))
  chex.assert_trees_all_equal(after.params["ip1"]["bias"], state.params["ip1"]["bias"])
  assert not np.array_equal(after.params["ip1"]["kernel"], state.params["ip1"]["kernel"])


def test_snap_gives_shared_kernels_whose_weights_are_their_nearest_final_centroid():
  state, shared, masks = _dkm_state(k=8)
  for step in range(2):
    state, _ = train.train_step(state, _batch(step), jax.random.key(0))
  snapped = dkm.snap(state)
  final = dkm.advance(state.params, state.soft, state.plan)
  dense = share.materialize(snapped)
  for name in ("ip1", "ip2", "ip3"):
    kernel, mask = snapped[name]["kernel"], np.asarray(masks[name]["kernel"])
    assert share.is_shared(kernel) and kernel.indices.dtype == np.uint8 and kernel.codebook.shape == (8,)
    np.testing.assert_array_equal(kernel.mask, mask)
    assert np.all(np.asarray(kernel.indices)[~mask] == 0) and np.all(np.diff(np.asarray(kernel.codebook)) >= 0)
    np.testing.assert_array_equal(np.sort(np.asarray(kernel.codebook)), np.sort(final[name]["kernel"].centroids))
    weights, codebook = np.asarray(state.params[name]["kernel"]), np.asarray(kernel.codebook)
    nearest = codebook[np.abs(weights[mask][:, None] - codebook[None, :]).argmin(axis=1)]
    np.testing.assert_array_equal(np.asarray(dense[name]["kernel"])[mask], nearest)
    assert np.all(np.asarray(dense[name]["kernel"])[~mask] == 0.0)
  chex.assert_trees_all_equal(snapped["ip1"]["bias"], state.params["ip1"]["bias"])
  chex.assert_trees_all_equal_structs(jax.tree.map(np.shape, snapped, is_leaf=share.is_shared),
                                      jax.tree.map(np.shape, shared, is_leaf=share.is_shared))


def test_temperature_scale_is_the_layers_kmeans_mean_squared_error():
  _, params, masks = _pruned_lenet()
  shared, rows = share.quantize(params, masks, share.Plan(k=4))
  soft = dkm.start(shared, params)
  for row in rows:
    layer, _ = row["layer"].split("/")
    assert float(soft[layer]["kernel"].scale) == pytest.approx(row["inertia"] / row["kept"], rel=1e-4)
  assert soft["ip1"]["bias"] is None


@pytest.mark.parametrize("fields, message", [
    ({"iterations": 0}, "share.dkm_iterations=0"),
    ({"iterations": 2.5}, "share.dkm_iterations=2.5"),
    ({"temperature": 0.0}, "share.dkm_temperature=0.0"),
])
def test_bad_plan_is_a_config_error_naming_the_field(fields, message):
  with pytest.raises(ConfigError, match=message):
    dkm.Plan(**fields)


def test_the_dkm_fields_are_settings_of_sharing_and_what_follows_it_not_of_pruning():
  config = lenet5.get_config()
  for field in ("share.method", "share.dkm_iterations", "share.dkm_temperature"):
    assert all(field in provenance.stage_fields(config, stage) for stage in ("shared", "encoded", "sweep k=4"))
    assert field not in provenance.stage_fields(config, "pruned")


def test_a_centroid_reduction_with_dkm_is_an_error_naming_both():
  config = lenet5.get_config()
  config.share.method, config.share.reduction = "dkm", "mean"
  with pytest.raises(ConfigError, match="share.reduction='mean' has no effect: share.method='dkm'"):
    experiment.Experiment.from_config(config)
  config.share.reduction = "sum"
  assert experiment.Experiment.from_config(config).dkm == dkm.Plan()


def test_per_channel_codebooks_with_dkm_are_an_error_naming_both():
  config = lenet5.get_config()
  config.share.method, config.share.granularity = "dkm", "channel"
  with pytest.raises(ConfigError, match="share.granularity='channel' has no effect: share.method='dkm'"):
    experiment.Experiment.from_config(config)
