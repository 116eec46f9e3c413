"""The networks of Deep Compression and of the PyTorch original, as plain flax.linen modules."""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from dc_jax.errors import ConfigError
from dc_jax.models.lenet import LeNet5, LeNet300100
from dc_jax.models.vgg import VGG

__all__ = ["VGG", "LeNet300100", "LeNet5", "create_model", "compute_dtype", "MODEL_NAMES", "INPUT_SHAPES",
           "COMPUTE_DTYPES"]

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


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """Builds the module named by `config.name` with the fields that apply to it."""
  dtype = compute_dtype(config.dtype)
  if config.name == "vgg":
    return VGG(
        depth=config.depth,
        width=config.width,
        classifier_widths=tuple(config.classifier_widths),
        dropout_rate=config.dropout,
        num_classes=num_classes,
        conv_impl=config.conv_impl,
        dtype=dtype,
    )
  if config.name == "lenet300_100":
    return LeNet300100(num_classes=num_classes, dtype=dtype)
  if config.name == "lenet5":
    return LeNet5(num_classes=num_classes, dtype=dtype)
  raise ConfigError(f"model.name={config.name!r} is not a model; valid: {', '.join(MODEL_NAMES)}")
