"""BatchNorm folded into a per-channel scale and shift for the file: the same outputs at inference, fewer floats.

A convolution followed by BatchNorm keeps five floats a channel: the conv's
bias, BatchNorm's scale and bias, its running mean and variance. Inference
needs two: the scale gamma / sqrt(var + eps) and the shift
beta + (b - mean) * gamma / sqrt(var + eps). Folded, BatchNorm's scale and bias
hold those two, and the mean, variance and conv bias become constants (0, 1, 0)
that `codec.deflate` stores in a few bytes. Kernels are untouched, so their
codebooks and indices are too. A folded model is for inference: trained
again, BatchNorm would normalise with batch statistics under other scales.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import traverse_util


def fold_batch_norm(variables: dict[str, Any], pairs: Sequence[tuple[str, str]], epsilon: float) -> dict[str, Any]:
  """`variables` ({"params", "batch_stats"}) with each (layer, BatchNorm) pair of `pairs` folded, as new dicts.

  The arithmetic runs in float64; each leaf keeps its dtype. The variance
  becomes 1, so BatchNorm divides by sqrt(1 + epsilon): the folded scale is
  multiplied by that to cancel it.
  """
  params = traverse_util.flatten_dict(dict(variables["params"]))
  stats = traverse_util.flatten_dict(dict(variables["batch_stats"]))

  def f64(leaf: Any) -> np.ndarray:
    return np.asarray(leaf, np.float64)

  def like(value: np.ndarray, leaf: Any) -> np.ndarray:
    return value.astype(np.asarray(leaf).dtype)

  for layer, norm in pairs:
    gamma, beta = params[(norm, "scale")], params[(norm, "bias")]
    mean, var, bias = stats[(norm, "mean")], stats[(norm, "var")], params[(layer, "bias")]
    gain = f64(gamma) / np.sqrt(f64(var) + epsilon)
    params[(norm, "scale")] = like(gain * np.sqrt(1.0 + epsilon), gamma)
    params[(norm, "bias")] = like(f64(beta) + (f64(bias) - f64(mean)) * gain, beta)
    params[(layer, "bias")] = like(np.zeros_like(f64(bias)), bias)
    stats[(norm, "mean")] = like(np.zeros_like(f64(mean)), mean)
    stats[(norm, "var")] = like(np.ones_like(f64(var)), var)
  return {**variables, "params": traverse_util.unflatten_dict(params),
          "batch_stats": traverse_util.unflatten_dict(stats)}
