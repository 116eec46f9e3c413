"""Compress your own flax.nnx model with dc_jax: the nnx twin of examples/own_model.py.

  DC_JAX_DATA_DIR=../shared/data python examples/own_model_nnx.py [--epochs 2] [--out runs/own_model/mlp_nnx.dcz]

The stages take the module's parameters as a pure dict (`flax_trees.params`),
choose layers by its paths ("hidden/kernel", "layers/0/kernel" for layers in a
list), and give a dict back that `flax_trees.load` puts into the module.
"""

import argparse
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dc_jax import codec, data, flax_trees, prune, share


class MLP(nnx.Module):
  """Yours: any nnx module, any attribute names."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(28 * 28, 256, rngs=rngs)
    self.out = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(nnx.relu(self.hidden(x.reshape((x.shape[0], -1)))))


def fit(loss: Callable, params, tx: optax.GradientTransformation, dataset: data.Dataset, epochs: int):
  """A plain optax loop over `loss(params, images, labels)`, params a pure dict."""
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


def accuracy(model: nnx.Module, dataset: data.Dataset) -> float:
  predict = nnx.jit(lambda model, images: jnp.argmax(model(images), -1))
  correct = sum(int(jnp.sum((predict(model, b["image"]) == b["label"]) & b["mask"]))
                for b in data.eval_batches(dataset, 1000))
  return correct / dataset.test_labels.size


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--out", type=Path, default=Path("runs/own_model/mlp_nnx.dcz"))  # runs/ is git-ignored.
  args = parser.parse_args()
  dataset = data.load("mnist")
  model = MLP(nnx.Rngs(0))
  apply = flax_trees.apply_fn(model)  # apply(params, x): the module run on a pure dict of parameters.

  def loss(params, images, labels):
    return optax.softmax_cross_entropy_with_integer_labels(apply(params, images), labels).mean()

  params = fit(loss, flax_trees.params(model), optax.adam(1e-3), dataset, args.epochs)
  print(f"dense: {accuracy(flax_trees.load(model, params), dataset):.4f}")

  # 1. Prune: keep 10% of each kernel; the masked optimizer (momentum, weight decay) keeps pruned weights at 0.
  masks = prune.layer_fraction(params, 0.1)
  tx = prune.masked(optax.chain(optax.add_decayed_weights(1e-5), optax.sgd(0.01, momentum=0.9)), masks)
  params = fit(loss, prune.apply_masks(params, masks), tx, dataset, args.epochs)
  print(f"pruned to 10%: {accuracy(flax_trees.load(model, params), dataset):.4f}")

  # 2. Share: 16 centroids (4 bits) per kernel; fine-tune only the codebooks (gradients summed per cluster).
  shared, _ = share.quantize(params, masks, share.Plan(bits=4))
  trainable, frozen = share.split(shared)
  trainable = fit(lambda t, x, y: loss(share.materialize_split(t, frozen), x, y), trainable,
                  share.finetune_optimizer(optax.adam(1e-4), shared), dataset, 1)
  shared = share.merge(trainable, frozen)
  print(f"shared, k=16: {accuracy(flax_trees.load(model, shared), dataset):.4f}")

  # 3. Encode: a real file, read back exactly, loaded into a fresh module and evaluated from there.
  args.out.parent.mkdir(parents=True, exist_ok=True)
  summary = codec.write(args.out, {"params": shared}, index_bits=0)
  restored = flax_trees.load(MLP(nnx.Rngs(1)), codec.read(args.out)["params"])
  print(f"{args.out}: {summary.totals['file_bytes']:,} bytes, {summary.totals['compression_ratio']:.1f}x smaller "
        f"than float32; from the file: {accuracy(restored, dataset):.4f}")


if __name__ == "__main__":
  main()
