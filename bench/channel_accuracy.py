"""Test accuracy of the narrow VGG19 shrunk to FLOPs targets, before and after a short fine-tune (dc_jax/slimming.py).

  python bench/channel_accuracy.py [--workdir /work/runs/vgg19_fast_narrow] [--out /work/runs/channel_finetune]
      [--flops 0.5,0.25] [--scope layer] [--multiple 8] [--epochs 2] [--l1 0.03 --l1_epochs 3] [--fold]

The dense model is the baseline checkpoint of a configs/vgg19_fast.py:narrow
run; channels are chosen by |gamma| and removed, then the smaller VGG is
fine-tuned as a pruning round retrains (prune.learning_rate 0.02, cosine, the
config's augmentation) for `--epochs` on CIFAR-10 ($DC_JAX_DATA_DIR), in
resumable checkpoint folders under `--out`. That dense model was trained
without train.bn_scale_l1, so its scales were not pushed apart: without `--l1`
this measures plain |gamma| pruning with fine-tuning. With `--l1`, the dense
model first trains `--l1_epochs` more with that L1 on its scales
(`slimming.with_bn_scale_l1`, as `train.bn_scale_l1` does in a baseline):
network slimming on a short schedule.
"""

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).parents[1]))
from configs import vgg19_fast  # noqa: E402
from dc_jax import data, flops, models, slimming, train  # noqa: E402
from dc_jax.experiment import Experiment  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "/work/runs/vgg19_fast_narrow", "The dense run (its baseline/).")
_OUT = flags.DEFINE_string("out", "/work/runs/channel_finetune", "Checkpoints and results.json of this bench.")
_FLOPS = flags.DEFINE_list("flops", ["0.5", "0.25"], "FLOPs fractions to shrink to.")
_SCOPE = flags.DEFINE_enum("scope", "layer", slimming.SCOPES, "Channels by |gamma| over all layers, or per layer.")
_MULTIPLE = flags.DEFINE_integer("multiple", 8, "Each layer keeps a multiple of this many channels (or all).")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Fine-tuning epochs after shrinking.")
_FOLD = flags.DEFINE_bool("fold", False, "Removed channels' constant relu(beta) into the next layer's bias.")
_L1 = flags.DEFINE_float("l1", 0.0, "> 0: train the dense model with this L1 on its BatchNorm scales first...")
_L1_EPOCHS = flags.DEFINE_integer("l1_epochs", 3, "...for this many epochs.")

IMAGE_SHAPE = (32, 32, 3)


def load_variables(folder: Path) -> dict:
  """The params and batch_stats of the latest checkpoint in `folder`."""
  manager = train.checkpoint_manager(folder)
  restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
  return jax.tree.map(jnp.asarray, {"params": restored["params"], "batch_stats": restored["batch_stats"]})


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  config = vgg19_fast.get_config("narrow")
  experiment = Experiment.from_config(config)
  spec = dataclasses.replace(experiment.retrain, epochs=_EPOCHS.value)
  dataset = data.load(experiment.dataset, experiment.data_path, experiment.tfds_dir)
  settings = config.model.to_dict()
  full = models.create_model(num_classes=10, **settings)
  source = str(Path(_WORKDIR.value) / "baseline")
  variables = load_variables(Path(source))
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  depth, classifier = settings["depth"], tuple(settings["classifier_widths"])
  if _L1.value:
    l1_spec = dataclasses.replace(experiment.retrain, epochs=_L1_EPOCHS.value)
    tx = slimming.with_bn_scale_l1(train.create_optimizer(l1_spec, train.steps_in_epoch(dataset, l1_spec)), full,
                                   IMAGE_SHAPE, _L1.value)
    state = train.TrainState.create(apply_fn=full.apply, params=variables["params"],
                                    batch_stats=variables["batch_stats"], tx=tx)
    state = train.fit(state, dataset, l1_spec, experiment.seed, checkpoint_dir=out / "l1",
                      metrics_path=out / "metrics.jsonl", augmentation=experiment.augmentation)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    source += f", then {_L1_EPOCHS.value} epochs with L1 {_L1.value:g} on the BatchNorm scales"
  _, dense = flops.count(full, IMAGE_SHAPE)
  dense_accuracy = train.evaluate(train.TrainState.create(apply_fn=full.apply, params=variables["params"],
                                                          batch_stats=variables["batch_stats"],
                                                          tx=optax.identity()), dataset, 1000)["accuracy"]
  results = {"weights": source, "dense_test_accuracy": dense_accuracy,
             "scales": [[float(x) for x in g] for g in slimming.scales(variables["params"], depth)], "scope": _SCOPE.value, "multiple": _MULTIPLE.value, "epochs": _EPOCHS.value,
             "load_average_start": os.getloadavg()[0], "points": []}
  # Each choice of channels fine-tunes in its own folders.
  name = f"{_SCOPE.value}_multiple_{_MULTIPLE.value}" + ("_fold" if _FOLD.value else "")
  for target in map(float, _FLOPS.value):
    start = time.perf_counter()
    keep = slimming.select_channels(variables["params"], depth, classifier, 10, target, _SCOPE.value,
                                    _MULTIPLE.value)
    small, channels = slimming.shrink(variables, keep, depth, _FOLD.value)
    model = models.create_model(num_classes=10, **{**settings, "width": 1.0, "channels": channels})
    tx = train.create_optimizer(spec, train.steps_in_epoch(dataset, spec))
    state = train.TrainState.create(apply_fn=model.apply, params=small["params"],
                                    batch_stats=small["batch_stats"], tx=tx)
    before = train.evaluate(state, dataset, spec.eval_batch_size)["accuracy"]
    state = train.fit(state, dataset, spec, experiment.seed, checkpoint_dir=out / f"{name}_flops_{target:g}",
                      metrics_path=out / "metrics.jsonl", augmentation=experiment.augmentation)
    after = train.evaluate(state, dataset, spec.eval_batch_size)["accuracy"]
    _, totals = flops.count(model, IMAGE_SHAPE)
    point = {"flops_target": target, "channels": channels, "flops": totals["flops"],
             "flops_kept": totals["flops"] / dense["flops"], "params": totals["params"],
             "test_accuracy_before_finetune": before, "test_accuracy": after,
             "seconds": time.perf_counter() - start, "load_average": os.getloadavg()[0]}
    results["points"].append(point)
    print(json.dumps(point), flush=True)
    (out / f"results_{name}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
