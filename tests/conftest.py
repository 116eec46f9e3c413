"""Shared fixtures: the real datasets beside the project, and small synthetic ones."""

import os
from pathlib import Path

import numpy as np
import pytest

from dc_jax import data

# CI sets DC_JAX_DATA_DIR=../shared/data; a developer's checkout finds it beside the project too.
SHARED_DATA = Path(os.environ.get(data.DATA_DIR_ENV, Path(__file__).parents[1] / ".." / "shared" / "data"))


@pytest.fixture
def shared_data_dir() -> Path:
  if not (SHARED_DATA / "mnist.npz").exists():
    pytest.skip(f"real datasets not found in {SHARED_DATA}")
  return SHARED_DATA


def synthetic_dataset(name: str = "mnist", n_train: int = 256, n_test: int = 100, seed: int = 0) -> data.Dataset:
  """A learnable toy dataset: the class is written into the image as a bright stripe."""
  _, shape, num_classes = data.DATASETS[name]
  rng = np.random.default_rng(seed)

  def split(n):
    labels = rng.integers(0, num_classes, n)
    images = rng.integers(0, 60, (n, *shape)).astype(np.uint8)
    rows = (labels * shape[0]) // num_classes
    images[np.arange(n), rows] = 255
    return images, labels

  arrays = {}
  arrays["x_train"], arrays["y_train"] = split(n_train)
  arrays["x_test"], arrays["y_test"] = split(n_test)
  return data._make_dataset(name, arrays, "synthetic")
