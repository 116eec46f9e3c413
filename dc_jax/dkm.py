"""Differentiable k-means (DKM, Cho et al. 2021, arXiv 2108.12659): fine-tuning weights through a soft clustering.

The paper's fine-tuning (share.py) fixes each weight's cluster and trains the
codebooks. DKM trains the (pruned) float weights instead, through a soft
clustering layer: per shared kernel, with kept weights w and centroids c,
attention a_ij = softmax_j(-(w_i - c_j)^2 / (tau s)), centroids re-estimated as
c_j = sum_i a_ij w_i / sum_i a_ij for a few iterations, and the forward pass
uses w~_i = sum_j a_ij c_j; gradients reach w through both the attention and
the centroids. At the end, `snap` gives each weight its nearest centroid: the
same SharedKernel tree as k-means, so files and evaluation are unchanged.

The temperature is scale-free: s is the layer's k-means mean squared error
when the stage starts, so tau = 1 is about as soft for 4 clusters as for 256
and for any weight scale (a weight halfway between two centroids gets half of
each; one on a centroid, exp(-12) of its neighbours' at uniform spacing).
Each step starts its iterations from the centroids the step before ended with
(as DKM does), carried in the train state without gradient. Only kept weights
are clustered: the attention is (kept weights x k) per layer.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from dc_jax import prune, share, train
from dc_jax.errors import ConfigError

Params = Any
METHODS = ("paper", "dkm")  # share.method: the paper's codebook fine-tuning, or DKM's.
# A centroid whose attention mass falls below this (no weight near it) keeps its place rather than divide by ~0.
MIN_MASS = 1e-12


@dataclasses.dataclass(frozen=True)
class Plan:
  """DKM's settings, checked on construction."""

  iterations: int = 5  # Attention-then-centroid updates per step, differentiated through.
  temperature: float = 1.0  # In units of the layer's k-means mean squared error: lower = harder.

  def __post_init__(self) -> None:
    if not (isinstance(self.iterations, numbers.Integral) and not isinstance(self.iterations, bool)
            and self.iterations >= 1):
      raise ConfigError(f"share.dkm_iterations={self.iterations!r}; valid: an integer >= 1")
    if not (isinstance(self.temperature, numbers.Real) and not isinstance(self.temperature, bool)
            and self.temperature > 0):
      raise ConfigError(f"share.dkm_temperature={self.temperature!r}; valid: a number > 0")


def attention(weights: jax.Array, centroids: jax.Array, scale: jax.Array) -> jax.Array:
  """a_ij = softmax_j(-(w_i - c_j)^2 / scale): [n, k], each row sums to 1."""
  return jax.nn.softmax(-jnp.square(weights[:, None] - centroids[None, :]) / scale, axis=1)


def soft_cluster(weights: jax.Array, centroids: jax.Array, scale: jax.Array,
                 iterations: int) -> tuple[jax.Array, jax.Array]:
  """(soft weights [n], centroids [k]) after `iterations` DKM updates from `centroids`; `scale` = tau x s.

  Differentiable in `weights` through every iteration (plain autodiff: the
  attention of each is kept for the backward pass, see bench/dkm.py).
  """
  for _ in range(iterations):
    a = attention(weights, centroids, scale)
    mass = a.sum(axis=0)
    present = mass > MIN_MASS
    centroids = jnp.where(present, (a * weights[:, None]).sum(axis=0) / jnp.where(present, mass, 1.0), centroids)
  return attention(weights, centroids, scale) @ centroids, centroids


@struct.dataclass
class SoftKernel:
  """What DKM keeps of a shared kernel besides its weights: where they survive, the temperature's unit, centroids."""

  positions: jax.Array  # int32: flat (row-major) positions of the kept weights, ascending.
  scale: jax.Array  # float32 scalar: the layer's k-means mean squared error at the start (s); at least MIN_MASS.
  centroids: jax.Array  # float32 [k]: where the last step's iterations ended; the next step starts from them.


def is_soft(leaf: Any) -> bool:
  return isinstance(leaf, SoftKernel)


def start(shared: Params, params: Params) -> Params:
  """A SoftKernel for each SharedKernel of `share.quantize`'s tree (from `params`, its input), None elsewhere."""
  def soft(kernel, weights):
    if not share.is_shared(kernel):
      return None
    positions = np.flatnonzero(np.asarray(kernel.mask)).astype(np.int32)
    kept = np.asarray(weights, np.float32).ravel()[positions]
    codebook = np.asarray(kernel.codebook, np.float32)
    clustered = codebook[np.asarray(kernel.indices).ravel()[positions]]
    mse = float(np.mean(np.square(kept - clustered))) if kept.size else 0.0
    return SoftKernel(positions=jnp.asarray(positions), scale=jnp.float32(max(mse, MIN_MASS)),
                      centroids=jnp.asarray(codebook))

  return jax.tree.map(soft, shared, params, is_leaf=share.is_shared)


def _kept(weights: jax.Array, kernel: SoftKernel) -> jax.Array:
  return weights.ravel()[kernel.positions].astype(jnp.float32)


def soft_params(params: Params, soft: Params, plan: Plan) -> Params:
  """The tree a flax module applies: each shared kernel's kept weights replaced by their soft weights, others 0."""
  def apply(kernel, weights):
    if kernel is None:
      return weights
    clustered, _ = soft_cluster(_kept(weights, kernel), jax.lax.stop_gradient(kernel.centroids),
                                plan.temperature * kernel.scale, plan.iterations)
    flat = jnp.zeros(weights.size, weights.dtype).at[kernel.positions].set(clustered.astype(weights.dtype))
    return flat.reshape(weights.shape)

  return jax.tree.map(apply, soft, params, is_leaf=lambda x: x is None or is_soft(x))


def advance(params: Params, soft: Params, plan: Plan) -> Params:
  """`soft` with each kernel's centroids where this step's iterations on `params` end (no gradient)."""
  def update(kernel, weights):
    if kernel is None:
      return None
    _, centroids = soft_cluster(_kept(weights, kernel), kernel.centroids, plan.temperature * kernel.scale,
                                plan.iterations)
    return kernel.replace(centroids=jax.lax.stop_gradient(centroids))

  return jax.tree.map(update, soft, params, is_leaf=lambda x: x is None or is_soft(x))


class DKMTrainState(train.TrainState):
  """Fine-tuning through DKM: `params` holds the float weights (pruned ones at 0), the model sees their soft weights.

  `apply_gradients` also carries the centroids forward: the step's own
  iterations, recomputed on the weights it started from, which XLA merges
  with the forward pass's in the jitted step.
  """

  soft: Any  # SoftKernel per shared kernel, None elsewhere.
  plan: Plan = struct.field(pytree_node=False, default=Plan())

  @classmethod
  def create(cls, *, apply_fn, params, tx, batch_stats: Any = None, **kwargs) -> "DKMTrainState":
    return super().create(apply_fn=apply_fn, params=params, tx=tx,
                          batch_stats={} if batch_stats is None else batch_stats, **kwargs)

  def variables(self, params: Params) -> dict[str, Any]:
    return {"params": soft_params(params, self.soft, self.plan), "batch_stats": self.batch_stats}

  def apply_gradients(self, *, grads, **kwargs) -> "DKMTrainState":
    return super().apply_gradients(grads=grads, soft=advance(self.params, self.soft, self.plan), **kwargs)


def optimizer(tx: optax.GradientTransformation, shared: Params, masks: prune.Masks,
              train_unshared: bool = False) -> optax.GradientTransformation:
  """`tx` for the shared kernels' weights (and the unshared parameters with `train_unshared`), masks enforced.

  As in retraining (prune.masked), pruned weights get no update at all, so
  they stay exactly 0 whatever `tx` does.
  """
  if not train_unshared:
    labels = jax.tree.map(lambda leaf: "shared" if share.is_shared(leaf) else "frozen", shared, is_leaf=share.is_shared)
    tx = optax.multi_transform({"shared": tx, "frozen": optax.set_to_zero()}, labels)
  return prune.masked(tx, masks)


def snap(state: DKMTrainState) -> Params:
  """The fine-tuned tree with SharedKernel leaves: each kept weight's nearest final centroid, as k-means gives them.

  The final centroids are those of the last iterations on the final weights;
  the codebook holds them sorted, in the kernel's dtype.
  """
  soft = advance(state.params, state.soft, state.plan)

  def snap_leaf(kernel, weights):
    if kernel is None:
      return weights
    dtype = weights.dtype
    codebook = np.sort(np.asarray(kernel.centroids, np.float32).astype(dtype))
    kept = np.asarray(_kept(weights, kernel))
    positions = np.asarray(kernel.positions)
    nearest = np.abs(kept[:, None] - codebook.astype(np.float32)[None, :]).argmin(axis=1)
    indices = np.zeros(weights.size, share.index_dtype(codebook.size))
    indices[positions] = nearest
    mask = np.zeros(weights.size, bool)
    mask[positions] = True
    return share.SharedKernel(codebook=jnp.asarray(codebook), indices=jnp.asarray(indices.reshape(weights.shape)),
                              mask=jnp.asarray(mask.reshape(weights.shape)))

  return jax.tree.map(snap_leaf, soft, state.params, is_leaf=lambda x: x is None or is_soft(x))
