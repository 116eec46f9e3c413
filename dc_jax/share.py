"""Weight sharing (trained quantization, Han et al. 2016 Sec. 3): per-layer k-means, codebooks, centroid fine-tuning.

A shared layer is a `SharedKernel`: a float32 codebook, integer indices into it
and the pruning mask. The codebook is the tensor's own ([k], the paper's), or
one row per group of consecutive output channels ([groups, k], `granularity`
"channel" or "group"), the indices local to their row, or a codebook of
d-vectors ([k, d], `vector_size` d > 1) with one index per d consecutive
weights of an output neuron. Clustering runs once per layer (or group) on the
host (exact 1-D k-means, dc_jax/kmeans.py; masked vector k-means,
dc_jax/vector_kmeans.py); everything that runs per step (the codebook lookup
and its gradient) is jitted JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from dc_jax import kmeans, prune, rules, train, vector_kmeans
from dc_jax.kmeans import INITS
from dc_jax.errors import ConfigError

Params = Any
_log = logging.getLogger(__name__)  # A caller silences it with logging.getLogger("dc_jax.share").setLevel(...).
REDUCTIONS = ("sum", "mean")
GRANULARITIES = ("tensor", "channel", "group")  # One codebook per tensor, per output channel, per group of channels.
MAX_CLUSTERS = 2 ** 16  # Indices are uint8 or uint16.
MAX_VECTOR_SIZE = 16  # Weights per vector at most: a [k, d] codebook of k = 256 is then 16 KiB of float32.
# One cluster count for every selected layer, or (pattern, count) pairs where the first fullmatch wins.
PerLayerCount = int | Sequence[tuple[str, int]]


def channel_groups(channels: int, group_size: int) -> jax.Array:
  """Each output channel's codebook row: channel c (the kernel's last axis, in Flax) uses row c // group_size."""
  return jnp.arange(channels) // group_size


def row_offsets(positions: Any, channels: int, group_size: int, k: int) -> Any:
  """Where the codebook row of each flat (C-order) position starts in the flat [groups * k] codebook.

  The output channel is the last axis, so a position's channel is position % channels; numpy or jax arrays.
  """
  return positions % channels // group_size * k


def segments(indices: jax.Array, k: int, group_size: int = 0) -> jax.Array:
  """Each weight's centroid in the flat codebook: its index, or group * k + index with a codebook per group."""
  if not group_size:
    return indices
  return channel_groups(indices.shape[-1], group_size) * k + indices.astype(jnp.int32)


def vector_grid(shape: tuple[int, ...], vector_size: int) -> tuple[int, int, int]:
  """(neurons, fan_in, vectors per neuron) of a kernel cut into vectors of `vector_size` weights.

  A vector is d consecutive weights of one output neuron in the codec's
  neuron-major order (the output axis first, then C order: for a conv kernel
  [h, w, in, out] the input channels run fastest), so it never spans two
  neurons. When d does not divide the neuron's fan-in, its last vector is
  padded with pruned coordinates. A 1-D kernel is one neuron.
  """
  neurons = shape[-1] if len(shape) > 1 else 1
  fan_in = math.prod(shape) // neurons if neurons else 0
  return neurons, fan_in, -(-fan_in // vector_size)


def vectors(array: np.ndarray, vector_size: int) -> np.ndarray:
  """The kernel (weights or mask) as [neurons, vectors, d], padded with zeros (False) past each neuron's fan-in."""
  neurons, fan_in, count = vector_grid(array.shape, vector_size)
  rows = (np.moveaxis(array, -1, 0) if array.ndim > 1 else array).reshape(neurons, fan_in)
  return np.pad(rows, ((0, 0), (0, count * vector_size - fan_in))).reshape(neurons, count, vector_size)


def vector_slots(indices: jax.Array, shape: tuple[int, ...], vector_size: int) -> jax.Array:
  """Each weight of a kernel of `shape` as its place in the flat [k * d] codebook: index * d + coordinate.

  `indices` is [neurons, vectors] (`vector_grid`); numpy or jax arrays.
  """
  xp = jnp if isinstance(indices, jax.Array) else np
  neurons, fan_in, _ = vector_grid(shape, vector_size)
  slots = indices.astype(xp.int32)[..., None] * vector_size + xp.arange(vector_size, dtype=xp.int32)
  slots = slots.reshape(neurons, -1)[:, :fan_in]
  return xp.moveaxis(slots.reshape(neurons, *shape[:-1]), 0, -1) if len(shape) > 1 else slots.reshape(shape)


def slots(indices: jax.Array, shape: tuple[int, ...], k: int, group_size: int = 0, vector_size: int = 1) -> jax.Array:
  """Each weight's place in the flat codebook, whatever its granularity (what lookup gathers and sums over)."""
  if vector_size > 1:
    return vector_slots(indices, shape, vector_size)
  return segments(indices, k, group_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 5, 6))
def lookup(codebook: jax.Array, indices: jax.Array, mask: jax.Array, reduction: str = "sum",
           kept: KeptWeights | None = None, group_size: int = 0, vector_size: int = 1) -> jax.Array:
  """`codebook[indices]` where `mask`, else 0; a centroid's gradient is its weights' gradients summed (Eq. 3).

  With `group_size` > 0 the codebook is [groups, k] and a weight in output
  channel c reads `codebook[c // group_size, index]`. With `vector_size` d > 1
  the codebook is [k, d], `indices` [neurons, vectors] (`vector_grid`), and
  coordinate j of a vector reads `codebook[index, j]`. The backward pass is an
  explicit `segment_sum` over the flat codebook (`slots`: index, group * k +
  index, or index * d + j: the paper's Eq. 3 per coordinate), or their
  mean with `reduction="mean"`; indices and mask get no gradient. Given
  `kept` (see `kept_weights`), it reads only the kept weights' gradients: a
  pruned layer's backward pass then touches a few percent of the layer
  instead of all of it.
  """
  del kept  # Used by the backward pass only.
  if group_size or vector_size > 1:
    values = codebook.ravel()[slots(indices, mask.shape, codebook.shape[-1], group_size, vector_size)]
  else:
    values = codebook[indices]
  return jnp.where(mask, values, jnp.zeros((), codebook.dtype))


def _lookup_fwd(codebook, indices, mask, reduction, kept, group_size, vector_size):
  return lookup(codebook, indices, mask, reduction, None, group_size, vector_size), (codebook, indices, mask, kept)


def _lookup_bwd(reduction, group_size, vector_size, residuals, weight_grads):
  codebook, indices, mask, kept = residuals
  size = codebook.size
  if kept is None:
    members = jnp.where(mask, weight_grads, 0.0).ravel()
    ids = slots(indices, mask.shape, codebook.shape[-1], group_size, vector_size).ravel()
    weights = mask.ravel()
  else:
    members = weight_grads.ravel()[kept.positions]
    ids = kept.indices
    weights = jnp.ones_like(ids, dtype=bool)
  grads = jax.ops.segment_sum(members, ids, num_segments=size)
  if reduction == "mean":
    counts = jax.ops.segment_sum(weights.astype(grads.dtype), ids, num_segments=size)
    grads = grads / jnp.maximum(counts, 1.0)
  return grads.reshape(codebook.shape).astype(codebook.dtype), None, None, None


lookup.defvjp(_lookup_fwd, _lookup_bwd)


class KeptWeights(NamedTuple):
  """Where a mask keeps weights, and their clusters: fixed while fine-tuning, so computed once."""

  positions: jax.Array  # int32: flat (row-major) positions where the mask is True, ascending.
  indices: jax.Array  # int32: the centroid of each in the flat codebook (`segments`); int32 scatters faster on XLA:CPU.


def kept_weights(indices: jax.Array | np.ndarray, mask: jax.Array | np.ndarray, k: int = 0,
                 group_size: int = 0, vector_size: int = 1) -> KeptWeights:
  """What `lookup`'s fast backward pass reads (gathering the indices there in each step would cost as much again).

  With a codebook per group (`group_size` > 0, rows of `k`) or of vectors, the centroids are counted in the
  flat codebook (`slots`).
  """
  mask = np.asarray(mask)
  positions = np.flatnonzero(mask).astype(np.int32)
  places = slots(np.asarray(indices), mask.shape, k, group_size, vector_size)
  clusters = np.asarray(places).ravel()[positions].astype(np.int32)
  return KeptWeights(jnp.asarray(positions), jnp.asarray(clusters))


@struct.dataclass
class SharedKernel:
  """A weight-shared kernel: `codebook[indices]` where `mask`, exactly 0 elsewhere.

  Indices at pruned positions are 0, so that equal kernels have equal arrays.
  `kept` is derived from `indices` and `mask`, for training only (`split`
  adds it; files do not store it). With `group_size` > 0 the codebook has a
  row per group of that many consecutive output channels (the last group may
  be smaller) and each index points into its channel's row. With
  `vector_size` d > 1 the codebook is [k, d] and there is one index per vector
  of d weights (`vector_grid`), 0 for a vector without kept weights.
  """

  codebook: jax.Array  # [k], or [groups, k] with group_size (each row sorted), or [k, d] with vector_size d > 1.
  indices: jax.Array  # The kernel's shape ([neurons, vectors] with vectors), the narrowest unsigned dtype for k - 1.
  mask: jax.Array  # The kernel's shape, bool; True = kept by pruning.
  kept: KeptWeights | None = None  # Derived from indices and mask, or None; speeds up the backward pass.
  group_size: int = struct.field(pytree_node=False, default=0)  # Output channels per codebook row; 0 = one [k].
  vector_size: int = struct.field(pytree_node=False, default=1)  # Weights per index; 1 = scalar codebooks.

  def materialize(self, reduction: str = "sum") -> jax.Array:
    return lookup(self.codebook, self.indices, self.mask, reduction, self.kept, self.group_size, self.vector_size)


def is_shared(leaf: Any) -> bool:
  return isinstance(leaf, SharedKernel)


def index_dtype(k: int) -> np.dtype:
  """The narrowest unsigned integer dtype that holds indices 0..k-1: uint8, or uint16 up to MAX_CLUSTERS."""
  return np.dtype(np.uint8 if k <= 256 else np.uint16)


def _check_count(k: int, field: str) -> None:
  if not (isinstance(k, numbers.Integral) and 2 <= k <= MAX_CLUSTERS):
    raise ConfigError(f"{field}={k!r} is not a number of clusters; valid: an integer in 2..{MAX_CLUSTERS}")


MAX_BITS = MAX_CLUSTERS.bit_length() - 1


def _bits_to_clusters(bits: Any, field: str) -> int:
  if not (isinstance(bits, numbers.Integral) and not isinstance(bits, bool) and 1 <= bits <= MAX_BITS):
    raise ConfigError(f"{field}={bits!r} is not a number of bits; valid: an integer 1..{MAX_BITS}")
  return 2 ** int(bits)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which layers share weights, into how many clusters, from which initialisation; checked on construction.

  The cluster count takes the config's words too: `bits` (2**bits clusters, for
  every layer; 0 = use `k`) and `layer_bits`, ((regex, bits), ...) tried first.
  After construction `k` holds the counts they give.
  """

  k: PerLayerCount = 13  # Clusters per layer: one count, or (pattern, count) pairs, first fullmatch wins.
  init: str = "linear"  # linear (the paper's best) | density | random | kmeans++.
  max_iterations: int = 1000  # Lloyd iterations at most; cheap in 1-D.
  patterns: Sequence[str] = prune.DEFAULT_PATTERNS  # Regexes (fullmatch) over parameter paths: what is shared.
  seed: int = 0  # For the random and kmeans++ initialisations.
  bits: int = 0  # 2**bits clusters per layer instead of k; 0 = k decides.
  layer_bits: Sequence[tuple[str, int]] = ()  # (regex, bits) pairs, first fullmatch wins, before bits / k.
  granularity: str = "tensor"  # tensor (one codebook, the paper's) | channel | group (of group_size channels).
  layer_granularity: Sequence[tuple[str, str]] = ()  # (regex, granularity) pairs, first fullmatch wins, before it.
  group_size: int = 8  # granularity="group": output channels per codebook; the last group may be smaller.
  vector_size: int = 1  # Weights per index (vector k-means, granularity tensor only); 1 = the paper's scalars.

  def __post_init__(self) -> None:
    if self.bits or self.layer_bits:
      default = _bits_to_clusters(self.bits, "share.bits") if self.bits else self.k
      rules = [(pattern, _bits_to_clusters(bits, f"share.layer_bits[{pattern!r}]"))
               for pattern, bits in self.layer_bits]
      if rules and not isinstance(default, numbers.Integral):
        rules += list(default)
      elif rules:
        rules.append((".*", default))
      object.__setattr__(self, "k", rules or default)
    if self.init not in INITS:
      raise ConfigError(f"share.init={self.init!r} is not an initialisation; valid: {', '.join(INITS)}")
    if isinstance(self.k, numbers.Integral):
      _check_count(self.k, "share.k")
    else:
      for pattern, k in self.k:
        _check_count(k, f"share clusters for {pattern!r}")
    if self.max_iterations < 1:
      raise ConfigError(f"share.max_iterations={self.max_iterations!r}; valid: >= 1")
    if self.granularity not in GRANULARITIES:
      raise ConfigError(f"share.granularity={self.granularity!r}; valid: {', '.join(GRANULARITIES)}")
    for rule in self.layer_granularity:
      if not (isinstance(rule, Sequence) and len(rule) == 2 and isinstance(rule[0], str)
              and rule[1] in GRANULARITIES):
        raise ConfigError(f"share.layer_granularity has {tuple(rule) if isinstance(rule, list) else rule!r}; "
                          f"valid: (regex, granularity) pairs, granularity one of {', '.join(GRANULARITIES)}")
    if not (isinstance(self.group_size, numbers.Integral) and not isinstance(self.group_size, bool)
            and self.group_size >= 1):
      raise ConfigError(f"share.group_size={self.group_size!r}; valid: an integer >= 1")
    if not (isinstance(self.vector_size, numbers.Integral) and not isinstance(self.vector_size, bool)
            and 1 <= self.vector_size <= MAX_VECTOR_SIZE):
      raise ConfigError(f"share.vector_size={self.vector_size!r}; valid: an integer 1..{MAX_VECTOR_SIZE}")
    if self.vector_size > 1 and self.granularity != "tensor":
      raise ConfigError(f"share.vector_size={self.vector_size} clusters a tensor's vectors in one codebook; "
                        f"share.granularity={self.granularity!r}; valid: share.granularity='tensor'")
    if self.vector_size > 1 and any(granularity != "tensor" for _, granularity in self.layer_granularity):
      raise ConfigError(f"share.vector_size={self.vector_size} clusters a tensor's vectors in one codebook; "
                        f"share.layer_granularity={tuple(map(tuple, self.layer_granularity))!r}; "
                        f"valid: share.layer_granularity=() or every granularity 'tensor'")
    if self.vector_size > 1 and self.init not in vector_kmeans.INITS:
      raise ConfigError(f"share.init={self.init!r} is 1-D; valid with share.vector_size={self.vector_size}: "
                        f"{', '.join(vector_kmeans.INITS)}")

  def granularity_of(self, name: str) -> str:
    """The layer at path `name`'s granularity: the first layer_granularity rule that fullmatches, else granularity."""
    return rules.value_for((*self.layer_granularity, (".*", self.granularity)), name, "share.layer_granularity")

  def channels_per_codebook(self, name: str) -> int:
    """The layer's SharedKernel.group_size: 0 = one codebook per tensor, else output channels per codebook row."""
    return {"tensor": 0, "channel": 1, "group": int(self.group_size)}[self.granularity_of(name)]

  def clusters(self, name: str) -> int:
    return int(rules.value_for(self.k, name, "share cluster counts"))


def _cluster(weights: np.ndarray, mask: np.ndarray, k: int, plan: Plan,
             group_size: int) -> tuple[np.ndarray, np.ndarray, dict]:
  """One layer's (codebook, indices, row) in float32, from its kept weights, at its granularity.

  `group_size` is the layer's output channels per codebook (Plan.channels_per_codebook; 0 = one codebook).

  A codebook per group: each group is clustered alone, and rows with fewer
  distinct kept values than the widest row are padded with their last
  centroid (zeros for a group without kept weights), which no index uses.
  """
  if plan.vector_size > 1:
    return _cluster_vectors(weights, mask, k, plan)
  indices = np.zeros(weights.shape, index_dtype(k))
  if not group_size:
    result = kmeans.kmeans_1d(weights[mask], k, plan.init, plan.max_iterations, plan.seed)
    indices[mask] = result.labels
    codebook = result.centroids.astype(np.float32) if result.centroids.size else np.zeros(1, np.float32)
    return codebook, indices, {"inertia": result.inertia, "iterations": result.iterations,
                               "converged": result.converged, "fewest": result.centroids.size}
  starts = range(0, weights.shape[-1], group_size)
  results = [kmeans.kmeans_1d(weights[..., s:s + group_size][mask[..., s:s + group_size]], k, plan.init,
                              plan.max_iterations, plan.seed) for s in starts]
  width = max(1, max(r.centroids.size for r in results))
  codebook = np.zeros((len(results), width), np.float32)
  for row, (start, result) in enumerate(zip(starts, results)):
    view = indices[..., start:start + group_size]  # A view: assigning through it fills `indices`.
    view[mask[..., start:start + group_size]] = result.labels
    if result.centroids.size:
      codebook[row] = np.pad(result.centroids, (0, width - result.centroids.size), mode="edge")
  return codebook, indices, {"inertia": sum(r.inertia for r in results),
                             "iterations": max(r.iterations for r in results),
                             "converged": all(r.converged for r in results),
                             "fewest": min(r.centroids.size for r in results)}


def _cluster_vectors(weights: np.ndarray, mask: np.ndarray, k: int,
                     plan: Plan) -> tuple[np.ndarray, np.ndarray, dict]:
  """(codebook [k, d], indices [neurons, vectors], row) by masked vector k-means over the vectors with kept weights.

  A vector without kept weights takes part in nothing and keeps index 0.
  """
  x, m = vectors(weights, plan.vector_size), vectors(mask, plan.vector_size)
  present = m.any(axis=-1)
  result = vector_kmeans.kmeans(x[present], m[present], k, plan.init, plan.max_iterations, plan.seed)
  indices = np.zeros(present.shape, index_dtype(k))
  indices[present] = result.labels
  codebook = result.centroids if result.centroids.size else np.zeros((1, plan.vector_size), np.float32)
  return codebook, indices, {"inertia": result.inertia, "iterations": result.iterations,
                             "converged": result.converged, "fewest": result.centroids.shape[0],
                             "vector_size": plan.vector_size, "vectors": int(present.sum())}


def quantize(params: Params, masks: prune.Masks, plan: Plan) -> tuple[Params, list[dict[str, Any]]]:
  """The parameter tree with every selected kernel replaced by a SharedKernel of its surviving weights.

  Returns the tree and one row per shared layer (JSON-able): clusters asked
  and used (per codebook), codebooks, surviving weights, inertia, iterations.
  A layer (or group) with fewer distinct surviving values than k gets one
  centroid per value, and says so (a logging warning of "dc_jax.share").
  Clustering runs in float32 (exact for bfloat16 and float16 weights); the
  codebook keeps the kernel's dtype, so `materialize` gives back a tree of
  the dtypes it was given.
  """
  selected = prune.select(params, plan.patterns, "share.patterns")
  rows = []

  def share_leaf(path, weights, mask, chosen):
    if not chosen:
      return weights
    name = rules.path_name(path)
    k = plan.clusters(name)
    dtype = jnp.asarray(weights).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(f"share.patterns selects {name}, of {dtype}; valid: floating weights only")
    weights, mask = np.asarray(weights, np.float32), np.asarray(mask, bool)
    group_size = plan.channels_per_codebook(name)
    codebook, indices, stats = _cluster(weights, mask, k, plan, group_size)
    if dtype != np.float32:  # Rows of vectors are not sorted: their order is their indices'.
      codebook = codebook.astype(dtype) if plan.vector_size > 1 else np.sort(codebook.astype(dtype), axis=-1)
    fewest = stats.pop("fewest")
    vector = plan.vector_size > 1
    rows.append({"layer": name, "k": k, "clusters": int(codebook.shape[0 if vector else -1]),
                 "codebooks": int(codebook.shape[0]) if codebook.ndim == 2 and not vector else 1,
                 "weights": int(weights.size),
                 "kept": int(mask.sum()), **stats})
    if fewest < k:
      _log.warning("share: %s has %d distinct surviving values (in its sparsest codebook), fewer than k=%d: "
                   "one centroid each", name, fewest, k)
    return SharedKernel(codebook=jnp.asarray(codebook), indices=jnp.asarray(indices), mask=jnp.asarray(mask),
                        group_size=group_size, vector_size=plan.vector_size)

  shared = jax.tree_util.tree_map_with_path(share_leaf, params, masks, selected)
  return shared, rows


def materialize(shared: Params, reduction: str = "sum") -> Params:
  """The plain parameter tree a flax module applies: each SharedKernel looked up, other leaves as they are."""
  return jax.tree.map(lambda leaf: leaf.materialize(reduction) if is_shared(leaf) else leaf, shared,
                      is_leaf=is_shared)


def split(shared: Params) -> tuple[Params, Params]:
  """(trainable, frozen): codebooks in place of SharedKernels, and the kernels without their codebooks.

  The frozen kernels carry their kept weights' positions and indices, so that fine-tuning's
  centroid gradients read only the surviving weights' gradients.
  """
  trainable = jax.tree.map(lambda leaf: leaf.codebook if is_shared(leaf) else leaf, shared, is_leaf=is_shared)
  frozen = jax.tree.map(
      lambda leaf: leaf.replace(codebook=None, kept=kept_weights(leaf.indices, leaf.mask, leaf.codebook.shape[-1],
                                                                 leaf.group_size, leaf.vector_size))
      if is_shared(leaf) else None,
      shared, is_leaf=is_shared)
  return trainable, frozen


def _merge_kept(trainable: Params, frozen: Params) -> Params:
  """`split`'s halves joined, the kernels keeping their kept weights (what the fast backward pass reads)."""
  return jax.tree.map(lambda kernel, leaf: leaf if kernel is None else kernel.replace(codebook=leaf),
                      frozen, trainable, is_leaf=lambda x: x is None or is_shared(x))


def merge(trainable: Params, frozen: Params) -> Params:
  """The inverse of `split`: the tree as `quantize` made it (and `codec.read` returns it), codebooks updated."""
  return jax.tree.map(lambda leaf: leaf.replace(kept=None) if is_shared(leaf) else leaf,
                      _merge_kept(trainable, frozen), is_leaf=is_shared)


def materialize_split(trainable: Params, frozen: Params, reduction: str = "sum") -> Params:
  """`materialize(merge(trainable, frozen))`, for a fine-tuning loss: the backward pass reads only kept weights."""
  return materialize(_merge_kept(trainable, frozen), reduction)


class SharedTrainState(train.TrainState):
  """Fine-tuning state: `params` holds codebooks where kernels are shared; their indices and masks are `frozen`.

  Only `params` reaches the optimizer, so indices and masks cannot move and
  pruned weights stay exactly 0. The model sees the materialised kernels.
  `params` also holds the unshared parameters (biases, BatchNorm's scale):
  build `tx` with `finetune_optimizer` to train the codebooks only.
  BatchNorm statistics (`batch_stats`, {} by default) are updated by each
  training step as in any training (`train.train_step` applies the model with
  `mutable=["batch_stats"]`), and stored in the file with the parameters.
  """

  frozen: Any
  reduction: str = struct.field(pytree_node=False, default="sum")

  @classmethod
  def create(cls, *, apply_fn, params, tx, batch_stats: Any = None, **kwargs) -> "SharedTrainState":
    """TrainState.create, with `batch_stats` optional: {} for a model without BatchNorm."""
    return super().create(apply_fn=apply_fn, params=params, tx=tx,
                          batch_stats={} if batch_stats is None else batch_stats, **kwargs)

  def variables(self, params: Params) -> dict[str, Any]:
    return {"params": materialize_split(params, self.frozen, self.reduction), "batch_stats": self.batch_stats}

  def shared_params(self) -> Params:
    """The parameter tree with SharedKernel leaves, as `quantize` made it, with the fine-tuned codebooks."""
    return merge(self.params, self.frozen)


def finetune_optimizer(tx: optax.GradientTransformation, shared: Params,
                       train_unshared: bool = False) -> optax.GradientTransformation:
  """`tx` for the codebooks only (the paper's fine-tuning), or for the unshared parameters too (`train_unshared`).

  `split`'s trainable half holds the codebooks and every unshared parameter
  (biases, BatchNorm's scale and bias); a plain optax optimizer would train
  them all. This one leaves the unshared ones where they are.
  """
  if train_unshared:
    return tx
  labels = jax.tree.map(lambda leaf: "codebook" if is_shared(leaf) else "frozen", shared, is_leaf=is_shared)
  return optax.multi_transform({"codebook": tx, "frozen": optax.set_to_zero()}, labels)
