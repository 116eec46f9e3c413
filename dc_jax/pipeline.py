"""The stages of Deep Compression in order, each resumable, recorded in `results.json`.

Today: the dense baseline. Each stage trains from its own checkpoint folder
under the workdir and adds its entry under `stages` in `results.json`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import ml_collections

from dc_jax import data, models, train
from dc_jax.errors import DataError

RESULTS_FILE = "results.json"


def write_json_atomically(path: Path, content: dict[str, Any]) -> None:
  """Writes to a temporary file beside `path`, then renames: readers never see half a file."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(content, f, indent=2)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def record_stage(workdir: Path, stage: str, entry: dict[str, Any]) -> dict[str, Any]:
  """Adds (or replaces) `stages[stage]` in the workdir's results.json and returns the whole file."""
  path = workdir / RESULTS_FILE
  results = json.loads(path.read_text()) if path.exists() else {"stages": {}}
  results["stages"][stage] = entry
  write_json_atomically(path, results)
  return results


def check_compatible(model_config: ml_collections.ConfigDict, dataset: data.Dataset) -> None:
  """Fails before any compute when the data's images do not fit the model."""
  expected = models.INPUT_SHAPES[model_config.name]
  if dataset.image_shape != expected:
    raise DataError(f"model.name={model_config.name!r} takes {expected} images; "
                         f"data.name={dataset.name!r} has {dataset.image_shape}")


def train_baseline(config: ml_collections.ConfigDict, dataset: data.Dataset,
                   workdir: Path) -> train.TrainState:
  """Stage 1: the dense network, trained from scratch (or resumed) in `workdir/baseline`."""
  model = models.create_model(config.model, dataset.num_classes)
  tx = train.create_optimizer(config.train, train.steps_in_epoch(dataset, config.train))
  state = train.create_train_state(jax.random.key(config.seed), model, dataset.image_shape, tx)
  return train.fit(state, dataset, config.train, config.seed,
                   checkpoint_dir=workdir / "baseline", metrics_path=workdir / "metrics.jsonl",
                   augment=config.data.augment)


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Runs every stage the config asks for and returns the contents of results.json."""
  workdir = Path(workdir)
  models.create_model(config.model, 10)  # Rejects an unknown model before the data is read.
  dataset = data.load(config.data)
  check_compatible(config.model, dataset)
  workdir.mkdir(parents=True, exist_ok=True)
  state = train_baseline(config, dataset, workdir)
  test = train.evaluate(state, dataset, config.train.eval_batch_size, config.train.eval_batches)
  return record_stage(workdir, "baseline", {
      "test_accuracy": test["accuracy"],
      "test_examples": test["examples"],
      "params": train.count_params(state.params),
      "steps": int(state.step),
  })
