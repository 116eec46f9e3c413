"""VGG with BatchNorm, the CIFAR variant of the PyTorch original (38.96M parameters at depth 19)."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dc_jax.errors import ConfigError

# Output channels of each 3x3 conv per block; every block ends with a 2x2 max-pool.
BLOCKS = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
CONV_IMPLS = ("auto", "xla", "patches")
BATCH_NORM_EPSILON = 1e-5  # PyTorch's BatchNorm2d default.
# Where "auto" uses patches on CPU (bench/conv.py --layers, batch 128, forward + backward): XLA's CPU convolution
# is pathologically slow on 2x2 maps (24x slower at 512 channels, 3x at 64) and on large maps with many
# channels (3x at 32x32x64, 2x at 16x16x128); it is as fast at 8x8x256 and 4x4x512, and faster on narrow maps.
PATCHES_MAX_PIXELS = 4  # Maps of at most this many pixels...
PATCHES_MIN_PIXELS, PATCHES_MIN_CHANNELS = 256, 64  # ...or of at least this many pixels and input channels.


def patches_conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """A stride-1 SAME convolution (NHWC, HWIO) as one matmul over the kh*kw shifted copies of the padded input.

  Explicit im2col by slicing, not `lax.conv_general_dilated_patches`: that one is
  itself a (grouped) convolution on XLA:CPU, and measured 2x slower on 2x2 maps.
  Patch features are ordered (kh, kw, in), matching `kernel.reshape(-1, out)`.
  """
  kh, kw, _, features = kernel.shape
  _, h, w, _ = x.shape
  padded = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
  columns = jnp.concatenate([padded[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
  return columns @ kernel.reshape(-1, features)


class PatchesConv(nn.Module):
  """A SAME conv computed by `patches_conv`, with exactly nn.Conv's parameters (names, shapes, initialisers).

  So a checkpoint, pruning mask or SharedKernel made with one implementation fits the other.
  """

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  dtype: Any = jnp.float32  # Compute dtype, as nn.Conv's; the parameters are float32.

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kernel = self.param("kernel", nn.linear.default_kernel_init, (*self.kernel_size, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    return patches_conv(x, kernel) + bias


def resolve_conv_impl(conv_impl: str, shape: tuple[int, ...]) -> str:
  """The implementation for an NHWC input of `shape`: "auto" picks patches only where measured faster (CPU)."""
  if conv_impl not in CONV_IMPLS:
    raise ConfigError(f"model.conv_impl={conv_impl!r} is not a convolution; valid: {', '.join(CONV_IMPLS)}")
  if conv_impl != "auto":
    return conv_impl
  _, h, w, channels = shape
  faster = h * w <= PATCHES_MAX_PIXELS or (h * w >= PATCHES_MIN_PIXELS and channels >= PATCHES_MIN_CHANNELS)
  return "patches" if faster and jax.default_backend() == "cpu" else "xla"


def conv_channels(depth: int, width: float = 1.0, channels: Sequence[int] = ()) -> tuple[int, ...]:
  """Every conv's output channels in order: `channels` where given (a shrunk VGG), else BLOCKS[depth] x width."""
  if depth not in BLOCKS:
    raise ConfigError(f"model.depth={depth} is not a VGG depth; valid: {sorted(BLOCKS)}")
  convs = sum(len(block) for block in BLOCKS[depth])
  if channels:
    if len(channels) != convs:
      raise ConfigError(f"model.channels has {len(channels)} entries; valid: one per conv, {convs} at depth {depth}")
    return tuple(int(c) for c in channels)
  return tuple(max(1, round(features * width)) for block in BLOCKS[depth] for features in block)


def conv_names(depth: int) -> tuple[str, ...]:
  """The convs' names in order ("conv1_1", ...); each conv{b}_{i} is followed by bn{b}_{i}."""
  return tuple(f"conv{b}_{i}" for b, block in enumerate(BLOCKS[depth], start=1) for i in range(1, len(block) + 1))


def batch_norm_pairs(depth: int) -> tuple[tuple[str, str], ...]:
  """(conv, BatchNorm) names in order: each BatchNorm normalises that conv's output (dc_jax/folding.py)."""
  return tuple((name, "bn" + name[len("conv"):]) for name in conv_names(depth))


class VGG(nn.Module):
  """3x3 conv + BN + ReLU blocks, max-pools, then a dropout MLP classifier.

  Layers are named `conv{block}_{i}` / `bn{block}_{i}` and `fc{j}` so that
  per-layer tables read like the paper's. `width` scales every conv, for
  narrow CPU runs; `channels`, when given, sets every conv's output channels
  instead (a VGG with channels removed, dc_jax/slimming.py); the layer names
  stay the same. `classifier_widths=()` gives the common 512->10 head.
  `conv_impl` chooses how convs are computed (auto | xla | patches); the
  parameters are the same whichever it is. `dtype` is the compute dtype
  (bfloat16 on accelerators); parameters and BatchNorm statistics stay
  float32, and the logits are returned as float32.
  """

  depth: int = 19
  width: float = 1.0
  channels: Sequence[int] = ()
  classifier_widths: Sequence[int] = (4096, 4096)
  dropout_rate: float = 0.5
  num_classes: int = 10
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    conv_features = iter(conv_channels(self.depth, self.width, self.channels))
    x = x.astype(self.dtype)
    for block, channels in enumerate(BLOCKS[self.depth], start=1):
      for i in range(1, len(channels) + 1):
        features, name = next(conv_features), f"conv{block}_{i}"
        if resolve_conv_impl(self.conv_impl, x.shape) == "patches":
          x = PatchesConv(features, (3, 3), dtype=self.dtype, name=name)(x)
        else:
          x = nn.Conv(features, (3, 3), padding="SAME", dtype=self.dtype, name=name)(x)
        # PyTorch's BatchNorm2d defaults: momentum 0.1, eps 1e-5.
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BATCH_NORM_EPSILON, dtype=self.dtype,
                         name=f"bn{block}_{i}")(x)
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for j, features in enumerate(self.classifier_widths, start=1):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.relu(nn.Dense(features, dtype=self.dtype, name=f"fc{j}")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name=f"fc{len(self.classifier_widths) + 1}")(x)
    return logits.astype(jnp.float32)
