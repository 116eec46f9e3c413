"""Forward-pass time of VGG19 with channels removed (dc_jax/slimming.py) against the unpruned one, on this CPU.

  python bench/channel_speed.py [--workdir /work/runs/vgg19_fast_narrow] [--flops 0.75,0.5,0.33,0.25]
      [--scope global] [--multiple 8] [--width 0.125] [--repeats 20] [--evaluate]

The model is configs/vgg19_fast.py:narrow (VGG19-BN at 1/8 width, a 256-256
classifier), or at another `--width`. Its variables come from the baseline
checkpoint of `--workdir` (trained, so the BatchNorm scales that choose the
channels are real ones), or are random where there is none or its width
differs. For each FLOPs target the channels are chosen by |gamma|
(`slimming.select_channels`, each layer a multiple of `--multiple`) and
removed (`slimming.shrink`); the
full and every shrunk model then run in turn at batch 1 and at batch 128
(bench/common.py), jitted, in evaluation mode. `--evaluate` adds each model's
CIFAR-10 test accuracy before any fine-tuning ($DC_JAX_DATA_DIR).
"""

import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).parents[1]))
from bench.common import interleaved_medians  # noqa: E402
from configs import vgg19_fast  # noqa: E402
from dc_jax import data, flops, models, slimming, train  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "/work/runs/vgg19_fast_narrow", "A run of configs/vgg19_fast.py:narrow "
                               "whose baseline checkpoint gives the weights; random weights if it has none.")
_FLOPS = flags.DEFINE_list("flops", ["0.75", "0.5", "0.33", "0.25"], "FLOPs fractions to shrink to.")
_SCOPE = flags.DEFINE_enum("scope", "global", slimming.SCOPES, "Channels by |gamma| over all layers, or per layer.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per model and batch size.")
_MULTIPLE = flags.DEFINE_integer("multiple", 1, "Each layer keeps a multiple of this many channels (or all).")
_WIDTH = flags.DEFINE_float("width", 0.125, "The VGG's width; the checkpoint is read only at its own width (1/8).")
_BATCHES = flags.DEFINE_list("batches", ["1", "128"], "Batch sizes to time.")
_EVALUATE = flags.DEFINE_bool("evaluate", False, "Also the CIFAR-10 test accuracy of each model, no fine-tuning.")

IMAGE_SHAPE = (32, 32, 3)


def load_variables(model, workdir: Path) -> tuple[dict, str]:
  """The baseline checkpoint's params and batch_stats, or the model's random init; and where they came from."""
  folder = workdir / "baseline"
  if model.width == 0.125 and folder.is_dir() and train.checkpoint_manager(folder).latest_step() is not None:
    manager = train.checkpoint_manager(folder)
    restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
    variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
    return jax.tree.map(jnp.asarray, variables), f"{folder} step {manager.latest_step()}"
  return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE))), "random init (no checkpoint)"


def accuracy(model, variables, dataset) -> float:
  state = train.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                  batch_stats=variables["batch_stats"], tx=optax.identity())
  return train.evaluate(state, dataset, 1000)["accuracy"]


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  config = {**vgg19_fast.get_config("narrow").model.to_dict(), "width": _WIDTH.value}
  full_model = models.create_model(num_classes=10, **config)
  variables, source = load_variables(full_model, Path(_WORKDIR.value))
  depth, classifier = config["depth"], tuple(config["classifier_widths"])
  print(f"VGG19-BN at width {_WIDTH.value:g} (configs/vgg19_fast.py:narrow), weights: {source}; channels by "
        f"|gamma|, {_SCOPE.value}, multiples of {_MULTIPLE.value}; {jax.devices()[0].device_kind}, "
        f"load {os.getloadavg()[0]:.2f}", flush=True)
  full_count = flops.count(full_model, IMAGE_SHAPE)
  variants = {"full": (full_model, variables, full_count)}
  for target in map(float, _FLOPS.value):
    keep = slimming.select_channels(variables["params"], depth, classifier, 10, target, _SCOPE.value,
                                    _MULTIPLE.value)
    small, channels = slimming.shrink(variables, keep, depth)
    model = models.create_model(num_classes=10, **{**config, "width": 1.0, "channels": channels})
    variants[f"flops {target:.0%}"] = (model, small, flops.count(model, IMAGE_SHAPE))
    print(f"  flops {target:.0%}: channels {channels}", flush=True)
  dataset = data.load("cifar10") if _EVALUATE.value else None
  rows = {name: {} for name in variants}
  for batch in map(int, _BATCHES.value):
    x = jax.random.normal(jax.random.key(1), (batch, *IMAGE_SHAPE))
    calls = {}
    for name, (model, v, _) in variants.items():
      forward = jax.jit(lambda v, x, model=model: model.apply(v, x))
      calls[name] = lambda forward=forward, v=v: forward(v, x)
    for name, seconds in interleaved_medians(calls, _REPEATS.value).items():
      rows[name][batch] = seconds
  header = ["model", "FLOPs (MACs)", "kept", "params", *(f"batch {b} ms (speedup)" for b in map(int, _BATCHES.value))]
  if dataset is not None:
    header.append("test accuracy, no fine-tuning")
  print("| " + " | ".join(header) + " |")
  print("|" + " --- |" * len(header))
  for name, (model, v, (_, totals)) in variants.items():
    cells = [name, f"{totals['flops']:,}", f"{totals['flops'] / full_count[1]['flops']:.1%}", f"{totals['params']:,}"]
    cells += [f"{rows[name][b] * 1e3:.2f} ({rows['full'][b] / rows[name][b]:.2f}x)" for b in map(int, _BATCHES.value)]
    if dataset is not None:
      cells.append(f"{accuracy(model, v, dataset):.2%}")
    print("| " + " | ".join(cells) + " |", flush=True)
  print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  app.run(main)
