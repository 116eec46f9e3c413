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

from configs import lenet5
from dc_jax import codec, data, experiment, models, provenance, prune, rules, share, train
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
    prune.Plan("layer", rounds=3, structure="n:m", n=1, m=4),
    prune.Plan("layer", "geometric", rounds=4, kept_fraction=0.2, structure="block", block_shape=(2, 2)),
    prune.Plan("global", "polynomial", rounds=4, kept_fraction=0.2, structure="block", block_shape=(2, 4),
               block_score="l2"),
], ids=lambda plan: f"{plan.structure}-{plan.criterion}")
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
  if plan.structure != "unstructured":
    return
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
    (dict(structure="2:4"), "prune.structure='2:4' is not a structure"),
    (dict(structure="n:m", criterion="global"), "prune.criterion='global' does not fit prune.structure='n:m'"),
    (dict(structure="n:m", n=4, m=4), "prune.n=4, prune.m=4 is not an n:m structure"),
    (dict(structure="block", criterion="threshold", schedule="han"), "does not fit prune.structure='block'"),
    (dict(structure="block", block_shape=(0, 4)), "prune.block_shape=(0, 4)"),
    (dict(structure="block", block_shape=(4,)), "prune.block_shape=(4,)"),
    (dict(structure="block", block_score="max"), "prune.block_score='max'"),
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


# Structures.


def _groups_along_input(mask: np.ndarray, m: int) -> np.ndarray:
  """A (.., in, out) mask as rows of m consecutive entries along `in`, per output and (h, w): (groups, m)."""
  rows = np.moveaxis(np.asarray(mask), -2, -1)
  return rows.reshape(-1, m)


@pytest.mark.parametrize("shape", [(16, 5), (3, 3, 8, 6)], ids=["dense", "conv"])
@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (3, 8)])
def test_n_of_m_keeps_the_n_largest_of_every_m_along_the_input_axis(shape, n, m):
  w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  mask = np.asarray(prune.n_of_m({"k": {"kernel": w}}, n, m)["k"]["kernel"])
  groups, kept = _groups_along_input(np.abs(w), m), _groups_along_input(mask, m)
  assert np.all(kept.sum(axis=1) == n)
  smallest_kept = np.where(kept, groups, np.inf).min(axis=1)
  largest_pruned = np.where(kept, -np.inf, groups).max(axis=1)
  assert np.all(smallest_kept > largest_pruned)


def test_n_of_m_pads_an_input_axis_that_is_not_a_multiple_of_m():
  # in = 6: a group of 4 keeps 2, the short group of 2 keeps both; in = 1 (LeNet-5's conv1) keeps all.
  w = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
  mask = np.asarray(prune.n_of_m({"k": {"kernel": w}}, 2, 4)["k"]["kernel"])
  assert mask[:4].sum(axis=0).tolist() == [2, 2, 2] and mask[4:].all()
  assert np.asarray(prune.n_of_m({"k": {"kernel": np.ones((5, 5, 1, 20))}}, 2, 4)["k"]["kernel"]).all()


def test_n_of_m_among_survivors_never_keeps_a_pruned_weight():
  w = np.arange(1.0, 9.0, dtype=np.float32).reshape(8, 1)
  before = {"k": {"kernel": np.array([[True], [True], [False], [False], [True]] + [[False]] * 3)}}
  mask = np.asarray(prune.n_of_m({"k": {"kernel": w}}, 2, 4, before)["k"]["kernel"]).ravel()
  assert mask.tolist() == [True, True, False, False, True, False, False, False]


def _blocks(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  rows, cols = mask.shape[-2:]
  return mask.reshape(*mask.shape[:-2], rows // shape[0], shape[0], cols // shape[1], shape[1])


@pytest.mark.parametrize("score", prune.BLOCK_SCORES)
def test_block_fraction_keeps_whole_blocks_with_the_highest_scores(score):
  w = np.random.default_rng(1).standard_normal((3, 3, 8, 12)).astype(np.float32)
  mask = np.asarray(prune.block_fraction({"c": {"kernel": w}}, 0.25, (4, 4), score)["c"]["kernel"])
  blocks = _blocks(mask, (4, 4))
  assert np.all(blocks.all(axis=(-3, -1)) == blocks.any(axis=(-3, -1)))  # All of a block or none of it.
  kept = blocks.any(axis=(-3, -1))
  assert kept.sum() == round(0.25 * kept.size)
  values = _blocks(w, (4, 4))
  scores = (np.abs(values).mean(axis=(-3, -1)) if score == "mean_abs"
            else np.sqrt((values ** 2).sum(axis=(-3, -1))))
  assert scores[kept].min() > scores[~kept].max()


def test_block_fraction_across_layers_uses_one_threshold_and_cuts_edge_blocks():
  rng = np.random.default_rng(2)
  params = {"a": {"kernel": rng.standard_normal((10, 7)).astype(np.float32)},
            "b": {"kernel": 3 * rng.standard_normal((8, 8)).astype(np.float32)}}
  masks = prune.block_fraction(params, 0.5, (4, 4), across_layers=True)
  # a has 3 x 2 blocks (edge blocks 2 or 3 wide), b 2 x 2: half of the 10 blocks, mostly b's larger ones.
  a, b = np.asarray(masks["a"]["kernel"]), np.asarray(masks["b"]["kernel"])
  assert b.all() and a.shape == (10, 7)
  padded = np.zeros((12, 8), bool)
  padded[:10, :7] = a
  assert _blocks(padded, (4, 4)).any(axis=(-3, -1)).sum() == 1


@pytest.mark.parametrize("plan", [prune.Plan(structure="n:m", n=2, m=4),
                                  prune.Plan(kept_fraction=0.1, structure="block", block_shape=(4, 4))],
                         ids=["2:4", "block"])
def test_structured_masks_stay_exact_zeros_and_keep_their_structure_under_optax(lenet, plan):
  masks = plan.prune(lenet, None, 0)
  params = prune.apply_masks(lenet, masks)
  tx = prune.masked(SGD_WITH_DECAY, masks)
  trained, opt_state = _fit(params, tx, tx.init(params), steps=30)
  assert _pruned_weights_are_zero(trained, masks)
  chex.assert_trees_all_equal(prune.masks_of(opt_state), masks)
  nonzero = np.asarray(trained["ip1"]["kernel"]) != 0
  if plan.structure == "n:m":
    assert _groups_along_input(nonzero, 4).sum(axis=1).max() <= 2
  else:
    blocks = _blocks(nonzero, (4, 4))
    assert not np.any(blocks.any(axis=(-3, -1)) & ~np.asarray(_blocks(np.asarray(masks["ip1"]["kernel"]),
                                                                      (4, 4))).all(axis=(-3, -1)))


@pytest.mark.parametrize("plan", [prune.Plan(structure="n:m", n=2, m=4),
                                  prune.Plan(kept_fraction=0.2, structure="block", block_shape=(4, 4))],
                         ids=["2:4", "block"])
def test_structured_masks_round_trip_through_the_relative_index_file(plan, tmp_path):
  rng = np.random.default_rng(3)
  params = {"conv": {"kernel": rng.standard_normal((3, 3, 8, 16)).astype(np.float32)},
            "fc": {"kernel": rng.standard_normal((64, 10)).astype(np.float32)}}
  masks = plan.prune(params, None, 0)
  shared, _ = share.quantize(params, masks, share.Plan(k=8))
  codec.write(tmp_path / "m.dcz", {"params": shared}, index_bits="auto")
  back = codec.read(tmp_path / "m.dcz")["params"]
  for name in params:
    np.testing.assert_array_equal(np.asarray(back[name]["kernel"].mask), np.asarray(masks[name]["kernel"]))
    np.testing.assert_array_equal(np.asarray(back[name]["kernel"].materialize()),
                                  np.asarray(shared[name]["kernel"].materialize()))


def _lenet5_config(**prune_fields):
  config = lenet5.get_config()
  config.prune.layer_kept_fractions = ()
  config.prune.kept_fraction = 0.1
  config.prune.update(prune_fields)
  return config


def test_a_config_builds_the_structured_plan_it_names():
  plan = experiment.Experiment.from_config(_lenet5_config(structure="n:m", n=1, m=8)).pruning
  assert (plan.structure, plan.n, plan.m) == ("n:m", 1, 8)
  plan = experiment.Experiment.from_config(_lenet5_config(structure="block", block_shape=(2, 8))).pruning
  assert (plan.structure, plan.block_shape, plan.block_score) == ("block", (2, 8), "mean_abs")


@pytest.mark.parametrize("fields, message", [
    (dict(structure="n:m", kept_fraction=0.5), "prune.kept_fraction=0.5 has no effect: prune.structure='n:m' keeps 2"),
    (dict(n=1), "prune.n=1 has no effect: prune.structure='unstructured' has no n:m groups"),
    (dict(structure="n:m", block_shape=(2, 2)), "prune.block_shape=(2, 2) has no effect"),
    (dict(structure="block", block_shape=(4, 0)), "prune.block_shape=(4, 0) is not valid"),
    (dict(structure="n:m", n=5), "prune.n=5, prune.m=4 is not an n:m structure"),
])
def test_a_structure_setting_that_does_not_fit_is_one_config_error(fields, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    experiment.Experiment.from_config(_lenet5_config(**fields))


def test_structure_settings_are_dependencies_of_pruning_and_what_follows_not_of_the_baseline():
  config = lenet5.get_config()
  for field in ("prune.structure", "prune.n", "prune.m", "prune.block_shape", "prune.block_score"):
    assert field in provenance.stage_fields(config, "pruned") and field in provenance.stage_fields(config, "encoded")
    assert field not in provenance.stage_fields(config, "baseline")
