"""The PyTorch original's VGG19-BN table in one GPU run: configs/vgg19_fast.py at full width, every stage, k = 4/9/13/35.

  python bench/gpu_table.py [--workdir DIR] [--config.FIELD=VALUE ...]     # on a GPU machine
  python bench/gpu_table.py --estimate                                     # anywhere: the projected H200 time

Prints the original's table with our row and the file ratio under each k, and
the images/s of every stage (wall clock, compile and evaluation included).
Without --workdir it runs in a fresh temporary folder. It refuses to run on a
machine without a GPU unless --allow_cpu (for the smoke overrides of
configs/vgg19_fast.py's docstring).

--estimate compiles nothing for the GPU: it counts the FLOPs of one full-width
train step (XLA's cost analysis), multiplies by the schedule's steps, and
divides by an assumed sustained H200 rate; compile time is measured here on
the CPU for the step and taken as the GPU's. BENCHMARKS.md has the figures.
"""

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from ml_collections import config_flags

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
from dc_jax import models, pipeline, report, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "vgg19_fast.py"), "Config to run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run writes; default: a temporary folder.")
_ALLOW_CPU = flags.DEFINE_bool("allow_cpu", False, "Run without a GPU (smoke runs only).")
_ESTIMATE = flags.DEFINE_bool("estimate", False, "Print the projected H200 time instead of running.")
# H200 SXM: 989 TFLOP/s dense bf16 peak. A VGG on 32x32 images sustains a fraction of it (its late maps are 2x2):
# the estimate is given at 25% (well-fed tensor cores) and at 5% (about 23,000 images/s, what published
# PyTorch VGG19 CIFAR trainers report on an H100).
H200_PEAK_FLOPS = 989e12
SUSTAINED_SHARES = (0.25, 0.05)
CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000


def trained_images(config, train_examples: int = CIFAR10_TRAIN) -> dict[str, int]:
  """Training images each stage sees under `config`'s schedule (full epochs)."""
  per_epoch = (train_examples // config.train.batch_size) * config.train.batch_size
  if config.train.steps_per_epoch > 0:
    per_epoch = min(per_epoch, config.train.steps_per_epoch * config.train.batch_size)
  other_k = [k for k in config.share.sweep if k != config.share.k]
  return {"baseline": config.train.epochs * per_epoch,
          "pruned": config.prune.rounds * config.prune.epochs * per_epoch,
          "shared": config.share.epochs * per_epoch,
          **{f"k={k}": config.share.epochs * per_epoch for k in other_k}}


def stage_seconds(results: dict[str, Any]) -> dict[str, float]:
  stages, sweep = results["stages"], results.get("sweep", {})
  found = {name: stages[name]["seconds"] for name in ("baseline", "pruned", "shared") if name in stages}
  found.update({name: entry["seconds"] for name, entry in sweep.items() if name not in found
                and entry["file"] != pipeline.MODEL_FILE})
  return found


def estimate(config) -> None:
  """The projected wall time on one H200, from FLOPs counted here and the CPU's compile time."""
  model = models.create_model(num_classes=10, **config.model)
  tx = train.create_optimizer(config.train, 100)
  state = train.create_train_state(jax.random.key(0), model, (32, 32, 3), tx)
  batch = {"image": jnp.zeros((config.train.batch_size, 32, 32, 3)),
           "label": jnp.zeros((config.train.batch_size,), jnp.int32)}
  lowered = train.train_step.lower(state, batch, jax.random.key(1), config.train.label_smoothing)
  flops_per_image = lowered.cost_analysis()["flops"] / config.train.batch_size
  start = time.perf_counter()
  lowered.compile()
  compile_s = time.perf_counter() - start
  images = trained_images(config)
  # Every stage compiles a train step (a new optimizer, or a new model form) and an evaluation.
  compiles = 1 + config.prune.rounds + len(set(config.share.sweep) | {config.share.k})
  print(f"train step: {flops_per_image / 1e9:.2f} GFLOP per image (forward + backward), compiled in "
        f"{compile_s:.1f} s on {jax.default_backend()}")
  print(f"images trained: {sum(images.values()):,} ({', '.join(f'{k} {v:,}' for k, v in images.items())})")
  print(f"{compiles} train-step compiles at ~{compile_s:.0f} s: {compiles * compile_s:.0f} s")
  for share in SUSTAINED_SHARES:
    rate = share * H200_PEAK_FLOPS
    train_s = sum(images.values()) * flops_per_image / rate
    print(f"at {rate / 1e12:.0f} TFLOP/s sustained ({rate / flops_per_image:,.0f} images/s): training {train_s:.0f} s")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if _ESTIMATE.value:
    estimate(config)
    return
  if jax.default_backend() != "gpu" and not _ALLOW_CPU.value:
    sys.exit(f"error: no GPU (jax backend {jax.default_backend()!r}); install with .[cuda] on a GPU machine, "
             f"or pass --allow_cpu for a smoke run")
  print(f"devices: {jax.devices()}", flush=True)
  with tempfile.TemporaryDirectory() as scratch:
    workdir = _WORKDIR.value or scratch
    start = time.perf_counter()
    results = pipeline.run(config, workdir, command=" ".join(["python", *sys.argv]))
    total = time.perf_counter() - start
  print(f"\n{report.sweep_table(results, with_original=True)}\n")
  images = trained_images(config)
  for name, seconds in stage_seconds(results).items():
    print(f"{name:<10} {seconds:8.1f} s  {images.get(name, 0) / seconds:10,.0f} images/s (wall, compile included)")
  print(f"total {total:.1f} s ({total / 60:.1f} min) on {jax.devices()[0].device_kind}")


if __name__ == "__main__":
  app.run(main)
