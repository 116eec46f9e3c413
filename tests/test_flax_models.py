"""Models as Flax users write them (nnx, layers in a list, partitioned, bf16, Embed + scanned LSTM), compressed end to end.

Each goes through the public API only: prune with momentum and weight decay,
share with codebook fine-tuning, write, read, apply; the logits from the
decoded file equal those of the compressed model in memory, bit for bit.
Tiny models, synthetic data, two steps per stage: the point is the plumbing.
"""

from collections.abc import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dc_jax import codec, flax_trees, prune, share

STEPS = 2


class NnxCNN(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.out = nnx.Linear(4 * 4 * 4, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.avg_pool(nnx.relu(self.conv(x)), (2, 2), (2, 2))
    return self.out(x.reshape((x.shape[0], -1)))


class NnxListMLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(64, 32, rngs=rngs), nnx.Linear(32, 32, rngs=rngs),
                            nnx.Linear(32, 10, rngs=rngs)])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for layer in self.layers[:-1]:
      x = nnx.relu(layer(x))
    return self.layers[-1](x)


class PartitionedMLP(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for name, features, axes in (("hidden", 32, ("embed", "mlp")), ("out", 10, ("mlp", "vocab"))):
      x = nn.Dense(features, name=name,
                   kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]))(x)
      x = nn.relu(x) if name == "hidden" else x
    return x


class Bf16CNN(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.Conv(4, (3, 3), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)(x))
    return nn.Dense(10, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)(x.reshape((x.shape[0], -1)))


class LSTMClassifier(nn.Module):
  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = nn.Embed(50, 8)(tokens)
    lstm = nn.scan(nn.OptimizedLSTMCell, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1)(features=8)
    carry = lstm.initialize_carry(jax.random.key(0), x[:, 0].shape)
    _, ys = lstm(carry, x)
    return nn.Dense(10)(ys[:, -1])


def _images(seed: int) -> tuple[jax.Array, jax.Array]:
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.random((8, 8, 8, 1), np.float32)), jnp.asarray(rng.integers(0, 10, 8))


def _tokens(seed: int) -> tuple[jax.Array, jax.Array]:
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 50, (8, 6))), jnp.asarray(rng.integers(0, 10, 8))


def _fit(loss: Callable, params, tx: optax.GradientTransformation, batch):
  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(loss)(params, *batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for _ in range(STEPS):
    params, opt_state = step(params, opt_state)
  return params


def _compress(apply: Callable, params, batch, tmp_path, plan: share.Plan):
  """Prune, share, fine-tune and write through the public API; returns (in-memory shared tree, decoded file)."""
  def loss(params, x, y):
    logits = apply(params, x).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  masks = prune.layer_fraction(params, 0.3)
  momentum_and_decay = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.05, momentum=0.9))
  params = _fit(loss, prune.apply_masks(params, masks), prune.masked(momentum_and_decay, masks), batch)
  for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
    assert not np.any(np.asarray(w, np.float32)[~np.asarray(m)])  # Momentum and decay moved no pruned weight.

  shared, rows = share.quantize(params, masks, plan)
  assert rows
  trainable, frozen = share.split(shared)
  tx = share.finetune_optimizer(optax.adam(1e-2), shared)  # Codebooks only.
  tuned = _fit(lambda t, x, y: loss(share.materialize_split(t, frozen), x, y), trainable, tx, batch)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), tuned, trainable)
  assert any(jax.tree.leaves(changed))
  shared = share.merge(tuned, frozen)
  path = tmp_path / "model.dcz"
  codec.write(path, {"params": shared}, index_bits=0)
  return shared, codec.read(path)["params"]


def _dtypes(tree) -> list:
  return [np.asarray(leaf).dtype for leaf in jax.tree.leaves(flax_trees.unbox(tree))]


@pytest.mark.parametrize("module", [NnxCNN, NnxListMLP])
def test_nnx_model_compresses_and_loads_back_with_the_same_logits(module, tmp_path):
  model = module(nnx.Rngs(0))
  batch = _images(0)
  shared, decoded = _compress(flax_trees.apply_fn(model), flax_trees.params(model), batch, tmp_path, share.Plan(bits=3))
  chex.assert_trees_all_equal(decoded, jax.tree.map(np.asarray, shared))  # Integer keys came back as integers.
  in_memory = flax_trees.apply_fn(model)(shared, batch[0])
  fresh = flax_trees.load(module(nnx.Rngs(1)), decoded)
  chex.assert_trees_all_equal(fresh(batch[0]), in_memory)


def test_nnx_state_takes_the_default_patterns_and_a_masked_nnx_optimizer():
  model = NnxCNN(nnx.Rngs(0))
  masks = prune.layer_fraction(nnx.state(model, nnx.Param), 0.3)  # Paths end in ".../kernel/value".
  nnx.update(model, prune.apply_masks(nnx.state(model, nnx.Param), masks))
  optimizer = nnx.Optimizer(model, prune.masked(optax.sgd(0.1, momentum=0.9), masks), wrt=nnx.Param)
  x, y = _images(0)
  grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean())(model)
  optimizer.update(model, grads)
  kernel, kept = np.asarray(model.conv.kernel[...]), np.asarray(masks["conv"]["kernel"][...])
  assert not np.any(kernel[~kept]) and np.any(kernel[kept])
  _, totals = prune.report(masks)
  assert totals["kept"] == round(0.3 * 36) + round(0.3 * 640)


def test_partitioned_linen_model_compresses_and_its_boxes_come_back(tmp_path):
  model, batch = PartitionedMLP(), _images(0)
  boxed = model.init(jax.random.key(0), batch[0])["params"]
  assert isinstance(boxed["hidden"]["kernel"], nn.LogicallyPartitioned)
  apply = lambda p, x: model.apply({"params": p}, x)
  shared, decoded = _compress(apply, boxed, batch, tmp_path, share.Plan(bits=3))
  reboxed = flax_trees.rebox(boxed, decoded)
  assert reboxed["out"]["kernel"].names == ("mlp", "vocab") and share.is_shared(reboxed["out"]["kernel"].value)
  chex.assert_trees_all_equal(apply(share.materialize(reboxed), batch[0]),
                              apply(share.materialize(shared), batch[0]))


def test_bf16_linen_model_keeps_bf16_through_sharing_and_the_file(tmp_path):
  model, batch = Bf16CNN(), _images(0)
  params = model.init(jax.random.key(0), batch[0])["params"]
  apply = lambda p, x: model.apply({"params": p}, x)
  shared, decoded = _compress(apply, params, batch, tmp_path, share.Plan(bits=3))
  assert set(_dtypes(share.materialize(decoded))) == {np.dtype(jnp.bfloat16)}
  chex.assert_trees_all_equal(decoded, jax.tree.map(np.asarray, shared))
  chex.assert_trees_all_equal(apply(share.materialize(decoded), batch[0]), apply(share.materialize(shared), batch[0]))


def test_embed_and_scanned_lstm_compress_with_the_default_patterns(tmp_path):
  model, batch = LSTMClassifier(), _tokens(0)
  params = model.init(jax.random.key(0), batch[0])["params"]
  apply = lambda p, x: model.apply({"params": p}, x)
  shared, decoded = _compress(apply, params, batch, tmp_path, share.Plan(layer_bits=[(".*embedding", 4)], bits=2))
  assert decoded["Embed_0"]["embedding"].codebook.size == 16 and share.is_shared(decoded["Dense_0"]["kernel"])
  chex.assert_trees_all_equal(apply(share.materialize(decoded), batch[0]), apply(share.materialize(shared), batch[0]))
