"""Magnitude pruning (Han et al. 2015): which weights to drop, and the optax transform that keeps them dropped.

Everything works on any Flax parameter tree: linen's dicts (boxed or not), an
nnx.State, or its pure dict. A mask is a tree of bool
arrays shaped like the parameters, True where a weight is kept. Parameters are
chosen by regular expressions over their paths ("ip1/kernel", "conv1_1/bias"),
matched with `re.fullmatch`. Masks only ever shrink: every criterion ANDs its
choice with the mask it is given, so a pruned weight never comes back.

Three structures: unstructured (any weight), n:m (n kept of every m
consecutive weights along a kernel's input axis, as sparse tensor cores take
them) and block (whole blocks over the kernel's (in, out) axes, scored by their
mean |w| or L2 norm). All are plain masks, enforced by the same `masked`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dc_jax import rules
from dc_jax.errors import ConfigError

Params = Any  # A nested dict of arrays, as flax.linen makes them.
Masks = Any  # Params' structure with bool arrays of the same shapes; True = kept.
# One value for every selected layer, or (pattern, value) pairs where the first fullmatch wins.
PerLayer = float | Sequence[tuple[str, float]]

# Every conv and dense kernel and every embedding table (nn.Embed); never biases, nor BatchNorm's scale and bias.
DEFAULT_PATTERNS = (r".*(kernel|embedding)",)
CRITERIA = ("threshold", "layer", "global")
SCHEDULES = ("geometric", "polynomial", "han")
STRUCTURES = ("unstructured", "n:m", "block")
BLOCK_SCORES = ("mean_abs", "l2")


def select(params: Params, patterns: Sequence[str] = DEFAULT_PATTERNS, field: str = "prune.patterns") -> Any:
  """A tree of Python bools, True for the leaves whose path fullmatches one of `patterns`.

  A pattern that matches nothing is an error: a typo would silently leave a layer dense.
  """
  names = [rules.path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for pattern in patterns:
    if not any(re.fullmatch(pattern, name) for name in names):
      raise ConfigError(f"{field}: pattern {pattern!r} matches no parameter; paths are: {', '.join(names)}")
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(re.fullmatch(pattern, rules.path_name(path)) for pattern in patterns), params)


def all_kept(params: Params) -> Masks:
  """The masks before any pruning."""
  return jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)


def apply_masks(params: Params, masks: Masks) -> Params:
  """Pruned weights set to exactly 0; `where`, not a product, so that no NaN or Inf survives."""
  return jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros_like(w)), params, masks)


def _check_fractions(rule: PerLayer, field: str) -> None:
  for value in map(float, rules.values(rule)):
    if not 0.0 < value <= 1.0:
      raise ConfigError(f"{field}={value!r} is not a kept fraction; valid: 0 < {field} <= 1")


def _check_qualities(rule: PerLayer, field: str) -> None:
  for value in map(float, rules.values(rule)):
    if not value > 0.0:
      raise ConfigError(f"{field}={value!r} is not a quality parameter; valid: {field} > 0")


def _check_rounds(rounds: int) -> None:
  if not isinstance(rounds, numbers.Integral) or rounds < 1:
    raise ConfigError(f"prune.rounds={rounds!r} is not a number of rounds; valid: an integer >= 1")


def _prune_selected(criterion: Callable[[str, jnp.ndarray, jnp.ndarray], jnp.ndarray], params: Params,
                    masks: Masks | None, patterns: Sequence[str]) -> Masks:
  """Masks with `criterion(name, w, mask)` ANDed into each selected leaf; other leaves unchanged."""
  masks = all_kept(params) if masks is None else masks
  return jax.tree_util.tree_map_with_path(
      lambda path, w, m, chosen: m & criterion(rules.path_name(path), w, m) if chosen else m,
      params, masks, select(params, patterns))


@jax.jit
def _above_std(w: jnp.ndarray, m: jnp.ndarray, quality: float) -> jnp.ndarray:
  return jnp.abs(w) >= quality * jnp.std(w, where=m)


def han_threshold(params: Params, quality: PerLayer, masks: Masks | None = None,
                  patterns: Sequence[str] = DEFAULT_PATTERNS) -> Masks:
  """Han's rule: keep |w| >= q * std(w), per layer.

  The std is over the layer's surviving weights (np.std, ddof=0). Before any
  pruning that is the whole tensor, as in the PyTorch original; afterwards the
  zeros of pruned weights do not shrink it, so repeating the same q prunes more
  each round (the "han" schedule) instead of doing nothing.
  """
  _check_qualities(quality, "quality")

  def criterion(name, w, m):
    return _above_std(w, m, float(rules.value_for(quality, name, "quality")))

  return _prune_selected(criterion, params, masks, patterns)


@functools.partial(jax.jit, static_argnums=2)
def _top_k(w: jnp.ndarray, m: jnp.ndarray, k: int) -> jnp.ndarray:
  """The k largest |w| among the kept ones, as a flat mask.

  A stable sort breaks ties by position (earlier wins), so exactly k are kept
  whenever k weights survive; pruned weights rank last and stay pruned.
  """
  scores = jnp.where(m, jnp.abs(w), -jnp.inf).ravel()
  order = jnp.argsort(-scores, stable=True)
  return jnp.zeros(scores.shape, bool).at[order[:k]].set(True) & m.ravel()


def kept_count(fraction: float, size: int) -> int:
  """round(fraction * size), but at least 1: a layer pruned to nothing would be an accident of rounding.

  (At fraction 1e-4 a 288-weight conv rounds to 0 weights, and a one-element
  parameter at 0.5 rounds half to even, to 0.) A fraction is > 0, so keeping
  one weight is always what the caller asked for, rounded up.
  """
  return max(1, round(fraction * size)) if size else 0


def layer_fraction(params: Params, fraction: PerLayer, masks: Masks | None = None,
                   patterns: Sequence[str] = DEFAULT_PATTERNS) -> Masks:
  """Keep the round(fraction * size) largest-magnitude weights of each layer, at least 1 (fewer only if fewer survive)."""
  _check_fractions(fraction, "fraction")

  def criterion(name, w, m):
    k = kept_count(float(rules.value_for(fraction, name, "fraction")), w.size)
    return _top_k(w, m, k).reshape(w.shape)

  return _prune_selected(criterion, params, masks, patterns)


def global_fraction(params: Params, fraction: float, masks: Masks | None = None,
                    patterns: Sequence[str] = DEFAULT_PATTERNS) -> Masks:
  """Keep the round(fraction * total) largest-magnitude weights (at least 1) over all selected layers, one threshold.

  Ties are broken by leaf order (sorted paths), then position in the leaf.
  """
  _check_fractions(fraction, "fraction")
  masks = all_kept(params) if masks is None else masks
  weights, treedef = jax.tree.flatten(params)
  new_masks = treedef.flatten_up_to(masks)
  chosen = [i for i, s in enumerate(treedef.flatten_up_to(select(params, patterns))) if s]
  flat_w = jnp.concatenate([weights[i].ravel() for i in chosen])
  flat_m = jnp.concatenate([new_masks[i].ravel() for i in chosen])
  keep = _top_k(flat_w, flat_m, kept_count(fraction, flat_w.size))
  splits = np.cumsum([weights[i].size for i in chosen])[:-1]
  for i, part in zip(chosen, jnp.split(keep, splits)):
    new_masks[i] = part.reshape(weights[i].shape)
  return treedef.unflatten(new_masks)


# Structures. A kernel's input axis is its second-to-last ((in, out) dense, (h, w, in, out) conv), its output
# axis the last; a 1-D leaf is taken as one input axis. Where an axis is not a multiple of the group or block
# length, it is taken as zero-padded to one (as sparse kernels pad it), the padding counting as pruned.


def _as_in_out(w: jnp.ndarray) -> jnp.ndarray:
  """`w` as (..., in, out): a 1-D leaf becomes (n, 1)."""
  return w[:, None] if w.ndim == 1 else w


def _pad_axes(x: jnp.ndarray, lengths: dict[int, int], value: Any) -> jnp.ndarray:
  """`x` padded at the end of each axis in `lengths` to a multiple of its length, with `value`."""
  widths = [(0, -x.shape[axis] % lengths[axis] if axis in lengths else 0) for axis in range(x.ndim)]
  return jnp.pad(x, widths, constant_values=value)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _n_of_m(w: jnp.ndarray, m: jnp.ndarray, n: int, group: int) -> jnp.ndarray:
  """The n largest |w| of each `group` consecutive kept weights along the input axis, as a mask of w's shape.

  A stable sort breaks ties by position, as `_top_k` does; pruned weights and
  the padding rank last and stay pruned.
  """
  w2, m2 = _as_in_out(w), _as_in_out(m)
  rows = jnp.moveaxis(jnp.where(m2, jnp.abs(w2), -jnp.inf), -2, -1)  # (..., out, in): one row per output neuron.
  rows = _pad_axes(rows, {rows.ndim - 1: group}, -jnp.inf)
  groups = rows.reshape(*rows.shape[:-1], -1, group)
  rank = jnp.argsort(jnp.argsort(-groups, axis=-1, stable=True), axis=-1)
  keep = (rank < n).reshape(rows.shape)[..., :w2.shape[-2]]
  return jnp.moveaxis(keep, -1, -2).reshape(w.shape) & m


def n_of_m(params: Params, n: int, m: int, masks: Masks | None = None,
           patterns: Sequence[str] = DEFAULT_PATTERNS) -> Masks:
  """N:M sparsity: of every m consecutive weights along each selected kernel's input axis, keep the n largest |w|.

  Groups run along `in` of a dense (in, out) or conv (h, w, in, out) kernel,
  one output neuron and one (h, w) position at a time: the 2:4 layout sparse
  tensor cores multiply. Where `in` is not a multiple of m (LeNet-5's conv1
  has in = 1), the last group of a row is shorter and keeps min(n, its
  length), as if zero-padded to m; such a layer keeps more than n/m.
  """
  _check_n_of_m(n, m)
  return _prune_selected(lambda name, w, mask: _n_of_m(w, mask, n, m), params, masks, patterns)


def _to_blocks(x: jnp.ndarray, shape: tuple[int, int], value: Any) -> jnp.ndarray:
  """(..., in, out) padded with `value` and split into (..., in/bi, bi, out/bo, bo) blocks."""
  x = _as_in_out(x)
  x = _pad_axes(x, {x.ndim - 2: shape[0], x.ndim - 1: shape[1]}, value)
  *lead, rows, cols = x.shape
  return x.reshape(*lead, rows // shape[0], shape[0], cols // shape[1], shape[1])


@functools.partial(jax.jit, static_argnums=(2, 3))
def _block_scores(w: jnp.ndarray, m: jnp.ndarray, shape: tuple[int, int],
                  score: str) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Each block's score over its kept weights (mean |w| or L2 norm), and whether any of its weights is kept."""
  w, m = _to_blocks(w, shape, 0.0), _to_blocks(m, shape, False)
  kept = jnp.sum(m, axis=(-3, -1))
  if score == "l2":
    scores = jnp.sqrt(jnp.sum(jnp.where(m, w * w, 0.0), axis=(-3, -1)))
  else:
    scores = jnp.sum(jnp.where(m, jnp.abs(w), 0.0), axis=(-3, -1)) / jnp.maximum(kept, 1)
  return scores, kept > 0


def _from_blocks(keep: jnp.ndarray, shape: tuple[int, int], like: jnp.ndarray) -> jnp.ndarray:
  """A mask of blocks back to a mask shaped like the kernel `like`, padding cut off."""
  full = jnp.repeat(jnp.repeat(keep, shape[0], axis=-2), shape[1], axis=-1)
  rows, cols = _as_in_out(like).shape[-2:]
  return full[..., :rows, :cols].reshape(like.shape)


def block_fraction(params: Params, fraction: PerLayer, shape: tuple[int, int], score: str = "mean_abs",
                   masks: Masks | None = None, patterns: Sequence[str] = DEFAULT_PATTERNS,
                   across_layers: bool = False) -> Masks:
  """Block sparsity: keep the top `fraction` of each selected kernel's blocks of `shape` over its (in, out) axes.

  A block scores the mean |w| (or the L2 norm) of its kept weights; a conv's
  blocks are per (h, w) position. The top fraction is per layer as
  `layer_fraction` keeps weights, or with `across_layers` over all selected
  layers at one threshold as `global_fraction` does; `fraction` counts blocks
  (edge blocks of a kernel whose axes are not multiples of `shape` are smaller).
  Mean |w| is the default because it does not penalise those smaller blocks.
  """
  _check_block(shape, score)
  masks = all_kept(params) if masks is None else masks
  chosen = select(params, patterns)
  scored = jax.tree.map(lambda w, m, c: _block_scores(w, m, shape, score) if c else (w, m), params, masks, chosen)
  is_pair = lambda x: isinstance(x, tuple)
  scores = jax.tree.map(lambda pair: pair[0], scored, is_leaf=is_pair)
  alive = jax.tree.map(lambda pair: pair[1], scored, is_leaf=is_pair)
  if across_layers:
    kept = global_fraction(scores, fraction, alive, patterns)
  else:
    kept = layer_fraction(scores, fraction, alive, patterns)
  return jax.tree.map(lambda w, m, k, c: m & _from_blocks(k, shape, w) if c else m, params, masks, kept, chosen)


def _check_n_of_m(n: int, m: int) -> None:
  if not (isinstance(n, numbers.Integral) and isinstance(m, numbers.Integral) and 1 <= n < m):
    raise ConfigError(f"prune.n={n!r}, prune.m={m!r} is not an n:m structure; valid: integers 1 <= n < m")


def _check_block(shape: Sequence[int], score: str) -> None:
  if not (len(shape) == 2 and all(isinstance(d, numbers.Integral) and d >= 1 for d in shape)):
    raise ConfigError(f"prune.block_shape={tuple(shape)!r} is not a block; valid: (rows, columns), integers >= 1")
  if score not in BLOCK_SCORES:
    raise ConfigError(f"prune.block_score={score!r} is not a score; valid: {', '.join(BLOCK_SCORES)}")


def scheduled_fraction(schedule: str, kept_fraction: float, rounds: int, round_index: int) -> float:
  """The kept fraction after round `round_index` (0-based) of `rounds`; the last round gives `kept_fraction`.

  "geometric" keeps the same share of the survivors each round:
  final ** (t / N). "polynomial" is Zhu & Gupta's cubic, which prunes fast
  while the net is redundant and slowly near the end:
  final + (1 - final) * (1 - t / N) ** 3.
  """
  _check_fractions(kept_fraction, "prune.kept_fraction")
  _check_rounds(rounds)
  t = (round_index + 1) / rounds
  if schedule == "geometric":
    return kept_fraction ** t
  if schedule == "polynomial":
    return kept_fraction + (1.0 - kept_fraction) * (1.0 - t) ** 3
  raise ConfigError(f"prune.schedule={schedule!r} has no kept fractions; valid: geometric, polynomial")


@dataclasses.dataclass(frozen=True)
class Plan:
  """Iterative pruning: `rounds` rounds of `criterion`, each asking for what `schedule` gives that round.

  The fields mirror a `prune` config section and are checked on construction,
  so that a bad config fails before any training.
  """

  criterion: str = "layer"  # threshold (Han's q * std), layer (top fraction per layer) or global.
  schedule: str = "polynomial"  # geometric or polynomial for layer/global; han (same q each round) for threshold.
  rounds: int = 1  # Pruning rounds, each followed by retraining.
  kept_fraction: PerLayer = 0.1  # Kept fraction after the last round; per layer only for criterion layer.
  quality: PerLayer = 1.0  # Han's q, for criterion threshold.
  patterns: Sequence[str] = DEFAULT_PATTERNS  # Regexes (fullmatch) over parameter paths: what is pruned.
  structure: str = "unstructured"  # unstructured | n:m (n of every m along the input axis) | block.
  n: int = 2  # n:m only: weights kept...
  m: int = 4  # ...of every m consecutive ones.
  block_shape: tuple[int, int] = (4, 4)  # block only: (in, out) extent of a block.
  block_score: str = "mean_abs"  # block only: mean_abs | l2, over a block's kept weights.

  def __post_init__(self) -> None:
    if self.criterion not in CRITERIA:
      raise ConfigError(f"prune.criterion={self.criterion!r} is not a criterion; valid: {', '.join(CRITERIA)}")
    if self.schedule not in SCHEDULES:
      raise ConfigError(f"prune.schedule={self.schedule!r} is not a schedule; valid: {', '.join(SCHEDULES)}")
    if (self.schedule == "han") != (self.criterion == "threshold"):
      valid = "han" if self.criterion == "threshold" else "geometric, polynomial"
      raise ConfigError(f"prune.schedule={self.schedule!r} does not fit prune.criterion={self.criterion!r}; "
                        f"valid: {valid}")
    _check_rounds(self.rounds)
    self._check_structure()
    if self.criterion == "threshold":
      _check_qualities(self.quality, "prune.quality")
    elif self.criterion == "global" and not isinstance(self.kept_fraction, numbers.Real):
      raise ConfigError(f"prune.kept_fraction={self.kept_fraction!r} must be one number for criterion global")
    else:
      _check_fractions(self.kept_fraction, "prune.kept_fraction")

  def _check_structure(self) -> None:
    if self.structure not in STRUCTURES:
      raise ConfigError(f"prune.structure={self.structure!r} is not a structure; valid: {', '.join(STRUCTURES)}")
    fitting = {"unstructured": CRITERIA, "n:m": ("layer",), "block": ("layer", "global")}[self.structure]
    if self.criterion not in fitting:
      raise ConfigError(f"prune.criterion={self.criterion!r} does not fit prune.structure={self.structure!r}; "
                        f"valid: {', '.join(fitting)}")
    if self.structure == "n:m":
      _check_n_of_m(self.n, self.m)
    if self.structure == "block":
      _check_block(self.block_shape, self.block_score)

  def fraction(self, round_index: int) -> PerLayer:
    """The kept fraction (or per-layer rule) the schedule sets for round `round_index`."""
    def at(final):
      return scheduled_fraction(self.schedule, float(final), self.rounds, round_index)

    if isinstance(self.kept_fraction, numbers.Real):
      return at(self.kept_fraction)
    return [(pattern, at(final)) for pattern, final in self.kept_fraction]

  def prune(self, params: Params, masks: Masks | None, round_index: int) -> Masks:
    """The masks after round `round_index` (0-based), never keeping a weight that `masks` dropped.

    N:M has one kept fraction, n/m: every round asks for it, and after the
    first keeps the same weights (a round of retraining more).
    """
    if self.structure == "n:m":
      return n_of_m(params, self.n, self.m, masks, self.patterns)
    if self.structure == "block":
      return block_fraction(params, self.fraction(round_index), tuple(self.block_shape), self.block_score, masks,
                            self.patterns, across_layers=self.criterion == "global")
    if self.criterion == "threshold":
      return han_threshold(params, self.quality, masks, self.patterns)
    prune_fn = layer_fraction if self.criterion == "layer" else global_fraction
    return prune_fn(params, self.fraction(round_index), masks, self.patterns)


class MaskedState(NamedTuple):
  """The masks live in the optimizer state, so they are checkpointed (and sharded) with it."""

  masks: Masks
  inner_state: optax.OptState


def masked(inner: optax.GradientTransformation, masks: Masks) -> optax.GradientTransformation:
  """`inner` with pruned weights frozen at their current value (0, after `apply_masks`).

  Gradients of pruned weights are zeroed before `inner`, so they never enter
  its moments; its updates are zeroed after, so that nothing inside it (a
  momentum trace from before pruning, weight decay, noise) moves them either.
  Unlike `optax.masked`, which passes masked-out leaves through untouched.
  """

  def init_fn(params: Params) -> MaskedState:
    return MaskedState(masks=masks, inner_state=inner.init(params))

  def update_fn(updates: optax.Updates, state: MaskedState,
                params: Params | None = None) -> tuple[optax.Updates, MaskedState]:
    updates = apply_masks(updates, state.masks)
    updates, inner_state = inner.update(updates, state.inner_state, params)
    return apply_masks(updates, state.masks), MaskedState(state.masks, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def masks_of(opt_state: optax.OptState) -> Masks:
  """The masks held by the one `masked` transform in an optimizer state (possibly inside a chain)."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, MaskedState))
           if isinstance(s, MaskedState)]
  if len(found) != 1:
    raise ValueError(f"the optimizer state holds {len(found)} MaskedState; expected exactly one")
  return found[0].masks


def report(masks: Masks,
           patterns: Sequence[str] = DEFAULT_PATTERNS) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Per-layer and total kept weights of the selected leaves, as plain Python for JSON.

  `compression` is total / kept, the paper's "12x"; pass patterns=(".*",) to
  count biases too.
  """
  selected = jax.tree.leaves(select(masks, patterns))
  layers = []
  for (path, m), chosen in zip(jax.tree_util.tree_flatten_with_path(masks)[0], selected):
    if chosen:
      total, kept = int(np.size(m)), int(np.sum(m))
      layers.append({"layer": rules.path_name(path), "weights": total, "kept": kept, "kept_fraction": kept / total})
  total, kept = sum(r["weights"] for r in layers), sum(r["kept"] for r in layers)
  totals = {"weights": total, "kept": kept, "kept_fraction": kept / total,
            "compression_ratio": total / kept if kept else math.inf}
  return layers, totals
