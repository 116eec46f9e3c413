"""Channel pruning that shrinks VGG (network slimming, Liu et al. 2017; MorphNet's FLOPs weighting, Gordon et al. 2018).

Training pushes BatchNorm scales (gamma) towards zero with an L1 term, here an
optax transform that adds its subgradient to their gradients; channels are
then chosen by |gamma|, globally or layer by layer, to a FLOPs target; and
`shrink` removes the others physically: the conv's output channels, its
BatchNorm's parameters and statistics, the next conv's input channels (or the
first classifier layer's inputs). The result is a smaller dense VGG, built by
`models.create_model(..., channels=...)`, that any runtime runs faster.

What removal gives, exactly: the same logits as the full model with the
removed channels' gamma and beta set to 0 (`mask_channels`), whose channels
then output relu(0) = 0. A removed channel whose gamma the L1 took to 0 but
whose beta is not 0 output the constant relu(beta); `shrink(fold_constants=
True)` moves it into the next layer's bias, exactly for the classifier and
away from the borders of a SAME-padded conv. Either way fine-tuning follows,
as in network slimming.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dc_jax import rules
from dc_jax.errors import ConfigError
from dc_jax.models import vgg

Variables = dict[str, Any]  # {"params": ..., "batch_stats": ...} of a VGG.
Keep = dict[str, np.ndarray]  # {"conv1_1": bool per output channel, True = kept}, every conv of the VGG.
SCOPES = ("global", "layer")
BN_SCALE = r"(.*/)?bn[^/]*/scale"  # VGG's BatchNorm scales, "bn1_1/scale".


def bn_scale_l1(strength: float, weights: Any) -> optax.GradientTransformation:
  """Adds strength * weights * sign(gamma) to the gradients of the BatchNorm scales: L1's subgradient.

  As network slimming's own code does it (`grad += s * sign(weight)`), so it
  chains before the optimizer like weight decay. `weights` is shaped like the
  parameters (`l1_weights`): per channel on the scales, 0 elsewhere.
  """
  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    updates = jax.tree.map(lambda g, p, w: g + strength * w * jnp.sign(p).astype(g.dtype), updates, params, weights)
    return updates, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def with_bn_scale_l1(tx: optax.GradientTransformation, model: vgg.VGG, image_shape: tuple[int, ...],
                     strength: float, flops_weighted: bool = False) -> optax.GradientTransformation:
  """`tx` after `bn_scale_l1` on `model`'s BatchNorm scales (train.bn_scale_l1, train.bn_scale_l1_flops)."""
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))["params"]
  weights = l1_weights(params, model.depth, model.classifier_widths, model.num_classes, flops_weighted,
                       image_shape[0])
  return optax.chain(bn_scale_l1(strength, weights), tx)


def vgg_flops(channels: Sequence[int], depth: int, classifier_widths: Sequence[int], num_classes: int,
              image_size: int = 32, in_channels: int = 3) -> int:
  """Multiply-adds of one image through a VGG with these conv channels, as `flops.count` counts them."""
  total, previous, index = 0, in_channels, 0
  for block, convs in enumerate(vgg.BLOCKS[depth]):
    side = image_size >> block
    for _ in convs:
      total += side * side * 9 * previous * channels[index]
      previous, index = channels[index], index + 1
  features = previous * (image_size >> len(vgg.BLOCKS[depth])) ** 2
  for width in (*classifier_widths, num_classes):
    total, features = total + features * width, width
  return total


def channel_costs(channels: Sequence[int], depth: int, classifier_widths: Sequence[int], num_classes: int,
                  image_size: int = 32) -> list[float]:
  """Per conv, the multiply-adds one of its output channels costs: its own filter, and the next layer's inputs."""
  flops = vgg_flops(channels, depth, classifier_widths, num_classes, image_size)
  costs = []
  for i in range(len(channels)):
    fewer = list(channels)
    fewer[i] -= 1
    costs.append(float(flops - vgg_flops(fewer, depth, classifier_widths, num_classes, image_size)))
  return costs


def l1_weights(params: Any, depth: int, classifier_widths: Sequence[int], num_classes: int,
               flops_weighted: bool = False, image_size: int = 32) -> Any:
  """`bn_scale_l1`'s weights: 1 on every BatchNorm scale, or each channel's FLOPs cost over the mean cost; 0 elsewhere.

  FLOPs weighting (MorphNet's idea, in its simplest form) makes an expensive
  channel (large maps, many inputs) pay more for staying, so the regulariser
  trades accuracy against FLOPs rather than against channel count.
  """
  names = vgg.conv_names(depth)
  channels = [int(np.shape(params[name.replace("conv", "bn")]["scale"])[0]) for name in names]
  costs = channel_costs(channels, depth, classifier_widths, num_classes, image_size)
  mean = sum(c * n for c, n in zip(costs, channels)) / sum(channels)
  weight_of = {name.replace("conv", "bn"): (cost / mean if flops_weighted else 1.0) for name, cost in zip(names, costs)}

  def weight(path, leaf):
    name = rules.path_name(path)
    if not re.fullmatch(BN_SCALE, name):
      return 0.0
    return jnp.full(np.shape(leaf), weight_of[name.rsplit("/", 2)[-2]], jnp.float32)

  return jax.tree_util.tree_map_with_path(weight, params)


def scales(params: Any, depth: int) -> list[np.ndarray]:
  """|gamma| of every conv's BatchNorm, in conv order."""
  return [np.abs(np.asarray(params[name.replace("conv", "bn")]["scale"], np.float32)) for name in vgg.conv_names(depth)]


def select_channels(params: Any, depth: int, classifier_widths: Sequence[int], num_classes: int,
                    flops_fraction: float, scope: str = "global", multiple: int = 1, image_size: int = 32) -> Keep:
  """The channels to keep so that the VGG costs at most `flops_fraction` of its multiply-adds, by |gamma|.

  "global" drops channels in order of |gamma| over all layers (network
  slimming's one threshold), each layer keeping at least one; "layer" keeps
  the same fraction of every layer, its largest |gamma|, the largest fraction
  that meets the target. Ties go to the earlier channel. With `multiple`, a
  layer keeps a multiple of it (or all its channels): XLA:CPU's convolutions
  run markedly faster on channel counts that are multiples of 8
  (BENCHMARKS.md, channel pruning).
  """
  _check_choice(flops_fraction, scope, multiple)
  gammas = scales(params, depth)
  full = [g.size for g in gammas]

  def rounded(counts):
    return [min(size, max(multiple, -(-count // multiple) * multiple)) for count, size in zip(counts, full)]

  def flops(counts):
    return vgg_flops(rounded(counts), depth, classifier_widths, num_classes, image_size)

  target = flops_fraction * flops(full)
  orders = [np.argsort(-g, kind="stable") for g in gammas]  # Largest first.
  if scope == "global":
    counts = list(full)
    candidates = sorted(((float(g[c]), layer, -rank) for layer, g in enumerate(gammas)
                         for rank, c in enumerate(orders[layer])))
    for _, layer, _ in candidates:  # Smallest |gamma| first; within a layer, its ranks from the last.
      if flops(counts) <= target:
        break
      if counts[layer] > 1:
        counts[layer] -= 1
  else:
    low, high = 0.0, 1.0  # Bisection on the kept fraction; round(f * c) channels, at least 1.
    layer_counts = lambda f: [max(1, round(f * c)) for c in full]
    for _ in range(50):
      middle = (low + high) / 2
      low, high = (middle, high) if flops(layer_counts(middle)) <= target else (low, middle)
    counts = layer_counts(low)
  channels = rounded(counts)
  keep = {}
  for name, order, count, size in zip(vgg.conv_names(depth), orders, channels, full):
    kept = np.zeros(size, bool)
    kept[order[:count]] = True
    keep[name] = kept
  return keep


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which channels stage slimmed keeps (channels.*): `select_channels`'s settings, checked when built."""

  flops_fraction: float
  scope: str = "global"
  multiple: int = 1

  def __post_init__(self):
    _check_choice(self.flops_fraction, self.scope, self.multiple)

  def select(self, params: Any, model: dict[str, Any], num_classes: int, image_size: int) -> Keep:
    """The channels to keep of the VGG with these settings (models.create_model's keywords) and `params`."""
    return select_channels(params, model["depth"], tuple(model["classifier_widths"]), num_classes,
                           self.flops_fraction, self.scope, self.multiple, image_size)


def _check_choice(flops_fraction: float, scope: str, multiple: int) -> None:
  if not 0.0 < flops_fraction <= 1.0:
    raise ConfigError(f"flops_fraction={flops_fraction!r} is not a fraction; valid: 0 < flops_fraction <= 1")
  if scope not in SCOPES:
    raise ConfigError(f"scope={scope!r} is not a scope; valid: {', '.join(SCOPES)}")
  if not isinstance(multiple, int) or multiple < 1:
    raise ConfigError(f"multiple={multiple!r} is not a channel multiple; valid: an integer >= 1")


def _check_keep(variables: Variables, keep: Keep, depth: int) -> None:
  for name in vgg.conv_names(depth):
    size = np.shape(variables["params"][name]["kernel"])[-1]
    if name not in keep or np.shape(keep[name]) != (size,) or not np.any(keep[name]):
      raise ValueError(f"keep[{name!r}] must be {size} bools, at least one True; "
                       f"got {None if name not in keep else np.shape(keep[name])}")


def mask_channels(variables: Variables, keep: Keep, depth: int) -> Variables:
  """The full VGG with the removed channels' BatchNorm scale and bias at 0: what `shrink` computes, at full size."""
  _check_keep(variables, keep, depth)
  params = dict(variables["params"])
  for name in vgg.conv_names(depth):
    bn = name.replace("conv", "bn")
    kept = jnp.asarray(keep[name])
    params[bn] = {key: jnp.where(kept, value, 0) for key, value in params[bn].items()}
  return {**variables, "params": params}


def shrink(variables: Variables, keep: Keep, depth: int,
           fold_constants: bool = False) -> tuple[Variables, tuple[int, ...]]:
  """The variables of the VGG with only the kept channels, and its `channels` setting (model.channels).

  Each conv loses its removed output channels and the previous conv's
  removed inputs; its BatchNorm's scale, bias, mean and var lose the removed
  channels; the first dense layer loses the rows that the removed channels of
  the last conv fed (flattened as (h, w, c)). Names and every other leaf are
  unchanged. Pure: the input is not modified.

  With `fold_constants`, a removed channel is taken to output what it would
  with gamma = 0, the constant relu(beta), and that constant's contribution
  moves into the next layer's bias: exact for the first dense layer, exact
  away from the borders of a SAME-padded conv (whose border taps see zero
  padding instead). The L1 on the scales drives gamma, not beta, to zero, so
  this is what keeps such a channel's constant.
  """
  _check_keep(variables, keep, depth)
  params, stats = dict(variables["params"]), dict(variables.get("batch_stats", {}))
  previous = constants = None
  for name in vgg.conv_names(depth):
    bn, kept = name.replace("conv", "bn"), np.flatnonzero(keep[name])
    kernel, bias = jnp.asarray(params[name]["kernel"]), jnp.asarray(params[name]["bias"])
    if previous is not None:
      if fold_constants:
        bias = bias + jnp.einsum("hwio,i->o", kernel[..., ~keep_of(previous, kernel.shape[-2]), :], constants)
      kernel = kernel[..., previous, :]
    params[name] = {**params[name], "kernel": kernel[..., kept], "bias": bias[kept]}
    constants = jax.nn.relu(jnp.asarray(params[bn]["bias"])[~np.asarray(keep[name])])
    params[bn] = {key: jnp.asarray(value)[kept] for key, value in params[bn].items()}
    if bn in stats:
      stats[bn] = {key: jnp.asarray(value)[kept] for key, value in stats[bn].items()}
    previous = kept
  first = "fc1"
  kernel, bias = jnp.asarray(params[first]["kernel"]), jnp.asarray(params[first]["bias"])
  last = np.shape(variables["params"][vgg.conv_names(depth)[-1]]["kernel"])[-1]
  rows = kernel.reshape(-1, last, kernel.shape[-1])
  if fold_constants:
    bias = bias + jnp.einsum("sio,i->o", rows[:, ~keep_of(previous, last), :], constants)
  params[first] = {**params[first], "kernel": rows[:, previous, :].reshape(-1, kernel.shape[-1]), "bias": bias}
  channels = tuple(int(np.sum(keep[name])) for name in vgg.conv_names(depth))
  return {**variables, "params": params, "batch_stats": stats}, channels


def keep_of(kept: np.ndarray, size: int) -> np.ndarray:
  """Kept channel indices as a bool mask over `size` channels."""
  mask = np.zeros(size, bool)
  mask[kept] = True
  return mask


def summary(before: tuple[list[dict[str, Any]], dict[str, int]],
            after: tuple[list[dict[str, Any]], dict[str, int]]) -> dict[str, Any]:
  """`flops.count` of the full and the shrunk model side by side, as plain Python for results.json."""
  (_, full), (_, small) = before, after
  return {"params": full["params"], "params_after": small["params"], "flops": full["flops"],
          "flops_after": small["flops"], "flops_kept": small["flops"] / full["flops"],
          "params_kept": small["params"] / full["params"],
          "speedup_flops": full["flops"] / small["flops"] if small["flops"] else math.inf}
