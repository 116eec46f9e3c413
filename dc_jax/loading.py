"""One call from a compressed model file to a ready `predict(images) -> logits` (issue 16).

A file of format version 3 says what it holds in its metadata record: the
model's name and settings (what `models.create_model` takes), the input shape,
the dataset and its class count, and the training set's per-channel
normalisation statistics. `describe` writes that record's content and `load`
reads it back, so a `.dcz` is usable without the config of the run that made it.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dc_jax import codec, data, inference, models
from dc_jax.errors import ConfigError, DataError
from dc_jax.share import is_shared

# The metadata's fields, and the JSON type each must have.
FIELDS = {"model": dict, "input_shape": list, "dataset": str, "num_classes": int, "mean": list, "std": list}


def describe(model: dict[str, Any], dataset: data.Dataset) -> dict[str, Any]:
  """The metadata the pipeline stores in every .dcz: the model's settings and what its input is.

  Args:
    model: `models.create_model`'s keywords, name included (a config's `model` section).
    dataset: the data the model was trained on; its statistics normalise the images at inference.
  """
  settings = json.loads(json.dumps(models.settings_of(dict(model))))  # JSON values: tuples become lists.
  return {"model": settings, "input_shape": [int(d) for d in dataset.image_shape], "dataset": dataset.name,
          "num_classes": int(dataset.num_classes), "mean": [_float32(m) for m in dataset.mean],
          "std": [_float32(s) for s in dataset.std]}


def _float32(value: float) -> float:
  """The shortest decimal that reads back as the same float32: what normalisation computes in."""
  return float(str(np.float32(value)))


def metadata(path: str | Path) -> dict[str, Any]:
  """The file's checked metadata; DataError in one line when it has none (format 1 or 2) or a field is wrong."""
  found = codec.read_metadata(path)
  if found is None:
    raise DataError(f"{path} holds no metadata (a file of format version 1 or 2, written before version 3): "
                    f"its model and data must be given, e.g. launch.py --config CONFIG --evaluate {path}")
  for name, kind in FIELDS.items():
    value = found.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
      raise DataError(f"{path}: metadata field {name!r} is {value!r}; valid: a JSON {kind.__name__}")
  channels = found["input_shape"][-1] if found["input_shape"] else None
  numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in found["mean"] + found["std"])
  if not (numeric and len(found["mean"]) == len(found["std"]) == channels and min(found["std"]) > 0):
    raise DataError(f"{path}: metadata mean {found['mean']} and std {found['std']} are not "
                    f"{channels} channel statistics with std > 0")
  if "name" not in found["model"]:
    raise DataError(f"{path}: metadata field 'model' has no 'name'; valid: one of {', '.join(models.MODEL_NAMES)}")
  return found


def model_of(described: dict[str, Any], path: str | Path = "") -> nn.Module:
  """The flax module the metadata describes; DataError naming the file if its settings build none."""
  try:
    return models.create_model(num_classes=described["num_classes"], **described["model"])
  except (ConfigError, TypeError) as error:
    raise DataError(f"{path}: metadata model {described['model']} builds no model: {error}") from error


def normalizer(described: dict[str, Any]):
  """The jittable `images -> model input` of the metadata: pixel values / 255, minus mean, over std per channel."""
  mean = np.asarray(described["mean"], np.float32)
  std = np.asarray(described["std"], np.float32)

  def normalize(images: jax.Array) -> jax.Array:
    return (jnp.asarray(images).astype(jnp.float32) / 255.0 - mean) / std

  return normalize


def _widen(leaf: Any) -> Any:
  """float16 raw leaves (codec.raw_dtype) compute as float32, as the pipeline evaluates them."""
  return leaf if is_shared(leaf) or leaf.dtype != np.float16 else leaf.astype(np.float32)


def load(path: str | Path, form: str = "dense", nibbles: bool | None = None) -> inference.Predictor:
  """A ready `predict(images) -> logits` from a .dcz of format version 3, on the default device.

  `images` are what the dataset gives: uint8 pixels [batch, *input_shape]
  (e.g. `data.load("cifar10").test_images[:8]`). They are normalised inside
  the jitted function with the statistics stored in the file, so no caller
  needs the training set. The first call compiles.

  Args:
    path: a file written with metadata (every model*.dcz the pipeline writes).
    form: "dense", "codebook" or "sparse": how the weights are held and multiplied (see `dc_jax.inference`).
    nibbles: `codebook` form only; 4-bit codes where they fit (None), always (True) or never (False).

  Returns:
    An `inference.Predictor`: call it on images; `.metadata` is the file's metadata.
  """
  described = metadata(path)
  model = model_of(described, path)
  variables = jax.tree.map(_widen, codec.read(path, dense=form == "dense"), is_leaf=is_shared)
  return inference.predictor(model, variables, form, nibbles, preprocess=normalizer(described),
                             metadata=described)
