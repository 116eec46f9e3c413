"""Pruning sensitivity (Han et al. 2015, Fig. 5): prune one layer alone, evaluate without retraining.

The curves say which layers tolerate pruning; `kept_fractions` turns them into
per-layer targets for the pruning stage: the smallest fraction of each layer
whose accuracy, pruned alone, stays within a tolerated drop of the dense one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax

from dc_jax import data, prune, rules, train

DEFAULT_FRACTIONS = (0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01)


def curves(state: train.TrainState, dataset: data.Dataset, patterns: Sequence[str],
           fractions: Sequence[float] = DEFAULT_FRACTIONS, batch_size: int = 1000,
           max_batches: int = -1) -> dict[str, list[list[float]]]:
  """{layer: [[kept fraction, test accuracy], ...]} with that layer alone pruned to each fraction."""
  selected = prune.select(state.params, patterns)
  layers = [rules.path_name(path) for path, chosen in jax.tree_util.tree_flatten_with_path(selected)[0] if chosen]
  result = {}
  for layer in layers:
    points = []
    for fraction in fractions:
      masks = prune.layer_fraction(state.params, fraction, patterns=[re.escape(layer)])
      pruned = state.replace(params=prune.apply_masks(state.params, masks))
      points.append([fraction, train.evaluate(pruned, dataset, batch_size, max_batches)["accuracy"]])
    result[layer] = points
  return result


def kept_fractions(layer_curves: dict[str, list[list[float]]], dense_accuracy: float,
                   tolerated_drop: float) -> dict[str, float]:
  """Per layer, the smallest kept fraction whose accuracy is within `tolerated_drop` of the dense one (else 1)."""
  result = {}
  for layer, points in layer_curves.items():
    good = [fraction for fraction, accuracy in points if accuracy >= dense_accuracy - tolerated_drop]
    result[layer] = min(good, default=1.0)
  return result
