"""Channel pruning of VGG: the L1 on BatchNorm scales, choosing channels to a FLOPs target, removing them, FLOPs."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import lenet5, tiny
from dc_jax import experiment, flops, models, provenance, slimming
from dc_jax.errors import ConfigError
from dc_jax.models import vgg

DEPTH, CLASSIFIER = 11, (16,)


def _model(channels=()):
  return models.create_model("vgg", 10, depth=DEPTH, width=1 / 16, channels=channels, classifier_widths=CLASSIFIER,
                             dropout=0.0)


@pytest.fixture(scope="module")
def trained_like():
  """A small VGG11's variables with random BatchNorm scales, biases and statistics, as training leaves them."""
  variables = jax.jit(_model().init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(0)

  def perturb(path, leaf):
    name = jax.tree_util.keystr(path)
    if "var" in name:
      return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), jnp.float32)
    if re.search("bn|mean", name):
      return jnp.asarray(rng.standard_normal(leaf.shape), jnp.float32)
    return leaf

  return jax.tree_util.tree_map_with_path(perturb, variables)


def _random_keep(variables, seed):
  rng = np.random.default_rng(seed)
  keep = {}
  for name in vgg.conv_names(DEPTH):
    size = variables["params"][name]["kernel"].shape[-1]
    kept = rng.random(size) < 0.6
    kept[rng.integers(size)] = True
    keep[name] = kept
  return keep


@pytest.mark.parametrize("seed", [0, 1])
def test_the_shrunk_model_gives_the_masked_full_models_logits(trained_like, seed):
  keep = _random_keep(trained_like, seed)
  small, channels = slimming.shrink(trained_like, keep, DEPTH)
  assert channels == tuple(int(k.sum()) for k in keep.values())
  images = jax.random.normal(jax.random.key(seed), (4, 32, 32, 3))
  masked = _model().apply(slimming.mask_channels(trained_like, keep, DEPTH), images)
  shrunk = _model(channels).apply(small, images)
  chex.assert_trees_all_close(shrunk, masked, atol=1e-5, rtol=1e-5)
  # The masking matters: the full model's logits differ.
  assert not np.allclose(_model().apply(trained_like, images), masked, atol=1e-3)


def test_folding_keeps_the_constant_of_a_removed_channel_exactly_where_it_feeds_the_classifier(trained_like):
  # Channels removed from the last conv only, with gamma = 0 (as the L1 leaves them) and beta kept.
  last = vgg.conv_names(DEPTH)[-1]
  keep = {name: np.ones(trained_like["params"][name]["kernel"].shape[-1], bool) for name in vgg.conv_names(DEPTH)}
  keep[last][::2] = False
  params = dict(trained_like["params"])
  bn = last.replace("conv", "bn")
  params[bn] = {**params[bn], "scale": jnp.where(jnp.asarray(keep[last]), params[bn]["scale"], 0.0)}
  full = {**trained_like, "params": params}
  small, channels = slimming.shrink(full, keep, DEPTH, fold_constants=True)
  images = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))
  chex.assert_trees_all_close(_model(channels).apply(small, images), _model().apply(full, images), atol=1e-5,
                              rtol=1e-5)
  unfolded, _ = slimming.shrink(full, keep, DEPTH)
  assert not np.allclose(_model(channels).apply(unfolded, images), _model().apply(full, images), atol=1e-3)


def test_shrink_keeps_names_and_removes_inputs_outputs_and_statistics(trained_like):
  keep = _random_keep(trained_like, 2)
  small, channels = slimming.shrink(trained_like, keep, DEPTH)
  expected = jax.eval_shape(_model(channels).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  chex.assert_trees_all_equal_shapes(small, expected)
  kept = np.flatnonzero(keep["conv1_1"])
  np.testing.assert_array_equal(small["batch_stats"]["bn1_1"]["mean"], trained_like["batch_stats"]["bn1_1"]["mean"][kept])
  np.testing.assert_array_equal(small["params"]["conv2_1"]["kernel"],
                                trained_like["params"]["conv2_1"]["kernel"][:, :, kept][..., keep["conv2_1"]])
  assert trained_like["params"]["conv1_1"]["kernel"].shape[-1] == 4  # Pure: the input is left as it was.


def test_flops_and_params_of_the_shrunk_model_are_counted_from_its_shapes(trained_like):
  keep = _random_keep(trained_like, 3)
  small, channels = slimming.shrink(trained_like, keep, DEPTH)
  before, after = flops.count(_model(), (32, 32, 3)), flops.count(_model(channels), (32, 32, 3))
  assert after[1]["params"] == sum(leaf.size for leaf in jax.tree.leaves(small["params"]))
  for channel_counts, (_, totals) in ((vgg.conv_channels(DEPTH, 1 / 16), before), (channels, after)):
    assert slimming.vgg_flops(channel_counts, DEPTH, CLASSIFIER, 10) == totals["flops"]
  row = slimming.summary(before, after)
  assert row["flops_after"] < row["flops"] and row["params_after"] < row["params"]


def test_flops_count_lenet5_and_vgg19_as_published():
  _, lenet = flops.count(models.create_model("lenet5", 10), (28, 28, 1))
  assert lenet == {"params": 431080, "flops": 2293000}
  layers, full = flops.count(models.create_model("vgg", 10), (32, 32, 3))
  # Network slimming's Table 1: VGGNet on CIFAR-10, 3.98e8 FLOPs in the convs (our 4096-4096 head adds 18.9M).
  assert round(sum(r["flops"] for r in layers if r["layer"].startswith("conv")) / 1e6) == 398
  assert full["params"] == 38958922


@pytest.mark.parametrize("scope", slimming.SCOPES)
@pytest.mark.parametrize("target", [0.7, 0.4, 0.2])
def test_select_channels_meets_the_flops_target_with_the_largest_scales(trained_like, scope, target):
  params = trained_like["params"]
  keep = slimming.select_channels(params, DEPTH, CLASSIFIER, 10, target, scope)
  channels = [int(k.sum()) for k in keep.values()]
  full = vgg.conv_channels(DEPTH, 1 / 16)
  assert slimming.vgg_flops(channels, DEPTH, CLASSIFIER, 10) <= target * slimming.vgg_flops(full, DEPTH, CLASSIFIER, 10)
  assert min(channels) >= 1
  gammas = slimming.scales(params, DEPTH)
  for kept, gamma in zip(keep.values(), gammas):  # Within a layer, every kept |gamma| beats every removed one.
    if not kept.all():
      assert gamma[kept].min() >= gamma[~kept].max()
  if scope == "global":  # One threshold, but for layers held at their last channel.
    removed = np.concatenate([g[~k] for g, k in zip(gammas, keep.values())])
    kept = np.concatenate([g[k] for g, k in zip(gammas, keep.values()) if k.sum() > 1])
    assert removed.max() <= kept.min()


@pytest.mark.parametrize("scope", slimming.SCOPES)
def test_select_channels_keeps_multiples_of_the_given_count(scope):
  params = jax.eval_shape(models.create_model("vgg", 10, width=1 / 4, classifier_widths=()).init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda leaf: rng.standard_normal(leaf.shape).astype(np.float32), params)
  keep = slimming.select_channels(params, 19, (), 10, 0.4, scope, multiple=8)
  channels = [int(k.sum()) for k in keep.values()]
  assert all(c % 8 == 0 for c in channels), channels
  full = vgg.conv_channels(19, 1 / 4)
  assert slimming.vgg_flops(channels, 19, (), 10) <= 0.4 * slimming.vgg_flops(full, 19, (), 10)


def test_select_channels_rejects_a_bad_target_or_scope(trained_like):
  with pytest.raises(ConfigError, match=re.escape("flops_fraction=0.0")):
    slimming.select_channels(trained_like["params"], DEPTH, CLASSIFIER, 10, 0.0)
  with pytest.raises(ConfigError, match=re.escape("scope='net'")):
    slimming.select_channels(trained_like["params"], DEPTH, CLASSIFIER, 10, 0.5, "net")


def test_bn_scale_l1_adds_the_subgradient_to_the_scales_only(trained_like):
  params = trained_like["params"]
  weights = slimming.l1_weights(params, DEPTH, CLASSIFIER, 10)
  tx = slimming.bn_scale_l1(0.1, weights)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  chex.assert_trees_all_close(updates["bn1_1"]["scale"], 0.1 * jnp.sign(params["bn1_1"]["scale"]))
  chex.assert_trees_all_equal(updates["bn1_1"]["bias"], zeros["bn1_1"]["bias"])
  chex.assert_trees_all_equal(updates["conv1_1"], zeros["conv1_1"])


def test_flops_weights_follow_each_channels_cost_with_mean_one(trained_like):
  params = trained_like["params"]
  weights = slimming.l1_weights(params, DEPTH, CLASSIFIER, 10, flops_weighted=True)
  scales = [np.asarray(weights[name.replace("conv", "bn")]["scale"]) for name in vgg.conv_names(DEPTH)]
  np.testing.assert_allclose(np.concatenate(scales).mean(), 1.0, rtol=1e-6)
  channels = vgg.conv_channels(DEPTH, 1 / 16)
  costs = slimming.channel_costs(channels, DEPTH, CLASSIFIER, 10)
  # VGG11's conv1_1 (32x32 maps, 3 inputs) feeds conv2_1 (16x16 maps after the pool, 8 outputs).
  assert costs[0] == 32 * 32 * 9 * 3 + 16 * 16 * 9 * 8
  np.testing.assert_allclose([s[0] / scales[0][0] for s in scales], np.array(costs) / costs[0], rtol=1e-6)


def test_training_with_the_l1_shrinks_the_scales():
  model = _model()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  images = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  labels = jnp.arange(8) % 10

  def loss(params, stats):
    logits, _ = model.apply({"params": params, "batch_stats": stats}, images, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def total_scale(strength):
    weights = slimming.l1_weights(variables["params"], DEPTH, CLASSIFIER, 10)
    tx = optax.chain(slimming.bn_scale_l1(strength, weights), optax.sgd(0.01))
    params, state = variables["params"], tx.init(variables["params"])
    for _ in range(5):
      updates, state = tx.update(jax.grad(loss)(params, variables["batch_stats"]), state, params)
      params = optax.apply_updates(params, updates)
    return sum(float(jnp.abs(s).sum()) for s in slimming.scales(params, DEPTH))

  assert total_scale(1.0) < total_scale(0.0) - 1.0


@pytest.mark.parametrize("module, fields, message", [
    (lenet5, {"train.bn_scale_l1": 1e-4}, "train.bn_scale_l1=0.0001 regularises BatchNorm scales; model.name='lenet5'"),
    (tiny, {"train.bn_scale_l1_flops": True}, "train.bn_scale_l1_flops=True has no effect"),
    (tiny, {"train.bn_scale_l1": -1.0}, "train.bn_scale_l1=-1.0 is not valid"),
    (tiny, {"model.channels": (4, 8)}, "model.width=0.0625 has no effect: model.channels gives every conv's channels"),
    (tiny, {"model.channels": (4, 8), "model.width": 1.0}, "model.channels has 2 entries; valid: one per conv, 8"),
])
def test_slimming_settings_that_do_not_fit_are_one_config_error(module, fields, message):
  config = module.get_config()
  config.unlock()
  for field, value in fields.items():
    section, name = field.split(".")
    config[section][name] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    experiment.Experiment.from_config(config)


def test_a_shrunk_vgg_is_one_config_setting():
  config = tiny.get_config()
  config.model.width, config.model.channels = 1.0, (3, 5, 7, 9, 2, 4, 6, 8)
  plan = experiment.Experiment.from_config(config)
  assert plan.model["channels"] == (3, 5, 7, 9, 2, 4, 6, 8)


def test_slimming_settings_are_dependencies_of_the_baseline_and_so_of_every_stage():
  config = tiny.get_config()
  for field in ("train.bn_scale_l1", "train.bn_scale_l1_flops", "model.channels"):
    assert all(field in provenance.stage_fields(config, stage) for stage in provenance.ORDER)
