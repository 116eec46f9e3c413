"""Flax's other tree shapes as the plain dicts of arrays the stages take, and back: flax.nnx modules, boxed parameters.

prune and share work on any tree whose paths name the weights; the codec
stores plain dicts. An nnx module's parameters are `params(module)` (a pure
dict whose layers kept in a list have integer keys), its forward pass over
such a dict is `apply_fn(module)`, and `load` puts a dict back into the module.
Linen's boxed leaves (`nn.with_logical_partitioning` makes LogicallyPartitioned
ones) are `unbox`ed for the file and `rebox`ed from a template after reading,
so the partitioning metadata comes back where the user needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import meta

from dc_jax import share

Tree = Any


def _is_box(leaf: Any) -> bool:
  return isinstance(leaf, meta.AxisMetadata)


def pure(tree: Tree) -> Tree:
  """An nnx.State as its pure dict (Variables replaced by their values); any other tree as it is."""
  return tree.to_pure_dict() if isinstance(tree, nnx.State) else tree


def unbox(tree: Tree) -> Tree:
  """`tree` with each boxed leaf (LogicallyPartitioned, Partitioned) replaced by its value: what the file stores.

  Only the value is taken: no sharding constraint is applied, so this works
  outside a mesh too. Dicts keep their key order (jax.tree.map would sort
  them), so the file's records keep the tree's order.
  """
  if isinstance(tree, Mapping):
    return {key: unbox(value) for key, value in tree.items()}
  return tree.value if _is_box(tree) else tree


def rebox(template: Tree, tree: Tree) -> Tree:
  """`tree` (plain, e.g. from `codec.read`) with the boxes of `template` (e.g. `model.init`'s) put back around its leaves.

  A box may hold a SharedKernel: linen's apply unboxes it before the kernel is
  used, so `share.materialize(rebox(...))` applies as the original did.
  """
  return jax.tree.map(lambda box, leaf: box.replace_boxed(leaf) if _is_box(box) else leaf, template, tree,
                      is_leaf=lambda x: _is_box(x) or share.is_shared(x))


def params(module: nnx.Module, kind: Any = nnx.Param) -> dict[Any, Any]:
  """The module's variables of `kind` (default its parameters) as a pure dict: what prune, share and codec take."""
  return nnx.state(module, kind).to_pure_dict()


def load(module: nnx.Module, tree: Tree, kind: Any = nnx.Param) -> nnx.Module:
  """Puts `tree` (pure dict, SharedKernels materialised here) into `module`'s variables of `kind`, in place.

  The inverse of `params`; `tree` may come from `codec.read`, whose integer
  keys match the module's lists. Returns the module.
  """
  state = nnx.state(module, kind)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, share.materialize(tree)))
  nnx.update(module, state)
  return module


def apply_fn(module: nnx.Module, kind: Any = nnx.Param) -> Callable[..., Any]:
  """`apply(params, *args, **kwargs)`: the module called with `params` in place of its own, a pure function.

  nnx's counterpart of linen's `model.apply({"params": params}, x)`, for a
  loss to differentiate in a plain optax loop or to jit. SharedKernels are
  materialised. The module's other state (BatchNorm statistics, dropout
  keys) is that of `module` when `apply_fn` was called, and what the call
  changes in it is not kept: call `module.eval()` first, or fine-tune with
  statistics frozen (the usual choice for codebook fine-tuning).
  """
  graphdef, own, rest = nnx.split(module, kind, ...)

  def apply(tree: Tree, *args, **kwargs) -> Any:
    state = jax.tree.map(lambda x: x, own)  # A fresh State: replace_by_pure_dict writes in place.
    nnx.replace_by_pure_dict(state, share.materialize(tree))
    return nnx.merge(graphdef, state, rest)(*args, **kwargs)

  return apply
