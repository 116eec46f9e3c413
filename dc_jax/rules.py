"""Per-layer settings and the parameter paths they match: one mechanism for pruning, sharing and coding.

A setting is one value for every layer, or (regex, value) pairs tried in order
over a parameter's path ("conv1/kernel"), the first fullmatch winning, as
big_vision's `tree_map_with_regex` does. prune's kept fractions and
qualities, share's cluster counts and codec's index widths all read their
per-layer value here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax

from dc_jax.errors import ConfigError

PerLayer = Any  # One value, or a sequence of (regex, value) pairs.


def is_rule_list(setting: Any) -> bool:
  """Whether `setting` is (regex, value) pairs rather than one value for every layer."""
  return isinstance(setting, Sequence) and not isinstance(setting, str)


def value_for(setting: PerLayer, name: str, field: str) -> Any:
  """The value `setting` gives the layer at path `name`: the one value, or the first pair whose regex fullmatches."""
  if not is_rule_list(setting):
    return setting
  for pattern, value in setting:
    if re.fullmatch(pattern, name):
      return value
  raise ConfigError(f"{field} has no pattern matching {name!r}; add one, e.g. ('.*', value) last")


def values(setting: PerLayer) -> list[Any]:
  """Every value `setting` can give, for checking them all up front."""
  return [value for _, value in setting] if is_rule_list(setting) else [setting]


def path_name(path: jax.tree_util.KeyPath) -> str:
  """A parameter's path as the patterns see it: its keys joined by "/" ("layers/0/kernel").

  The `.value` attribute that a box adds (an nnx.Variable in an nnx.State, a
  linen LogicallyPartitioned) is left out, so that "conv/kernel" names the
  same weights in every kind of Flax tree.
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def by_path(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> dict[str, Any]:
  """{path name: leaf}, e.g. {"ip1/kernel": ...}, in the tree's order."""
  return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]}
