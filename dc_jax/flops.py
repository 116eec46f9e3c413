"""What a model costs: parameters, and multiply-adds per image of every conv and dense layer.

Counted from the model itself (shapes traced by `jax.eval_shape`, nothing
computed), so it holds for any flax.linen net whose layers have a `kernel`.
FLOPs here are multiply-adds (MACs) of the kernels, as the pruning literature
counts them (network slimming, MorphNet); biases, BatchNorm, ReLU and pooling
add a few per output and are left out.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dc_jax import rules


def count(model: nn.Module, image_shape: tuple[int, ...], variables: Any = None) -> tuple[list[dict[str, Any]],
                                                                                        dict[str, int]]:
  """Per layer and total parameters and multiply-adds of one image through `model` (evaluation mode).

  A layer is a module with a `kernel`: its multiply-adds are the kernel's size
  times the positions of its output (H x W for a conv, 1 for a dense layer).
  `variables` (or their shapes) default to the model's init.
  """
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  if variables is None:
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"]),
      variables, x)
  outputs = rules.by_path(state["intermediates"])
  layers = []
  for name, leaf in rules.by_path(variables["params"]).items():
    module, _, kind = name.rpartition("/")
    if kind != "kernel":
      continue
    out_shape = outputs[f"{module}/__call__/0"].shape
    params = sum(math.prod(p.shape) for n, p in rules.by_path(variables["params"]).items()
                 if n.rpartition("/")[0] == module)
    layers.append({"layer": module, "params": params,
                   "flops": math.prod(leaf.shape) * math.prod(out_shape[1:-1])})
  totals = {"params": sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"])),
            "flops": sum(row["flops"] for row in layers)}
  return layers, totals
