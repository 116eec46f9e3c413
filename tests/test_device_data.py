"""The device input pipeline: the host pipeline's examples, crops of the padded images, a function of (seed, epoch, step)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from dc_jax import data, device_data, models, train
from dc_jax.errors import ConfigError
from tests.conftest import synthetic_dataset

BATCH = 16


def _batch(dataset, seed, epoch, step, augmentation):
  mesh = train.data_mesh()
  order = device_data.put_order(data.epoch_order(dataset.train_images.shape[0], seed, epoch), mesh)
  return jax.device_get(device_data.batch(device_data.put(dataset, mesh), order, jnp.int32(step), BATCH,
                                          device_data.epoch_key(seed, epoch), augmentation))


def test_without_augmentation_batches_equal_the_host_pipelines():
  dataset = synthetic_dataset("cifar10", n_train=64)
  host = list(data.train_batches(dataset, BATCH, seed=3, epoch=2, augmentation=None))
  for step, expected in enumerate(host):
    found = _batch(dataset, 3, 2, step, None)
    np.testing.assert_array_equal(found["label"], expected["label"])
    np.testing.assert_allclose(found["image"], expected["image"], atol=1e-6)


def test_batches_are_a_function_of_seed_epoch_and_step():
  dataset = synthetic_dataset("cifar10", n_train=64)
  augmentation = data.Augmentation()
  first = _batch(dataset, 0, 1, 2, augmentation)
  chex.assert_trees_all_equal(first, _batch(dataset, 0, 1, 2, augmentation))
  for other in ((1, 1, 2), (0, 0, 2), (0, 1, 3)):
    assert not np.array_equal(_batch(dataset, *other, augmentation)["image"], first["image"]), other


def test_augmented_images_are_crops_of_the_padded_source_maybe_flipped():
  dataset = synthetic_dataset("cifar10", n_train=64)
  pad = 3
  found = _batch(dataset, 0, 0, 1, data.Augmentation(pad=pad, flip=True))
  plain = _batch(dataset, 0, 0, 1, None)  # The same examples, unaugmented.
  sources = np.pad(plain["image"], ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                   constant_values=0)
  zero = ((0 - dataset.mean) / dataset.std).astype(np.float32)  # A padded pixel, normalised.
  sources = np.where(np.pad(np.ones(plain["image"].shape[:3], bool), ((0, 0), (pad, pad), (pad, pad)))[..., None],
                     sources, zero)
  shifts, flips = set(), set()
  for source, image in zip(sources, found["image"]):
    matches = [(top, left, flip) for top in range(2 * pad + 1) for left in range(2 * pad + 1) for flip in (0, 1)
               if np.allclose(image, (lambda c: c[:, ::-1] if flip else c)(source[top:top + 32, left:left + 32]),
                              atol=1e-6)]
    assert matches, "an output image is no crop of its padded source"
    shifts.add(matches[0][:2])
    flips.add(matches[0][2])
  assert len(shifts) > 3 and flips == {0, 1}


def test_auto_keeps_the_training_set_on_cpu_devices_and_rejects_unknown_pipelines():
  dataset = synthetic_dataset("mnist", n_train=64)
  assert device_data.resolve("auto", dataset, jax.devices()) == "device"
  assert device_data.resolve("host", dataset, jax.devices()) == "host"
  with pytest.raises(ConfigError, match="data.pipeline='gpu'"):
    device_data.resolve("gpu", dataset, jax.devices())


@pytest.mark.parametrize("steps_per_dispatch", [1, 2])
def test_device_pipeline_resumes_to_the_uninterrupted_run(tmp_path, steps_per_dispatch):
  config = base.get_config()
  config.train.update(dict(batch_size=16, lr_schedule="constant", steps_per_dispatch=steps_per_dispatch,
                           log_every_steps=3, eval_batch_size=32))
  dataset = synthetic_dataset("mnist", n_train=48, n_test=32)
  model = models.LeNet300100()
  tx = train.create_optimizer(config.train, 3)
  initial = train.create_train_state(jax.random.key(0), model, dataset.image_shape, tx)

  def run(epochs, folder):
    train_config = config.train.copy_and_resolve_references()
    train_config.epochs = epochs
    return train.fit(initial, dataset, train_config, 0, tmp_path / folder, tmp_path / f"{folder}.jsonl",
                     data.Augmentation(), input_pipeline="device")

  run(1, "resumed")
  resumed, straight = run(2, "resumed"), run(2, "straight")
  assert int(resumed.step) == int(straight.step) == 6
  chex.assert_trees_all_close(resumed.params, straight.params, atol=1e-6)
  chex.assert_trees_all_close(resumed.batch_stats, straight.batch_stats, atol=1e-6)
  host = train.fit(initial, dataset, config.train.copy_and_resolve_references(), 0, tmp_path / "host",
                   tmp_path / "host.jsonl", data.Augmentation(), input_pipeline="host")
  assert not np.allclose(jax.device_get(host.params["ip1"]["kernel"]),
                         jax.device_get(straight.params["ip1"]["kernel"]))  # Other crops: another run.


def test_scanned_steps_equal_single_steps():
  dataset = synthetic_dataset("mnist", n_train=64)
  state = train.create_train_state(jax.random.key(0), models.LeNet300100(), dataset.image_shape, optax.sgd(0.05, 0.9))
  mesh = train.data_mesh()
  train_set = device_data.put(dataset, mesh)
  order = device_data.put_order(data.epoch_order(64, 0, 0), mesh)
  args = (train_set, order, jnp.int32(0), device_data.epoch_key(0, 0), jax.random.key(1))
  kwargs = dict(batch_size=BATCH, augmentation=data.Augmentation(pad=2, flip=False), label_smoothing=0.1)
  scanned, scanned_metrics = train.train_steps(state, *args, steps=4, **kwargs)
  single = state
  for step in range(4):
    single, metrics = train.train_steps(single, train_set, order, jnp.int32(step), *args[3:], steps=1, **kwargs)
  assert int(scanned.step) == int(single.step) == 4
  chex.assert_trees_all_close(scanned.params, single.params, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(scanned_metrics["loss"], metrics["loss"], rtol=1e-5)
