"""Train steps, schedules, checkpoints and resumption on small real models."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base, tiny
from dc_jax import data, models, train
from dc_jax.errors import ConfigError
from tests.conftest import synthetic_dataset


def _train_config(**overrides):
  config = base.get_config().train
  config.update(dict(epochs=2, batch_size=16, eval_batch_size=50, log_every_steps=2,
                     learning_rate=0.05, lr_schedule="constant"))
  config.update(overrides)
  return config


def _state(model, image_shape, config, steps_per_epoch=4, seed=0):
  tx = train.create_optimizer(config, steps_per_epoch)
  return train.create_train_state(jax.random.key(seed), model, image_shape, tx)


def _train_mode_loss(state, batch):
  logits, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                             batch["image"], train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(0)})
  return float(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean())


@pytest.mark.parametrize("model, dataset_name", [
    (models.LeNet300100(), "mnist"),
    (models.LeNet5(), "mnist"),
    (models.VGG(depth=11, width=1 / 16, classifier_widths=(32,), dropout_rate=0.0), "cifar10"),
])
def test_one_train_step_lowers_the_loss_on_a_fixed_batch(model, dataset_name):
  dataset = synthetic_dataset(dataset_name, n_train=32)
  batch = next(data.train_batches(dataset, 32, seed=0, epoch=0, augmentation=None))
  state = _state(model, dataset.image_shape, _train_config(learning_rate=1e-3, momentum=0.0))
  before = _train_mode_loss(state, batch)
  new_state, metrics = train.train_step(state, batch, jax.random.key(1))
  np.testing.assert_allclose(metrics["loss"], before, rtol=1e-5)
  assert _train_mode_loss(new_state, batch) < before
  assert int(new_state.step) == 1


def test_batchnorm_statistics_are_updated_by_a_train_step():
  dataset = synthetic_dataset("cifar10", n_train=16)
  batch = next(data.train_batches(dataset, 16, seed=0, epoch=0, augmentation=None))
  state = _state(models.VGG(depth=11, width=1 / 16, classifier_widths=(32,)), dataset.image_shape,
                 _train_config())
  new_state, _ = train.train_step(state, batch, jax.random.key(1))
  assert not np.allclose(new_state.batch_stats["bn1_1"]["mean"], state.batch_stats["bn1_1"]["mean"])


def test_step_schedule_multiplies_the_rate_at_the_chosen_epochs():
  config = _train_config(learning_rate=0.02, lr_schedule="step", lr_decay_epochs=(2, 3), lr_decay_factor=0.2)
  schedule = train.learning_rate_schedule(config, steps_per_epoch=10)
  np.testing.assert_allclose([schedule(0), schedule(19), schedule(20), schedule(30)],
                             [0.02, 0.02, 0.004, 0.0008], rtol=1e-6)


def test_cosine_with_warmup_rises_linearly_then_decays_to_zero():
  config = _train_config(learning_rate=0.2, lr_schedule="cosine", warmup_epochs=2, epochs=6)
  schedule = train.learning_rate_schedule(config, steps_per_epoch=10)
  np.testing.assert_allclose([schedule(0), schedule(10), schedule(20), schedule(40), schedule(60)],
                             [0.0, 0.1, 0.2, 0.1, 0.0], atol=1e-6)


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
  logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
  labels = jnp.array([0, 2])
  targets = 0.9 * jax.nn.one_hot(labels, 3) + 0.1 / 3
  expected = -(targets * jax.nn.log_softmax(logits)).sum(-1)
  np.testing.assert_allclose(train._cross_entropy(logits, labels, 0.1), expected, rtol=1e-6)
  assert np.all(train._cross_entropy(logits, labels) < expected)  # Confident right answers pay less unsmoothed.


def test_distillation_loss_is_t_squared_kl_of_the_softened_distributions():
  logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
  teacher_logits = jnp.array([[1.0, 1.5, -2.0], [0.0, 0.0, 4.0]])
  t = 3.0
  p, q = jax.nn.softmax(teacher_logits / t), jax.nn.softmax(logits / t)
  expected = t**2 * (p * (jnp.log(p) - jnp.log(q))).sum(-1)
  np.testing.assert_allclose(train.distillation_loss(logits, teacher_logits, t), expected, rtol=1e-5)
  np.testing.assert_allclose(train.distillation_loss(teacher_logits, teacher_logits, t), 0.0, atol=1e-6)


def test_a_step_with_a_teacher_mixes_the_hard_and_soft_losses_by_the_weight():
  dataset = synthetic_dataset("mnist", n_train=32)
  batch = next(data.train_batches(dataset, 32, seed=0, epoch=0, augmentation=None))
  state = _state(models.LeNet300100(), dataset.image_shape, _train_config(momentum=0.0))
  teacher = _state(models.LeNet300100(), dataset.image_shape, _train_config(), seed=1)
  teacher = teacher.variables(teacher.params)
  logits = state.apply_fn(state.variables(state.params), batch["image"], train=False)
  hard = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  soft = train.distillation_loss(logits, state.apply_fn(teacher, batch["image"], train=False), 2.0).mean()
  _, metrics = train.train_step(state, batch, jax.random.key(1), 0.0, teacher, (0.25, 2.0))
  np.testing.assert_allclose(metrics["loss"], 0.75 * hard + 0.25 * soft, rtol=1e-5)
  # Its own logits as the teacher, at weight 1: nothing to learn, so the step leaves the weights as they are.
  own = state.variables(state.params)
  new_state, metrics = train.train_step(state, batch, jax.random.key(1), 0.0, own, (1.0, 2.0))
  np.testing.assert_allclose(metrics["loss"], 0.0, atol=1e-6)
  chex.assert_trees_all_close(new_state.params, state.params, atol=1e-7)


@pytest.mark.parametrize("input_pipeline", ["host", "device"])
def test_fit_passes_its_teacher_to_every_step_on_either_pipeline(tmp_path, input_pipeline):
  dataset = synthetic_dataset("mnist", n_train=64, n_test=50)
  config = _train_config(epochs=1, momentum=0.0)
  config.distill_weight, config.distill_temperature = 1.0, 2.0
  state = _state(models.LeNet300100(), dataset.image_shape, config)
  own = state.variables(state.params)  # Nothing to learn from itself: with the teacher wired in, nothing moves.
  after = train.fit(state, dataset, config, seed=0, checkpoint_dir=tmp_path / "ckpt",
                    metrics_path=tmp_path / "metrics.jsonl", augmentation=None, input_pipeline=input_pipeline,
                    teacher=own)
  assert int(after.step) == 4
  chex.assert_trees_all_close(after.params, state.params, atol=1e-6)


def test_weight_decay_adds_l2_to_the_gradient():
  config = _train_config(optimizer="sgd", momentum=0.0, learning_rate=1.0, weight_decay=0.1)
  tx = train.create_optimizer(config, 1)
  params = {"w": np.array([2.0, -4.0], np.float32)}
  updates, _ = tx.update({"w": np.zeros(2, np.float32)}, tx.init(params), params)
  chex.assert_trees_all_close(updates, {"w": np.array([-0.2, 0.4], np.float32)})


@pytest.mark.parametrize("field, value", [("optimizer", "rmsprop"), ("lr_schedule", "linear")])
def test_unknown_optimizer_or_schedule_is_a_config_error(field, value):
  with pytest.raises(ConfigError, match=f"train.{field}='{value}'"):
    train.create_optimizer(_train_config(**{field: value}), 1)


def test_fit_learns_the_synthetic_task_and_logs_metrics(tmp_path):
  dataset = synthetic_dataset("mnist", n_train=256, n_test=100)
  config = _train_config(epochs=3)
  state = _state(models.LeNet300100(), dataset.image_shape, config, steps_per_epoch=16)
  state = train.fit(state, dataset, config, seed=0, checkpoint_dir=tmp_path / "ckpt",
                    metrics_path=tmp_path / "metrics.jsonl", augmentation=None)
  assert train.evaluate(state, dataset, 50)["accuracy"] > 0.9
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records if r["split"] == "test"] == [1, 2, 3]
  assert all({"step", "loss", "accuracy"} <= r.keys() for r in records)


def test_resumed_training_continues_at_the_saved_step_and_matches_an_uninterrupted_run(tmp_path):
  config = tiny.get_config()
  config.train.lr_schedule = "constant"
  dataset = synthetic_dataset("cifar10", n_train=64, n_test=32)
  model = models.create_model(num_classes=10, **config.model)
  initial = _state(model, dataset.image_shape, config.train, steps_per_epoch=3)
  fresh = lambda: initial  # One optimizer object: jit compiles each step function once.
  run = lambda epochs, folder: train.fit(
      fresh(), dataset, _with_epochs(config.train, epochs), seed=0, checkpoint_dir=tmp_path / folder,
      metrics_path=tmp_path / f"{folder}.jsonl", augmentation=data.Augmentation())

  interrupted = run(1, "resumed")
  assert int(interrupted.step) == 3
  # The checkpoint on disk round-trips to the state that was saved.
  restored = train.restore_latest(train.checkpoint_manager(tmp_path / "resumed"), fresh())
  chex.assert_trees_all_equal(restored.params, interrupted.params)
  chex.assert_trees_all_equal(restored.opt_state, interrupted.opt_state)
  chex.assert_trees_all_equal(restored.batch_stats, interrupted.batch_stats)

  resumed = run(2, "resumed")
  straight = run(2, "straight")
  assert int(resumed.step) == int(straight.step) == 6
  chex.assert_trees_all_close(resumed.params, straight.params, atol=1e-6)
  chex.assert_trees_all_close(resumed.batch_stats, straight.batch_stats, atol=1e-6)


def _with_epochs(config, epochs):
  config = config.copy_and_resolve_references()
  config.epochs = epochs
  return config


def test_finished_training_is_restored_not_repeated(tmp_path):
  dataset = synthetic_dataset("mnist", n_train=64)
  config = _train_config(epochs=1)
  first = train.fit(_state(models.LeNet300100(), dataset.image_shape, config), dataset, config, 0,
                    tmp_path / "ckpt", tmp_path / "m.jsonl", None)
  lines = (tmp_path / "m.jsonl").read_text().count("\n")
  again = train.fit(_state(models.LeNet300100(), dataset.image_shape, config), dataset, config, 0,
                    tmp_path / "ckpt", tmp_path / "m.jsonl", None)
  chex.assert_trees_all_equal(first.params, again.params)
  assert (tmp_path / "m.jsonl").read_text().count("\n") == lines


def test_a_diverging_learning_rate_stops_training_with_training_diverged(tmp_path):
  # That the last checkpoint survives intact: tests/test_reliability.py.
  dataset = synthetic_dataset("mnist", n_train=64)
  config = _train_config(epochs=2, learning_rate=1e30, log_every_steps=1)
  state = _state(models.LeNet300100(), dataset.image_shape, config)
  with pytest.raises(train.TrainingDiverged, match="loss is"):
    train.fit(state, dataset, config, 0, tmp_path / "ckpt", tmp_path / "m.jsonl", None)


def test_train_step_compiles_once_from_a_fresh_state():
  model = models.LeNet300100()
  state = train.create_train_state(jax.random.key(0), model, (28, 28, 1), optax.sgd(0.1))
  batch = {"image": jnp.ones((8, 28, 28, 1)), "label": jnp.zeros((8,), jnp.int32)}
  before = train.train_step._cache_size()
  for _ in range(3):
    state, _ = train.train_step(state, batch, jax.random.key(0))
  assert train.train_step._cache_size() == before + 1
