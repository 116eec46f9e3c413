"""VGG with BatchNorm, the CIFAR variant of the PyTorch original (38.96M parameters at depth 19)."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dc_jax.errors import ConfigError

# Output channels of each 3x3 conv per block; every block ends with a 2x2 max-pool.
BLOCKS = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
  """3x3 conv + BN + ReLU blocks, max-pools, then a dropout MLP classifier.

  Layers are named `conv{block}_{i}` / `bn{block}_{i}` and `fc{j}` so that
  per-layer tables read like the paper's. `width` scales every conv, for
  narrow CPU runs; `classifier_widths=()` gives the common 512->10 head.
  """

  depth: int = 19
  width: float = 1.0
  classifier_widths: Sequence[int] = (4096, 4096)
  dropout_rate: float = 0.5
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if self.depth not in BLOCKS:
      raise ConfigError(f"model.depth={self.depth} is not a VGG depth; valid: {sorted(BLOCKS)}")
    for block, channels in enumerate(BLOCKS[self.depth], start=1):
      for i, features in enumerate(channels, start=1):
        x = nn.Conv(max(1, round(features * self.width)), (3, 3), padding="SAME",
                    name=f"conv{block}_{i}")(x)
        # PyTorch's BatchNorm2d defaults: momentum 0.1, eps 1e-5.
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         name=f"bn{block}_{i}")(x)
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for j, features in enumerate(self.classifier_widths, start=1):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.relu(nn.Dense(features, name=f"fc{j}")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name=f"fc{len(self.classifier_widths) + 1}")(x)
