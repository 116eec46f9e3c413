"""Data parallelism: on 8 (forced host) devices, training matches one device and batches are really split.

The device count is fixed when jax starts, so the checks run in a subprocess
started with XLA_FLAGS=--xla_force_host_platform_device_count=8; inside it,
each check compares a 1-device mesh with the 8-device one in the same process.
"""

import os
import subprocess
import sys
import tempfile
from unittest import mock
from pathlib import Path

import chex
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from configs import base
from dc_jax import data, models, prune, share, train
from dc_jax.errors import ConfigError
from tests.conftest import synthetic_dataset

DEVICES = 8
STEPS = 3


def _steps(state, batch, mesh, param_sharding="replicated"):
  """STEPS train steps on the same global batch; the losses and the final state."""
  state, batch = train.place(state, mesh, param_sharding), train.shard_batch(batch, mesh)
  losses = []
  for _ in range(STEPS):
    state, metrics = train.train_step(state, batch, jax.random.key(1))
    losses.append(metrics["loss"])
  return jax.device_get(losses), state


def _assert_same_training(state, batch, one, many):
  losses_one, state_one = _steps(state, batch, one)
  losses_many, state_many = _steps(state, batch, many)
  np.testing.assert_allclose(losses_many, losses_one, rtol=1e-5)
  assert losses_one[-1] < losses_one[0]
  chex.assert_trees_all_close(jax.device_get(state_many.params), jax.device_get(state_one.params),
                              atol=1e-6, rtol=1e-5)
  chex.assert_trees_all_close(jax.device_get(state_many.opt_state), jax.device_get(state_one.opt_state),
                              atol=1e-6, rtol=1e-5)
  for leaf in jax.tree.leaves(state_many):  # Every array of the state stays replicated.
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == DEVICES
  _assert_same_training_sharded(state, batch, one, many, losses_one, state_one)
  return state_many


def _assert_same_training_sharded(state, batch, one, many, losses_one, state_one):
  """param_sharding="sharded": the same training, with every large array split over the devices and kept so."""
  losses, sharded = _steps(state, batch, many, "sharded")
  np.testing.assert_allclose(losses, losses_one, rtol=1e-5)
  chex.assert_trees_all_close(jax.device_get(sharded), jax.device_get(state_one), atol=1e-6, rtol=1e-5)
  split = 0
  for leaf in jax.tree.leaves(sharded):
    assert leaf.sharding.is_equivalent_to(train.array_sharding(leaf.shape, many), leaf.ndim), leaf.sharding
    if not leaf.sharding.is_fully_replicated:
      split += 1
      assert sum(shard.data.size for shard in leaf.addressable_shards) == leaf.size  # One slice per device.
  assert split >= 1  # ip1's 784x300 kernel at least (and its momentum, mask or indices).


def _check_batch_is_split(batch, many):
  placed = train.shard_batch(batch, many)
  for value in placed.values():
    assert value.sharding.spec == PartitionSpec(train.BATCH_AXIS)
    assert len(value.sharding.device_set) == DEVICES
    assert [shard.data.shape[0] for shard in value.addressable_shards] == [len(batch["label"]) // DEVICES] * DEVICES


def _check_fit_and_evaluate(dataset, one, many, workdir):
  config = base.get_config().train
  config.update(dict(epochs=1, batch_size=16, steps_per_epoch=3, eval_batch_size=50, eval_batches=2,
                     log_every_steps=1, lr_schedule="constant"))
  tx = train.create_optimizer(config, 3)
  state = train.create_train_state(jax.random.key(0), models.LeNet300100(), dataset.image_shape, tx)
  # Both input pipelines, with crops: the device pipeline draws the same batches whatever the device count.
  for pipeline in ("device", "host"):
    fitted = {mesh.devices.size: train.fit(state, dataset, config, 0, workdir / f"{pipeline}{mesh.devices.size}",
                                           workdir / "metrics.jsonl", data.Augmentation(pad=2, flip=False), mesh,
                                           pipeline) for mesh in (one, many)}
    chex.assert_trees_all_close(jax.device_get(fitted[DEVICES].params), jax.device_get(fitted[1].params),
                                atol=1e-6, rtol=1e-5)
  # 50 rows per eval batch do not split over 8 devices: padded with masked-out rows, same result.
  results = [train.evaluate(fitted[DEVICES], dataset, 50, 2, mesh) for mesh in (one, many)]
  assert results[0]["examples"] == results[1]["examples"] == 100
  np.testing.assert_allclose(results[1]["accuracy"], results[0]["accuracy"])
  np.testing.assert_allclose(results[1]["loss"], results[0]["loss"], rtol=1e-5)
  # Restoring the finished run (8-device checkpoint) gives the same state back, replicated or sharded.
  again = train.fit(state, dataset, config, 0, workdir / f"host{DEVICES}", workdir / "metrics.jsonl", None, many)
  chex.assert_trees_all_equal(jax.device_get(again.params), jax.device_get(fitted[DEVICES].params))
  config.param_sharding = "sharded"
  restored = train.fit(state, dataset, config, 0, workdir / f"host{DEVICES}", workdir / "metrics.jsonl", None, many)
  chex.assert_trees_all_equal(jax.device_get(restored.params), jax.device_get(fitted[DEVICES].params))
  sharded = train.fit(state, dataset, config, 0, workdir / "sharded", workdir / "metrics.jsonl",
                      data.Augmentation(pad=2, flip=False), many, "host")
  chex.assert_trees_all_close(jax.device_get(sharded.params), jax.device_get(fitted[1].params), atol=1e-6, rtol=1e-5)
  assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded))  # fit hands back whole arrays.
  config.param_sharding = "replicated"
  config.batch_size = 12
  with pytest.raises(ConfigError, match=f"train.batch_size=12 does not split over {DEVICES} devices"):
    train.fit(state, dataset, config, 0, workdir / "bad", workdir / "metrics.jsonl", None, many)


def _check_vgg_with_batchnorm_and_dropout(one, many):
  """BatchNorm statistics of the global batch, dropout masks drawn for the global batch: the same on 1 and 8."""
  dataset = synthetic_dataset("cifar10", n_train=64)
  batch = next(data.train_batches(dataset, 32, seed=0, epoch=0, augmentation=None))
  model = models.VGG(depth=11, width=0.0625, classifier_widths=(32,), dropout_rate=0.5)
  state = train.create_train_state(jax.random.key(0), model, dataset.image_shape, optax.sgd(0.05, 0.9))
  assert jax.tree.leaves(state.batch_stats)
  (losses_one, state_one), (losses_many, state_many) = (_steps(state, batch, mesh) for mesh in (one, many))
  np.testing.assert_allclose(losses_many, losses_one, rtol=1e-5)
  for field in ("params", "batch_stats", "opt_state"):
    chex.assert_trees_all_close(jax.device_get(getattr(state_many, field)), jax.device_get(getattr(state_one, field)),
                                atol=1e-5, rtol=1e-5)
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), jax.device_get(state_one.batch_stats),
                       jax.device_get(state.batch_stats))
  assert all(jax.tree.leaves(moved))  # Every running mean and variance took the batch in.
  # Dropout is on: another key gives another loss for the same batch and weights.
  other = train.train_step(train.place(state, one), train.shard_batch(batch, one), jax.random.key(2))[1]["loss"]
  assert abs(float(other) - float(losses_one[0])) > 1e-4


def main() -> None:
  """The checks, run inside the 8-device subprocess."""
  assert jax.device_count() == DEVICES, jax.devices()
  one, many = train.data_mesh(jax.devices()[:1]), train.data_mesh()
  dataset = synthetic_dataset("mnist", n_train=64, n_test=100)
  batch = next(data.train_batches(dataset, 32, seed=0, epoch=0, augmentation=None))
  _check_batch_is_split(batch, many)

  model = models.LeNet300100()
  dense = train.create_train_state(jax.random.key(0), model, dataset.image_shape, optax.sgd(0.05, 0.9))
  dense = _assert_same_training(dense, batch, one, many)
  print("dense: same losses and parameters on 1 and 8 devices", flush=True)

  masks = prune.layer_fraction(jax.device_get(dense.params), 0.2)
  pruned = train.TrainState.create(apply_fn=model.apply, params=prune.apply_masks(dense.params, masks),
                                   batch_stats={}, tx=prune.masked(optax.sgd(0.05, 0.9), masks))
  pruned = _assert_same_training(pruned, batch, one, many)
  kept = jax.tree.map(lambda w, m: bool(np.all(np.asarray(w)[~np.asarray(m)] == 0)), pruned.params, masks)
  assert all(jax.tree.leaves(kept))
  print("pruned: same losses and parameters, pruned weights still 0", flush=True)

  shared, _ = share.quantize(jax.device_get(pruned.params), masks, share.Plan(k=4))
  trainable, frozen = share.split(shared)
  state = share.SharedTrainState.create(apply_fn=model.apply, params=trainable, batch_stats={},
                                        tx=optax.sgd(1e-3, 0.9), frozen=frozen)
  _assert_same_training(state, batch, one, many)
  print("shared: same losses and codebooks", flush=True)

  _check_vgg_with_batchnorm_and_dropout(one, many)
  print("vgg: same losses, parameters and BatchNorm statistics with dropout", flush=True)

  with tempfile.TemporaryDirectory() as workdir:
    _check_fit_and_evaluate(dataset, one, many, Path(workdir))
  print("fit and evaluate: same results, replicated or sharded; a batch size that does not split is a ConfigError",
        flush=True)


def test_training_on_8_devices_matches_1_device_for_dense_pruned_shared_and_vgg_batchnorm_states():
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}", "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", "from tests.test_parallel import main; main()"],
                          cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "vgg: same" in result.stdout and "fit and evaluate" in result.stdout


def test_an_eval_batch_is_padded_with_masked_rows_to_a_multiple_of_the_devices():
  batch = {"image": np.ones((5, 2), np.float32), "label": np.ones(5, np.int32), "mask": np.ones(5, bool)}
  padded = train.pad_eval_batch(batch, 4)
  chex.assert_shape(padded["image"], (8, 2))
  np.testing.assert_array_equal(padded["mask"], [True] * 5 + [False] * 3)
  assert train.pad_eval_batch(batch, 5) is batch


def test_only_large_arrays_are_split_along_an_axis_the_device_count_divides():
  mesh = train.data_mesh()
  assert train.array_sharding((784, 300), mesh).is_fully_replicated  # One device: nothing to split.

  class FakeMesh:  # array_sharding reads the device count only; NamedSharding needs a real mesh.
    devices = np.zeros(8)
  with mock.patch.object(train, "NamedSharding", lambda mesh, spec: spec):
    assert train.array_sharding((784, 300), FakeMesh) == PartitionSpec(train.BATCH_AXIS, None)
    assert train.array_sharding((3, 3, 512, 512), FakeMesh) == PartitionSpec(None, None, train.BATCH_AXIS, None)
    assert train.array_sharding((300, 100), FakeMesh) == PartitionSpec()  # 30K values: replicated.
    assert train.array_sharding((4097, 33), FakeMesh) == PartitionSpec()  # No axis divides.
  with pytest.raises(ConfigError, match="train.param_sharding='fsdp'"):
    train.place({}, mesh, "fsdp")


def test_on_one_device_the_batch_and_state_are_placed_on_it():
  mesh = train.data_mesh()
  placed = train.shard_batch({"image": np.zeros((3, 2)), "label": np.zeros(3, np.int32)}, mesh)
  assert placed["image"].sharding.device_set == set(jax.devices())
  assert train.replicate({"w": np.zeros(2)}, mesh)["w"].sharding.is_fully_replicated
