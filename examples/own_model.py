"""Compress your own Flax model with dc_jax, without our configs or training loop.

  DC_JAX_DATA_DIR=../shared/data python examples/own_model.py [--epochs 2] [--out runs/own_model/mlp.dcz]

Any flax.linen module works: layers are chosen by the paths of their
parameters ("hidden/kernel"), not by wrapping them. examples/own_model_nnx.py
is the same for a flax.nnx module.
"""

import argparse
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dc_jax import codec, data, prune, share


class MLP(nn.Module):
  """Yours: any module, any parameter names."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(256, name="hidden")(x))
    return nn.Dense(10, name="out")(x)


def fit(loss: Callable, params, tx: optax.GradientTransformation, dataset: data.Dataset, epochs: int):
  """A plain optax loop over `loss(params, images, labels)`."""
  @jax.jit
  def step(params, opt_state, images, labels):
    grads = jax.grad(loss)(params, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for epoch in range(epochs):
    for batch in data.train_batches(dataset, 128, seed=0, epoch=epoch, augmentation=None):
      params, opt_state = step(params, opt_state, batch["image"], batch["label"])
  return params


def accuracy(model: nn.Module, params, dataset: data.Dataset) -> float:
  correct = sum(int(jnp.sum((jnp.argmax(model.apply({"params": params}, b["image"]), -1) == b["label"]) & b["mask"]))
                for b in data.eval_batches(dataset, 1000))
  return correct / dataset.test_labels.size


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--out", type=Path, default=Path("runs/own_model/mlp.dcz"))  # runs/ is git-ignored.
  args = parser.parse_args()
  dataset = data.load("mnist")
  model = MLP()

  def loss(params, images, labels):
    logits = model.apply({"params": params}, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  params = fit(loss, params, optax.adam(1e-3), dataset, args.epochs)
  print(f"dense: {accuracy(model, params, dataset):.4f}")

  # 1. Prune: keep 10% of each kernel; the masked optimizer keeps pruned weights at exactly 0.
  masks = prune.layer_fraction(params, 0.1)
  params = fit(loss, prune.apply_masks(params, masks), prune.masked(optax.adam(5e-4), masks), dataset, args.epochs)
  print(f"pruned to 10%: {accuracy(model, params, dataset):.4f}")

  # 2. Share: 16 centroids per kernel; fine-tune only the codebooks (gradients summed per cluster).
  shared, _ = share.quantize(params, masks, share.Plan(k=16))
  trainable, frozen = share.split(shared)

  def shared_loss(trainable, images, labels):
    return loss(share.materialize_split(trainable, frozen), images, labels)

  # `trainable` also holds the biases: finetune_optimizer leaves them as they are.
  trainable = fit(shared_loss, trainable, share.finetune_optimizer(optax.adam(1e-4), shared), dataset, 1)
  shared = share.merge(trainable, frozen)
  print(f"shared, k=16: {accuracy(model, share.materialize(shared), dataset):.4f}")

  # 3. Encode: a real file, read back exactly, evaluated from what was read.
  args.out.parent.mkdir(parents=True, exist_ok=True)
  summary = codec.write(args.out, {"params": shared})
  restored = codec.read(args.out)["params"]
  print(f"{args.out}: {summary.totals['file_bytes']:,} bytes, {summary.totals['compression_ratio']:.1f}x smaller "
        f"than float32; from the file: {accuracy(model, share.materialize(restored), dataset):.4f}")


if __name__ == "__main__":
  main()
