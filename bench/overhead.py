"""What pruning masks and codebook lookups cost per train step, against the plain dense step.

  python bench/overhead.py [--models lenet300_100,vgg19_narrow] [--batch 128] [--kept 0.1] [--k 13]

Same model, batch and optimizer (SGD, momentum 0.9) for the three contenders:
dense (TrainState), masked (prune.masked optimizer, kept fraction --kept) and
shared (share.SharedTrainState, --k clusters per kernel, biases and
BatchNorm trained too). Targets: masked <= 1.05x dense, shared <= 1.15x.
"""

import sys
from pathlib import Path

import jax
import numpy as np
import optax
from absl import app, flags

sys.path.insert(0, str(Path(__file__).parents[1]))
from bench.common import interleaved_medians, print_table  # noqa: E402
from dc_jax import models, prune, share, train  # noqa: E402

_MODELS = flags.DEFINE_list("models", ["lenet300_100", "vgg19_narrow"], "Models to time.")
_BATCH = flags.DEFINE_integer("batch", 128, "Batch size.")
_KEPT = flags.DEFINE_float("kept", 0.1, "Kept fraction of every kernel for the masked and shared steps.")
_K = flags.DEFINE_integer("k", 13, "Clusters per kernel for the shared step.")
_REPEATS = flags.DEFINE_integer("repeats", 0, "Timed rounds; 0 = 100 for LeNet, 10 for VGG.")

MODELS = {
    "lenet300_100": (lambda: models.LeNet300100(), (28, 28, 1), 100),
    "vgg19_narrow": (lambda: models.VGG(depth=19, width=1 / 8, classifier_widths=(256, 256)), (32, 32, 3), 10),
}


def states(model, image_shape: tuple[int, ...]) -> dict[str, train.TrainState]:
  """The dense, masked and shared states of one model, from the same initial parameters."""
  tx = optax.sgd(0.01, momentum=0.9)
  dense = train.create_train_state(jax.random.key(0), model, image_shape, tx)
  masks = prune.layer_fraction(dense.params, _KEPT.value)
  params = prune.apply_masks(dense.params, masks)
  masked = train.TrainState.create(apply_fn=model.apply, params=params, batch_stats=dense.batch_stats,
                                   tx=prune.masked(tx, masks))
  shared_params, _ = share.quantize(jax.device_get(params), masks, share.Plan(k=_K.value))
  trainable, frozen = share.split(shared_params)
  shared = share.SharedTrainState.create(apply_fn=model.apply, params=trainable, batch_stats=dense.batch_stats,
                                         tx=tx, frozen=frozen)
  return {"dense": dense, "masked": masked, "shared": shared}


def main(argv):
  del argv
  print(f"backend={jax.default_backend()} devices={jax.device_count()} jax={jax.__version__}", flush=True)
  rng = np.random.default_rng(0)
  for name in _MODELS.value:
    make_model, image_shape, repeats = MODELS[name]
    batch = {"image": rng.standard_normal((_BATCH.value, *image_shape), np.float32),
             "label": rng.integers(0, 10, _BATCH.value).astype(np.int32)}
    mesh = train.data_mesh()
    batch = train.shard_batch(batch, mesh)
    contenders = {}
    for kind, state in states(make_model(), image_shape).items():
      state = train.replicate(state, mesh)
      contenders[kind] = lambda state=state: train.train_step(state, batch, jax.random.key(1))[1]["loss"]
    medians = interleaved_medians(contenders, _REPEATS.value or repeats)
    print_table(f"{name} train step, batch {_BATCH.value} (kept {_KEPT.value:.0%}, k={_K.value}):", medians, "dense")


if __name__ == "__main__":
  app.run(main)
