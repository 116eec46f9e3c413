"""Datasets held in memory as numpy: from a local .npz / IDX folder offline, from TFDS online.

Images stay uint8 (N, H, W, C) until a batch is drawn; each batch is augmented
(optionally) and normalised per channel with the training set's statistics.
Everything random is a function of (seed, epoch), so a resumed run sees the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import ml_collections
import numpy as np

from dc_jax.errors import DataError

DATA_DIR_ENV = "DC_JAX_DATA_DIR"

# name -> (TFDS name, image shape, number of classes).
DATASETS = {
    "mnist": ("mnist", (28, 28, 1), 10),
    "fashion_mnist": ("fashion_mnist", (28, 28, 1), 10),
    "cifar10": ("cifar10", (32, 32, 3), 10),
}

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

# The host TFDS downloads these datasets from; probed so that an offline machine
# fails in seconds instead of retrying for minutes.
TFDS_HOST = ("storage.googleapis.com", 443)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A labelled image dataset in memory, with the training set's per-channel statistics."""

  name: str
  train_images: np.ndarray  # uint8 (N, H, W, C)
  train_labels: np.ndarray  # int32 (N,)
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: np.ndarray  # float32 (C,), in units of pixel/255
  std: np.ndarray

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])


def load(name: str, path: str = "", tfds_dir: str = "") -> Dataset:
  """Loads dataset `name` from `path` (a .npz or IDX folder), from $DC_JAX_DATA_DIR, or else through TFDS."""
  if name not in DATASETS:
    raise DataError(f"data.name={name!r} is not a dataset; valid: {', '.join(DATASETS)}")
  local = _local_path(name, path)
  if local is not None:
    arrays = _read_local(local)
    source = str(local)
  else:
    arrays = _read_tfds(name, tfds_dir or None)
    source = "tfds"
  return _make_dataset(name, arrays, source)


def _local_path(name: str, path: str) -> Path | None:
  """The local file or folder to read, or None when TFDS should be used."""
  if path:
    if not Path(path).exists():
      raise DataError(f"data.path={path!r} does not exist; give a .npz with arrays "
                      f"{', '.join(NPZ_KEYS)} or a folder of MNIST-style IDX files")
    return Path(path)
  data_dir = os.environ.get(DATA_DIR_ENV)
  if data_dir:
    for candidate in (Path(data_dir) / f"{name}.npz", Path(data_dir) / name):
      if candidate.exists():
        return candidate
  return None


def _read_local(path: Path) -> dict[str, np.ndarray]:
  if path.is_dir():
    return _read_idx_folder(path)
  try:
    with np.load(path, allow_pickle=False) as archive:
      missing = [key for key in NPZ_KEYS if key not in archive.files]
      if missing:
        raise DataError(f"{path} lacks arrays {missing}; a dataset .npz holds {', '.join(NPZ_KEYS)}")
      return {key: archive[key] for key in NPZ_KEYS}
  except (OSError, ValueError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"{path} is not a readable .npz archive: {e}") from e


_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _read_idx_folder(folder: Path) -> dict[str, np.ndarray]:
  """Reads MNIST-style IDX files (gzipped or not), e.g. Debian's dataset-fashion-mnist."""
  arrays = {}
  for key, stem in _IDX_FILES.items():
    candidates = [folder / f"{stem}.gz", folder / stem]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
      raise DataError(f"{folder} lacks {stem}(.gz); an IDX folder holds {sorted(_IDX_FILES.values())}")
    opener = gzip.open if found.suffix == ".gz" else open
    with opener(found, "rb") as f:
      raw = f.read()
    arrays[key] = _parse_idx(raw, found)
  return arrays


def _parse_idx(raw: bytes, source: Path) -> np.ndarray:
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise DataError(f"{source} is not an IDX file of unsigned bytes")
  ndim = raw[3]
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise DataError(f"{source} holds {data.size} bytes of data, its header says {dims}")
  return data.reshape(dims)


def _read_tfds(name: str, data_dir: str | None) -> dict[str, np.ndarray]:
  """Loads both splits through TFDS, failing fast when the data must be downloaded offline."""
  import tensorflow_datasets as tfds  # Heavy (TensorFlow); only this path needs it.

  tfds_name = DATASETS[name][0]
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  if not _is_prepared(builder) and not _reachable(*TFDS_HOST):
    raise DataError(
        f"dataset {name!r} is not prepared in TFDS's data_dir and {TFDS_HOST[0]} cannot be reached. "
        f"Offline, point data.path at a .npz with arrays {', '.join(NPZ_KEYS)} (or a folder of IDX "
        f"files), or set {DATA_DIR_ENV} to a folder holding {name}.npz.")
  builder.download_and_prepare()
  arrays = {}
  for split in ("train", "test"):
    # Large batches, concatenated: `batch_size=-1` aborts TensorFlow under tfds.testing.mock_data.
    batches = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True).batch(10_000)))
    arrays[f"x_{split}"] = np.concatenate([images for images, _ in batches])
    arrays[f"y_{split}"] = np.concatenate([labels for _, labels in batches])
  return arrays


def _is_prepared(builder) -> bool:
  return Path(builder.data_dir, "dataset_info.json").exists()


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


def _make_dataset(name: str, arrays: dict[str, np.ndarray], source: str) -> Dataset:
  """Checks shapes, dtypes and labels, then adds a channel axis and the statistics."""
  _, image_shape, num_classes = DATASETS[name]
  checked = {}
  for split in ("train", "test"):
    images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if images.ndim == 3:
      images = images[..., None]
    if images.dtype != np.uint8 or images.shape[1:] != image_shape:
      raise DataError(f"{source}: x_{split} is {images.dtype}{list(images.shape)}; "
                      f"{name} needs uint8 images of shape (N, {', '.join(map(str, image_shape))})")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != images.shape[0]:
      raise DataError(f"{source}: {images.shape[0]} x_{split} images but {labels.shape[0]} labels")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
      raise DataError(f"{source}: y_{split} must hold integer labels in [0, {num_classes}); "
                      f"found {labels.dtype} in [{labels.min()}, {labels.max()}]")
    checked[split] = (images, labels.astype(np.int32))
  train_images = checked["train"][0]
  flat = train_images.reshape(-1, train_images.shape[-1])
  constant = flat.min(axis=0) == flat.max(axis=0)
  if np.any(constant):
    raise DataError(f"{source}: x_train has one value in every pixel of channel(s) "
                    f"{np.flatnonzero(constant).tolist()}; images without contrast cannot be normalised")
  pixels = flat.astype(np.float64) / 255.0
  return Dataset(
      name=name,
      train_images=train_images,
      train_labels=checked["train"][1],
      test_images=checked["test"][0],
      test_labels=checked["test"][1],
      num_classes=num_classes,
      mean=pixels.mean(axis=0).astype(np.float32),
      std=pixels.std(axis=0).astype(np.float32),
  )


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """uint8 images -> float32, zero mean and unit variance per channel."""
  return (images.astype(np.float32) / 255.0 - mean) / std


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Random crop from a zero-padded image (a shift of up to `pad` pixels), optionally flipped.

  pad=4 with flips is the CIFAR standard; digits take shifts only (a flipped 2 is no 2).
  """

  pad: int = 4
  flip: bool = True

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Augmentation | None":
    return cls(pad=config.crop_padding, flip=config.flip) if config.augment else None


def augment(images: np.ndarray, rng: np.random.Generator, augmentation: Augmentation = Augmentation()) -> np.ndarray:
  """Each image shifted by a random crop of its padded self and, if asked, flipped left-right."""
  n, h, w, _ = images.shape
  pad = augmentation.pad
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  top = rng.integers(0, 2 * pad + 1, size=n)
  left = rng.integers(0, 2 * pad + 1, size=n)
  rows = top[:, None] + np.arange(h)
  cols = left[:, None] + np.arange(w)
  if augmentation.flip:
    flip = rng.random(n) < 0.5
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
  """The order in which one epoch visits the training set: the same in both input pipelines."""
  return np.random.default_rng([seed, epoch]).permutation(size)


def train_batches(dataset: Dataset, batch_size: int, seed: int, epoch: int,
                  augmentation: Augmentation | None) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of shuffled, full training batches; a function of (seed, epoch) only.

  The generator that draws `epoch_order` then draws the augmentation.
  """
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(dataset.train_images.shape[0])
  for start in range(0, order.size - batch_size + 1, batch_size):
    index = np.sort(order[start:start + batch_size])
    images = dataset.train_images[index]
    if augmentation is not None:
      images = augment(images, rng, augmentation)
    yield {"image": normalize(images, dataset.mean, dataset.std),
           "label": dataset.train_labels[index]}


def steps_per_epoch(dataset: Dataset, batch_size: int) -> int:
  return dataset.train_images.shape[0] // batch_size


def eval_batches(dataset: Dataset, batch_size: int,
                 max_batches: int = -1) -> Iterator[dict[str, np.ndarray]]:
  """The test set in order, the last batch zero-padded to full size with `mask` marking real rows."""
  n = dataset.test_images.shape[0]
  if max_batches > 0:
    n = min(n, max_batches * batch_size)
  for start in range(0, n, batch_size):
    images = dataset.test_images[start:min(start + batch_size, n)]
    labels = dataset.test_labels[start:min(start + batch_size, n)]
    real = images.shape[0]
    if real < batch_size:
      images = np.concatenate([images, np.zeros((batch_size - real, *images.shape[1:]), images.dtype)])
      labels = np.concatenate([labels, np.zeros(batch_size - real, labels.dtype)])
    yield {"image": normalize(images, dataset.mean, dataset.std),
           "label": labels,
           "mask": np.arange(batch_size) < real}
