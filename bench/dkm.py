"""Fine-tuning step of the paper (codebooks) against DKM (weights through soft k-means): time and compiled memory.

  python bench/dkm.py --config configs/lenet5.py [--bits 2,4] [--repeats 20] [--config.share.dkm_iterations=5]

The config's model, randomly initialised and pruned to its last round's kept
fractions (so the kept counts, and DKM's attention matrices, are the real
run's), shared at each --bits (share.bits; share.layer_bits as the config
has them). Memory is XLA's own account of the compiled
train step (memory_analysis): temporaries, and arguments (the state and the
batch); time is the median step of --repeats, contenders interleaved.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
from bench import common  # noqa: E402
from dc_jax import dkm, experiment, models, pipeline, prune, share, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "lenet5.py"), "Config of the model.")
_BITS = flags.DEFINE_list("bits", ["2", "4"], "share.bits to measure at (the config's share.layer_bits still apply).")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed steps per contender, after one compiling step.")
_LAYER = flags.DEFINE_list("layer", ["1000000", "32"], "Kept weights and clusters of one large layer whose DKM "
                           "gradient's compiled memory is reported alone (VGG19 at 5% kept: about 1M weights).")

MB = 1e6


def states(bits: int) -> dict[str, train.TrainState]:
  """The fine-tuning states of both methods, from the same pruned model shared at 2**bits clusters."""
  config = _CONFIG.value
  model = models.create_model(num_classes=10, **config.model)
  shape = (1, *models.INPUT_SHAPES[config.model.name])
  params = jax.jit(model.init)(jax.random.key(config.seed), jnp.zeros(shape, jnp.float32))["params"]
  plan = experiment.pruning_plan(config.prune)
  masks = plan.prune(params, None, plan.rounds - 1)
  params = prune.apply_masks(params, masks)
  config.share.bits, config.share.method = bits, "dkm"
  run = experiment.Experiment.from_config(config)
  shared, _ = share.quantize(params, masks, run.sharing)
  tx = optax.sgd(0.001, momentum=0.9)
  paper = pipeline.shared_state(model.apply, shared, {}, tx, run)
  soft = dkm.DKMTrainState.create(apply_fn=model.apply, params=params, tx=dkm.optimizer(tx, shared, masks, True),
                                  soft=dkm.start(shared, params), plan=run.dkm)
  return {"paper": paper, "dkm": soft}


def memory_mb(state: train.TrainState, batch: dict[str, jax.Array]) -> dict[str, float]:
  analysis = train.train_step.lower(state, batch, jax.random.key(0)).compile().memory_analysis()
  return {"temp": analysis.temp_size_in_bytes / MB, "arguments": analysis.argument_size_in_bytes / MB}


def layer_memory_mb(n: int, k: int, remat: bool) -> float:
  """Temporaries of the compiled gradient of one layer's soft weights: (n x k) copies kept for the backward pass."""
  cluster = jax.checkpoint(dkm.soft_cluster, static_argnums=(3,)) if remat else dkm.soft_cluster
  iterations = _CONFIG.value.share.dkm_iterations

  def grad(weights, centroids, scale):
    return jax.grad(lambda w: jnp.sum(cluster(w, centroids, scale, iterations)[0] ** 2))(weights)

  shapes = (jax.ShapeDtypeStruct((n,), jnp.float32), jax.ShapeDtypeStruct((k,), jnp.float32),
            jax.ShapeDtypeStruct((), jnp.float32))
  return jax.jit(grad).lower(*shapes).compile().memory_analysis().temp_size_in_bytes / MB


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  rng = np.random.default_rng(0)
  shape = models.INPUT_SHAPES[config.model.name]
  batch = {"image": jnp.asarray(rng.random((config.train.batch_size, *shape), np.float32)),
           "label": jnp.asarray(rng.integers(0, 10, config.train.batch_size), jnp.int32)}
  print(f"backend={jax.default_backend()} model={config.model.name} batch={config.train.batch_size} "
        f"dkm_iterations={config.share.dkm_iterations} dkm_temperature={config.share.dkm_temperature}", flush=True)
  for bits in map(int, _BITS.value):
    contenders = states(bits)
    kept = sum(int(k.positions.size) for k in jax.tree.leaves(contenders["dkm"].soft, is_leaf=dkm.is_soft))
    memory = {name: memory_mb(state, batch) for name, state in contenders.items()}
    key = jax.random.key(0)
    medians = common.interleaved_medians(
        {name: (lambda state=state: train.train_step(state, batch, key)) for name, state in contenders.items()},
        _REPEATS.value)
    attention = sum(int(k.positions.size) * int(k.centroids.size) * 4
                    for k in jax.tree.leaves(contenders["dkm"].soft, is_leaf=dkm.is_soft))
    extra = [f"({kept:,} kept shared weights; all layers' attention {attention / MB:.1f} MB per copy)"]
    common.print_table(f"\n{bits} bits, median step:", medians, "paper", extra=extra)
    for name, m in memory.items():
      print(f"  {name:<24} temporaries {m['temp']:8.1f} MB   arguments {m['arguments']:6.1f} MB", flush=True)
  n, k = map(int, _LAYER.value)
  print(f"\none layer of {n:,} kept weights x {k} clusters, DKM gradient (one attention copy {n * k * 4 / MB:.0f} MB):")
  for remat in (False, True):
    print(f"  {'jax.checkpoint' if remat else 'plain autodiff':<24} temporaries {layer_memory_mb(n, k, remat):8.0f} MB",
          flush=True)


if __name__ == "__main__":
  app.run(main)
