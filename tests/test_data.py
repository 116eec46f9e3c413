"""Loading (local .npz, IDX folders, TFDS), checks on bad data, batching and augmentation."""

import gzip
import socket

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds

from dc_jax import data
from dc_jax.errors import DataError
from tests.conftest import require_data, synthetic_dataset


def test_npz_path_reads_the_real_mnist(shared_data_dir, monkeypatch):
  monkeypatch.setenv(data.DATA_DIR_ENV, str(shared_data_dir))
  dataset = data.load("mnist")
  chex.assert_shape(dataset.train_images, (60000, 28, 28, 1))
  chex.assert_shape(dataset.test_labels, (10000,))
  assert dataset.train_images.dtype == np.uint8
  assert set(np.unique(dataset.test_labels)) == set(range(10))
  # MNIST's well-known statistics: mean 0.1307, std 0.3081.
  np.testing.assert_allclose(dataset.mean, [0.1307], atol=1e-4)
  np.testing.assert_allclose(dataset.std, [0.3081], atol=1e-4)


def test_config_path_reads_the_real_cifar10_and_overrides_the_env(shared_data_dir, monkeypatch, tmp_path):
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))  # Holds nothing: data.path must win.
  dataset = data.load("cifar10", path=str(require_data(shared_data_dir / "cifar10.npz")))
  chex.assert_shape(dataset.train_images, (50000, 32, 32, 3))
  np.testing.assert_allclose(dataset.mean, [0.4914, 0.4822, 0.4465], atol=1e-4)
  np.testing.assert_allclose(dataset.std, [0.2470, 0.2435, 0.2616], atol=1e-4)


def _write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_idx_folder_reads_like_debians_fashion_mnist(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28)),
            "train-labels-idx1-ubyte": rng.integers(0, 10, 12),
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28)),
            "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5)}
  for stem, array in arrays.items():
    _write_idx(tmp_path / f"{stem}.gz", array)
  dataset = data.load("fashion_mnist", path=str(tmp_path))
  np.testing.assert_array_equal(dataset.train_images[..., 0], arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(dataset.test_labels, arrays["t10k-labels-idx1-ubyte"])


def test_tfds_path_under_mock_data(monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  monkeypatch.setattr(data, "_reachable", lambda *_: True)  # mock_data replaces the download.
  with tfds.testing.mock_data(num_examples=24):
    dataset = data.load("mnist")
  chex.assert_shape(dataset.train_images, (24, 28, 28, 1))
  chex.assert_shape(dataset.test_images, (24, 28, 28, 1))
  assert dataset.train_labels.dtype == np.int32
  assert dataset.train_labels.max() < 10


def test_offline_tfds_fails_within_seconds_saying_how_to_provide_data(monkeypatch, tmp_path):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  monkeypatch.setattr(data, "TFDS_HOST", ("127.0.0.1", 9))  # A closed local port: as offline.
  connections, downloads = [], []
  connect = socket.create_connection
  monkeypatch.setattr(socket, "create_connection",
                      lambda address, timeout=None, **kwargs: connections.append((address, timeout)) or
                      connect(address, timeout, **kwargs))
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", lambda *a, **k: downloads.append(a))
  with pytest.raises(DataError, match="DC_JAX_DATA_DIR"):
    data.load("mnist", tfds_dir=str(tmp_path))
  # One connection attempt of at most 3 s, and no download started (TFDS retries for minutes): bounded by
  # attempts, not by seconds, which a loaded machine can stretch.
  assert connections == [(("127.0.0.1", 9), 3.0)]
  assert downloads == []


def test_missing_path_is_a_data_error():
  with pytest.raises(DataError, match="does-not-exist.npz"):
    data.load("mnist", path="/does-not-exist.npz")


def test_unknown_dataset_is_a_data_error():
  with pytest.raises(DataError, match="data.name='svhn'"):
    data.load("svhn")


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((2, 28, 28), np.uint8)}, "lacks arrays"),
    ({"x_train": np.zeros((2, 28, 28), np.float32), "y_train": np.zeros(2, np.uint8),
      "x_test": np.zeros((2, 28, 28), np.uint8), "y_test": np.zeros(2, np.uint8)}, "needs uint8 images"),
    ({"x_train": np.zeros((2, 32, 32, 3), np.uint8), "y_train": np.zeros(2, np.uint8),
      "x_test": np.zeros((2, 28, 28), np.uint8), "y_test": np.zeros(2, np.uint8)}, "shape"),
    ({"x_train": np.zeros((2, 28, 28), np.uint8), "y_train": np.array([0, 10]),
      "x_test": np.zeros((2, 28, 28), np.uint8), "y_test": np.zeros(2, np.uint8)}, r"labels in \[0, 10\)"),
    ({"x_train": np.zeros((2, 28, 28), np.uint8), "y_train": np.zeros(3, np.uint8),
      "x_test": np.zeros((2, 28, 28), np.uint8), "y_test": np.zeros(2, np.uint8)}, "3 labels"),
    ({"x_train": np.full((2, 28, 28), 7, np.uint8), "y_train": np.zeros(2, np.uint8),
      "x_test": np.zeros((2, 28, 28), np.uint8), "y_test": np.zeros(2, np.uint8)},
     r"one value in every pixel of channel\(s\) \[0\]"),
])
def test_malformed_npz_is_a_data_error_naming_the_problem(tmp_path, arrays, message):
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(DataError, match=message):
    data.load("mnist", path=str(path))


def test_a_file_that_is_not_npz_is_a_data_error(tmp_path):
  path = tmp_path / "mnist.npz"
  path.write_bytes(b"not a zip archive")
  with pytest.raises(DataError, match="not a readable .npz"):
    data.load("mnist", path=str(path))


def test_augmentation_is_deterministic_for_a_seed_and_keeps_shapes():
  images = synthetic_dataset("cifar10", n_train=32).train_images
  first = data.augment(images, np.random.default_rng(7))
  again = data.augment(images, np.random.default_rng(7))
  other = data.augment(images, np.random.default_rng(8))
  chex.assert_shape(first, images.shape)
  assert first.dtype == np.uint8
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_augmentation_is_a_crop_of_the_padded_image_maybe_flipped():
  images = np.random.default_rng(0).integers(1, 256, (6, 8, 8, 3)).astype(np.uint8)
  out = data.augment(images, np.random.default_rng(3), data.Augmentation(pad=2, flip=True))
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  flips = []
  for image, result in zip(padded, out):
    matches = [flip for top in range(5) for left in range(5) for flip in (False, True)
               if np.array_equal(result, (lambda c: c[:, ::-1] if flip else c)(image[top:top + 8, left:left + 8]))]
    assert matches
    flips.append(matches[0])
  assert any(flips)


def test_augmentation_without_flips_only_shifts():
  images = np.random.default_rng(0).integers(1, 256, (20, 8, 8, 1)).astype(np.uint8)
  out = data.augment(images, np.random.default_rng(3), data.Augmentation(pad=2, flip=False))
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for image, result in zip(padded, out):
    assert any(np.array_equal(result, image[top:top + 8, left:left + 8]) for top in range(5) for left in range(5))


def test_train_batches_depend_only_on_seed_and_epoch():
  dataset = synthetic_dataset("cifar10", n_train=64)
  run = lambda seed, epoch: [b["label"] for b in data.train_batches(dataset, 16, seed, epoch, data.Augmentation())]
  assert len(run(0, 0)) == 4
  np.testing.assert_array_equal(np.concatenate(run(0, 3)), np.concatenate(run(0, 3)))
  assert not np.array_equal(np.concatenate(run(0, 3)), np.concatenate(run(0, 4)))



def test_an_epoch_visits_every_image_once_with_its_own_label():
  """Image-label pairs, not a multiset of labels: images shuffled apart from their labels would fail."""
  dataset = synthetic_dataset("cifar10", n_train=64)
  batches = list(data.train_batches(dataset, 16, seed=1, epoch=0, augmentation=None))
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  expected = data.normalize(dataset.train_images, dataset.mean, dataset.std)
  # Each batch row is the training example whose normalised image it equals, with that example's label.
  matches = np.all(images.reshape(64, 1, -1) == expected.reshape(1, 64, -1), axis=2)
  chex.assert_trees_all_equal(matches.sum(axis=1), np.ones(64, int))  # Every row is one example...
  example = matches.argmax(axis=1)
  assert sorted(example.tolist()) == list(range(64))  # ...each example exactly once...
  np.testing.assert_array_equal(labels, dataset.train_labels[example])  # ...with its own label.
  assert not np.array_equal(example, np.arange(64))  # And shuffled.


def test_normalised_batches_have_zero_mean_and_unit_variance_per_channel():
  dataset = synthetic_dataset("cifar10", n_train=64)
  batch = next(data.train_batches(dataset, 64, seed=0, epoch=0, augmentation=None))
  np.testing.assert_allclose(batch["image"].mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(batch["image"].std(axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_eval_batches_pad_the_last_batch_and_mask_the_padding():
  dataset = synthetic_dataset("mnist", n_test=25)
  batches = list(data.eval_batches(dataset, 10))
  assert [b["mask"].sum() for b in batches] == [10, 10, 5]
  chex.assert_shape(batches[-1]["image"], (10, 28, 28, 1))
  np.testing.assert_array_equal(batches[-1]["label"][:5], dataset.test_labels[20:])
  assert sum(b["mask"].sum() for b in data.eval_batches(dataset, 10, max_batches=2)) == 20
