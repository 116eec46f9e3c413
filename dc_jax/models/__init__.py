"""The networks of Deep Compression and of the PyTorch original, as plain flax.linen modules."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dc_jax.errors import ConfigError
from dc_jax.models.lenet import LeNet5, LeNet300100
from dc_jax.models import vgg
from dc_jax.models.vgg import BATCH_NORM_EPSILON, VGG

__all__ = ["VGG", "LeNet300100", "LeNet5", "create_model", "compute_dtype", "MODEL_NAMES", "INPUT_SHAPES",
           "COMPUTE_DTYPES", "settings_of", "batch_norm_pairs", "BATCH_NORM_EPSILON"]

MODEL_NAMES = ("vgg", "lenet300_100", "lenet5")

# The image shape (H, W, C) each model is built for; data of another shape is rejected early.
INPUT_SHAPES = {
    "vgg": (32, 32, 3),
    "lenet300_100": (28, 28, 1),
    "lenet5": (28, 28, 1),
}
# model.dtype: the compute dtype. Parameters, codebooks and optimizer state are float32 either way.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str) -> type:
  if name not in COMPUTE_DTYPES:
    raise ConfigError(f"model.dtype={name!r} is not a compute dtype; valid: {', '.join(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[name]


VGG_SETTINGS = ("depth", "width", "channels", "classifier_widths", "dropout", "conv_impl")  # The LeNets ignore these.


def settings_of(model: dict[str, Any]) -> dict[str, Any]:
  """`create_model`'s keywords (a config's model section) less those its model ignores: what a file describes."""
  return {name: value for name, value in model.items() if model.get("name") == "vgg" or name not in VGG_SETTINGS}


def batch_norm_pairs(model: dict[str, Any]) -> tuple[tuple[str, str], ...]:
  """The (layer, BatchNorm) name pairs of a config's model section; () for a model without BatchNorm."""
  return vgg.batch_norm_pairs(model.get("depth", 19)) if model.get("name") == "vgg" else ()


def create_model(name: str, num_classes: int, *, depth: int = 19, width: float = 1.0, channels: Sequence[int] = (),
                 classifier_widths: Sequence[int] = (4096, 4096), dropout: float = 0.5, conv_impl: str = "auto",
                 dtype: str = "float32") -> nn.Module:
  """Builds the module `name` with the settings that apply to it (the VGG ones are ignored for the LeNets).

  The keywords are the `model.*` fields, so a config builds one with
  `create_model(num_classes=10, **config.model)`.
  """
  compute = compute_dtype(dtype)
  if name == "vgg":
    return VGG(depth=depth, width=width, channels=tuple(channels), classifier_widths=tuple(classifier_widths),
               dropout_rate=dropout, num_classes=num_classes, conv_impl=conv_impl, dtype=compute)
  if name == "lenet300_100":
    return LeNet300100(num_classes=num_classes, dtype=compute)
  if name == "lenet5":
    return LeNet5(num_classes=num_classes, dtype=compute)
  raise ConfigError(f"model.name={name!r} is not a model; valid: {', '.join(MODEL_NAMES)}")
