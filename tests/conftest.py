"""Shared fixtures: the real datasets beside the project, and small synthetic ones."""

import os
from pathlib import Path

import numpy as np
import pytest

from dc_jax import data

# CI sets DC_JAX_DATA_DIR=../shared/data; a developer's checkout finds it beside the project too.
SHARED_DATA = Path(os.environ.get(data.DATA_DIR_ENV, Path(__file__).parents[1] / ".." / "shared" / "data"))


def in_ci() -> bool:
  """CI sets CI=true (GitHub Actions, GitLab, .ci/run); there a missing dataset is a failure, not a skip."""
  return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_data(path: Path) -> Path:
  """`path`, or a skip where it is missing; in CI a failure of one line, so that a green run ran every test."""
  if not path.exists():
    message = f"real dataset {path.name} not found in {path.parent} (set {data.DATA_DIR_ENV} to the folder holding it)"
    if in_ci():
      pytest.fail(message, pytrace=False)
    pytest.skip(message)
  return path


REAL_DATASETS = ("mnist.npz", "cifar10.npz")  # What the tests that take `shared_data_dir` read.


def pytest_configure(config: pytest.Config) -> None:
  """In CI, stops before any test when a dataset is missing: one line, not a run that ends green with skips."""
  missing = [name for name in REAL_DATASETS if not (SHARED_DATA / name).exists()]
  if in_ci() and missing:
    raise pytest.UsageError(f"CI=true and {', '.join(missing)} not found in {SHARED_DATA.resolve()}: "
                            f"set {data.DATA_DIR_ENV} to the folder holding them")


@pytest.fixture
def shared_data_dir() -> Path:
  for name in REAL_DATASETS:
    require_data(SHARED_DATA / name)
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
