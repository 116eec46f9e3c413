"""Pruning: each criterion's masks, schedules, the masking transform under real optimizers, the report."""

import json
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from dc_jax import data, models, prune, rules, train
from dc_jax.errors import ConfigError
from tests.conftest import synthetic_dataset


@pytest.fixture(scope="module")
def lenet():
  """LeNet-300-100's parameters, LeCun-normal, drawn by numpy: init would take seconds to compile."""
  shapes = jax.eval_shape(models.LeNet300100().init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: (rng.standard_normal(s.shape) / np.sqrt(s.shape[0])).astype(np.float32), shapes)


def _random_params(seed: int, scales=(1.0, 1.0)):
  """A conv + BatchNorm + dense tree, like VGG's layers but tiny."""
  rng = np.random.default_rng(seed)
  normal = lambda shape, scale: (scale * rng.standard_normal(shape)).astype(np.float32)
  return {"conv1": {"kernel": normal((3, 3, 2, 4), scales[0]), "bias": normal((4,), 1.0)},
          "bn1": {"scale": normal((4,), 1.0), "bias": normal((4,), 1.0)},
          "fc1": {"kernel": normal((16, 10), scales[1]), "bias": normal((10,), 1.0)}}


def _fit(params, tx, opt_state, steps):
  """`steps` full-batch steps of LeNet-300-100 on fixed random data."""
  model = models.LeNet300100()
  images = jax.random.normal(jax.random.key(1), (32, 28, 28, 1))
  labels = jax.random.randint(jax.random.key(2), (32,), 0, 10)

  def loss(p):
    logits = model.apply({"params": p}, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def step(carry, _):
    p, s = carry
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return (optax.apply_updates(p, updates), s), None

  (params, opt_state), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))((params, opt_state))
  return params, opt_state


def _pruned_weights_are_zero(params, masks) -> bool:
  leaves = zip(jax.tree.leaves(params), jax.tree.leaves(masks))
  return all(np.all(np.asarray(w)[~np.asarray(m)] == 0.0) for w, m in leaves)


def _revives(new, old) -> bool:
  return any(np.any(np.asarray(n) & ~np.asarray(o)) for n, o in zip(jax.tree.leaves(new), jax.tree.leaves(old)))


SGD_WITH_DECAY = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))


@pytest.mark.parametrize("inner", [SGD_WITH_DECAY, optax.adam(1e-3)], ids=["sgd_momentum_decay", "adam"])
def test_masked_optimizer_keeps_pruned_weights_at_exactly_zero_and_trains_the_rest(lenet, inner):
  masks = prune.layer_fraction(lenet, 0.2)
  params = prune.apply_masks(lenet, masks)
  tx = prune.masked(inner, masks)
  trained, opt_state = _fit(params, tx, tx.init(params), steps=100)
  assert _pruned_weights_are_zero(trained, masks)
  chex.assert_trees_all_equal(prune.masks_of(opt_state), masks)
  moved = jax.tree.map(lambda a, b, m: np.mean(np.asarray(a)[m] != np.asarray(b)[m]), trained, params, masks)
  assert min(jax.tree.leaves(moved)) > 0.5, moved  # All but the biases of dead ReLUs.
  chex.assert_tree_all_finite(trained)


def test_masking_only_gradients_lets_momentum_from_before_pruning_move_pruned_weights(lenet):
  # Dense training first, as when pruning a trained net while keeping its optimizer state.
  _, dense_state = _fit(lenet, SGD_WITH_DECAY, SGD_WITH_DECAY.init(lenet), steps=5)
  masks = prune.layer_fraction(lenet, 0.2)
  params = prune.apply_masks(lenet, masks)
  grads_only = optax.chain(optax.stateless(lambda g, _: prune.apply_masks(g, masks)), SGD_WITH_DECAY)
  leaked, _ = _fit(params, grads_only, (optax.EmptyState(), dense_state), steps=3)
  assert not _pruned_weights_are_zero(leaked, masks)
  kept_at_zero, _ = _fit(params, prune.masked(SGD_WITH_DECAY, masks), prune.MaskedState(masks, dense_state), 3)
  assert _pruned_weights_are_zero(kept_at_zero, masks)


def test_masks_are_checkpointed_and_enforced_by_the_train_step(lenet, tmp_path):
  dataset = synthetic_dataset("mnist", n_train=32)
  masks = prune.global_fraction(lenet, 0.05)
  state = train.TrainState.create(apply_fn=models.LeNet300100().apply, params=prune.apply_masks(lenet, masks),
                                  batch_stats={}, tx=prune.masked(optax.adam(1e-3), masks))
  for batch in data.train_batches(dataset, 16, seed=0, epoch=0, augmentation=None):
    state, _ = train.train_step(state, batch, jax.random.key(1))
  assert _pruned_weights_are_zero(state.params, masks)
  manager = train.checkpoint_manager(tmp_path)
  manager.save(int(state.step), args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  unpruned = prune.masked(optax.adam(1e-3), prune.all_kept(lenet))
  restored = train.restore_latest(manager, state.replace(opt_state=unpruned.init(lenet)))
  chex.assert_trees_all_equal(prune.masks_of(restored.opt_state), masks)


def test_gradients_of_pruned_weights_do_not_reach_the_inner_optimizer():
  # Global-norm clipping would otherwise count the pruned gradient (norm 5, not 3).
  masks = {"w": jnp.array([True, False])}
  tx = prune.masked(optax.clip_by_global_norm(1.0), masks)
  params = {"w": jnp.array([1.0, 0.0])}
  updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
  chex.assert_trees_all_close(updates, {"w": jnp.array([1.0, 0.0])})


def test_masks_of_finds_the_masks_inside_a_chain(lenet):
  masks = prune.layer_fraction(lenet, 0.5)
  tx = optax.chain(optax.clip_by_global_norm(1.0), prune.masked(optax.sgd(0.1), masks))
  chex.assert_trees_all_equal(prune.masks_of(tx.init(lenet)), masks)


def test_apply_masks_zeroes_pruned_nan_and_inf():
  params = {"w": jnp.array([jnp.nan, jnp.inf, 2.0])}
  masks = {"w": jnp.array([False, False, True])}
  chex.assert_trees_all_equal(prune.apply_masks(params, masks), {"w": jnp.array([0.0, 0.0, 2.0])})


@pytest.mark.parametrize("fraction", [0.1, 0.35, 0.5, 0.9, 1.0])
def test_layer_fraction_keeps_exactly_round_fraction_of_each_layer_despite_ties(fraction):
  rng = np.random.default_rng(0)
  params = {"a": {"kernel": rng.integers(-2, 3, (7, 9)).astype(np.float32)},  # Many equal magnitudes.
            "b": {"kernel": rng.integers(-1, 2, (13,)).astype(np.float32)}}
  masks = prune.layer_fraction(params, fraction)
  for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
    assert int(m.sum()) == round(fraction * w.size)
    if not m.all():
      assert np.abs(w[m]).min() >= np.abs(w[~m]).max()


def test_layer_fraction_breaks_ties_by_position():
  masks = prune.layer_fraction({"kernel": jnp.ones(10)}, 0.3)
  np.testing.assert_array_equal(masks["kernel"], np.arange(10) < 3)


def test_layer_fraction_per_regex_first_match_wins_and_a_layer_without_a_rule_is_an_error():
  params = _random_params(0)
  masks = prune.layer_fraction(params, [("fc1/.*", 0.5), (".*", 0.25)])
  assert [int(masks[name]["kernel"].sum()) for name in ("conv1", "fc1")] == [18, 80]
  with pytest.raises(ConfigError, match=re.escape("fraction has no pattern matching 'conv1/kernel'")):
    prune.layer_fraction(params, [("fc1/.*", 0.5)])


def test_global_fraction_keeps_an_exact_total_under_one_shared_threshold():
  params = _random_params(0, scales=(0.1, 1.0))
  old = prune.layer_fraction(params, 0.8)
  masks = prune.global_fraction(params, 0.3, old)
  kernels = [params[name]["kernel"] for name in ("conv1", "fc1")]
  kept = [masks[name]["kernel"] for name in ("conv1", "fc1")]
  assert sum(int(m.sum()) for m in kept) == round(0.3 * sum(w.size for w in kernels))
  all_kept = np.concatenate([np.abs(w[m]) for w, m in zip(kernels, kept)])
  all_pruned = np.concatenate([np.abs(w[~m]) for w, m in zip(kernels, kept)])
  assert all_kept.min() >= all_pruned.max()
  assert kept[0].mean() < 0.1 < 0.4 < kept[1].mean()  # One threshold: the layer of small weights loses most.
  assert not _revives(masks, old)


def test_global_fraction_is_exact_with_ties_across_layers():
  params = {"a": {"kernel": jnp.ones(7)}, "b": {"kernel": jnp.ones(6)}}
  masks = prune.global_fraction(params, 0.7)  # round(0.7 * 13) = 9: all of a, then b's first two.
  np.testing.assert_array_equal(masks["a"]["kernel"], np.ones(7, bool))
  np.testing.assert_array_equal(masks["b"]["kernel"], np.arange(6) < 2)


def test_han_threshold_prunes_exactly_the_weights_below_q_std():
  params = _random_params(1)
  masks = prune.han_threshold(params, 0.7)
  for name in ("conv1", "fc1"):
    w = np.asarray(params[name]["kernel"], np.float64)
    np.testing.assert_array_equal(masks[name]["kernel"], np.abs(w) >= 0.7 * w.std())
  # A second round measures the std of the survivors only.
  again = prune.han_threshold(params, [("conv1/.*", 0.5), (".*", 1.2)], masks)
  for name, q in (("conv1", 0.5), ("fc1", 1.2)):
    w, m = np.asarray(params[name]["kernel"], np.float64), np.asarray(masks[name]["kernel"])
    np.testing.assert_array_equal(again[name]["kernel"], m & (np.abs(w) >= q * w[m].std()))


def test_default_patterns_select_only_kernels():
  selected = prune.select(_random_params(0))
  assert selected == {"conv1": {"kernel": True, "bias": False}, "bn1": {"scale": False, "bias": False},
                      "fc1": {"kernel": True, "bias": False}}


def test_a_pattern_prunes_only_the_parameters_it_names(lenet):
  masks = prune.layer_fraction(lenet, 0.1, patterns=["ip1/kernel"])
  untouched = {path: bool(m.all()) for path, m in jax.tree_util.tree_flatten_with_path(masks)[0]}
  assert [rules.path_name(path) for path, whole in untouched.items() if not whole] == ["ip1/kernel"]


def test_patterns_must_match_a_whole_path():
  with pytest.raises(ConfigError, match=re.escape("prune.patterns: pattern 'conv1' matches no parameter")):
    prune.select(_random_params(0), ["conv1"])


@pytest.mark.parametrize("plan", [
    prune.Plan("layer", "geometric", rounds=4, kept_fraction=0.2),
    prune.Plan("global", "polynomial", rounds=4, kept_fraction=0.2),
    prune.Plan("threshold", "han", rounds=4, quality=0.5),
], ids=lambda plan: plan.criterion)
def test_iterative_pruning_never_revives_a_weight(plan):
  masks = None
  for round_index in range(plan.rounds):
    # New weights each round, as retraining would give (pruned ones large, to tempt a revival).
    params = jax.tree.map(lambda w: 10 * w, _random_params(round_index))
    new = plan.prune(params, masks, round_index)
    if masks is not None:
      assert not _revives(new, masks)
    masks = new
  kernels = [masks[name]["kernel"] for name in ("conv1", "fc1")]
  if plan.criterion == "layer":
    assert [int(m.sum()) for m in kernels] == [round(0.2 * m.size) for m in kernels]
  if plan.criterion == "global":
    assert sum(int(m.sum()) for m in kernels) == round(0.2 * sum(m.size for m in kernels))


@pytest.mark.parametrize("schedule", ["geometric", "polynomial"])
@pytest.mark.parametrize("final, rounds", [(0.1, 1), (0.08, 3), (0.03, 5)])
def test_schedules_fall_monotonically_to_exactly_the_kept_fraction(schedule, final, rounds):
  fractions = [prune.scheduled_fraction(schedule, final, rounds, t) for t in range(rounds)]
  assert fractions[-1] == final
  assert all(a > b for a, b in zip([1.0, *fractions], fractions))


def test_geometric_keeps_a_constant_share_and_polynomial_follows_the_cubic():
  geometric = [prune.scheduled_fraction("geometric", 0.001, 3, t) for t in range(3)]
  np.testing.assert_allclose(geometric, [0.1, 0.01, 0.001], rtol=1e-12)
  np.testing.assert_allclose(prune.scheduled_fraction("polynomial", 0.1, 4, 1), 0.1 + 0.9 * 0.5 ** 3, rtol=1e-12)


def test_plan_gives_each_layer_its_own_schedule():
  plan = prune.Plan("layer", "geometric", rounds=2, kept_fraction=[("ip1/.*", 0.04), (".*", 0.25)])
  assert plan.fraction(0) == [("ip1/.*", pytest.approx(0.2)), (".*", pytest.approx(0.5))]
  assert plan.fraction(1) == [("ip1/.*", 0.04), (".*", 0.25)]


@pytest.mark.parametrize("fields, message", [
    (dict(kept_fraction=0.0), "prune.kept_fraction=0.0"),
    (dict(kept_fraction=1.5), "prune.kept_fraction=1.5"),
    (dict(kept_fraction=[("ip1/.*", 0.1), (".*", 2.0)]), "prune.kept_fraction=2.0"),
    (dict(criterion="global", kept_fraction=[(".*", 0.1)]), "prune.kept_fraction=[('.*', 0.1)]"),
    (dict(rounds=0), "prune.rounds=0"),
    (dict(rounds=2.5), "prune.rounds=2.5"),
    (dict(criterion="threshold", schedule="han", quality=0.0), "prune.quality=0.0"),
    (dict(criterion="random"), "prune.criterion='random'"),
    (dict(schedule="linear"), "prune.schedule='linear'"),
    (dict(criterion="threshold", schedule="geometric"), "prune.schedule='geometric' does not fit"),
    (dict(criterion="layer", schedule="han"), "prune.schedule='han' does not fit"),
])
def test_an_invalid_plan_is_a_config_error_naming_the_field(fields, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    prune.Plan(**fields)


@pytest.mark.parametrize("call, message", [
    (lambda p: prune.layer_fraction(p, 0.0), "fraction=0.0"),
    (lambda p: prune.global_fraction(p, 1.01), "fraction=1.01"),
    (lambda p: prune.han_threshold(p, -1.0), "quality=-1.0"),
    (lambda p: prune.scheduled_fraction("han", 0.1, 3, 0), "prune.schedule='han'"),
    (lambda p: prune.scheduled_fraction("geometric", 0.1, 0, 0), "prune.rounds=0"),
])
def test_invalid_criterion_arguments_are_config_errors(call, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    call(_random_params(0))


def test_report_counts_lenet300_100_as_in_the_paper(lenet):
  # Han et al. 2015, Table 2: ip1 keeps 8%, ip2 9%, ip3 26%: about 12x.
  masks = prune.layer_fraction(lenet, [("ip1/.*", 0.08), ("ip2/.*", 0.09), ("ip3/.*", 0.26)])
  layers, totals = prune.report(masks)
  assert [(r["layer"], r["weights"], r["kept"]) for r in layers] == [
      ("ip1/kernel", 235200, 18816), ("ip2/kernel", 30000, 2700), ("ip3/kernel", 1000, 260)]
  assert totals == {"weights": 266200, "kept": 21776, "kept_fraction": 21776 / 266200,
                    "compression_ratio": 266200 / 21776}
  assert round(totals["compression_ratio"]) == 12
  assert json.loads(json.dumps({"layers": layers, "totals": totals}))["totals"] == totals


def test_layer_fraction_never_prunes_a_layer_to_nothing():
  params = {"small": {"kernel": jnp.arange(1.0, 289.0).reshape(32, 9)}, "one": {"kernel": jnp.ones((1,))}}
  masks = prune.layer_fraction(params, 1e-4)
  assert int(masks["small"]["kernel"].sum()) == 1 and bool(masks["small"]["kernel"][-1, -1])
  assert int(prune.layer_fraction(params, 0.5)["one"]["kernel"].sum()) == 1  # round(0.5) would be 0.
  assert int(prune.global_fraction(params, 1e-4)["small"]["kernel"].sum()) == 1


def test_default_patterns_take_embeddings_and_boxed_paths_without_value():
  boxed = {"Embed_0": {"embedding": jnp.ones((4, 3))},
           "Dense_0": {"kernel": nn.LogicallyPartitioned(jnp.ones((3, 2)), ("a", "b")), "bias": jnp.ones(2)}}
  layers, _ = prune.report(prune.layer_fraction(boxed, 0.5))
  assert [row["layer"] for row in layers] == ["Dense_0/kernel", "Embed_0/embedding"]
