"""The stages of Deep Compression in order, each resumable, recorded in `results.json`.

Stages: `baseline` (dense training), `slimmed` (a VGG's weakest channels
removed, then fine-tuning; only where channels.flops_fraction < 1, and every
later stage then works on the smaller VGG), `pruned` (iterative magnitude pruning
with retraining), `shared` (per-layer k-means, then fine-tuning the codebooks)
and `encoded` (relative indices and Huffman codes in a real file, read back and
evaluated from that file). Each trains from its own checkpoint folders under the
workdir, so rerunning the same command resumes where it stopped, and adds its
entry under `stages` in `results.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from dc_jax import (atomic, codec, data, distributed, dkm, flops, folding, loading, models, progress, provenance,
                    prune, report, sensitivity, rules, share, slimming, train)
from dc_jax.errors import ConfigError, DataError
from dc_jax.experiment import STAGES, Experiment, TrainSpec

RESULTS_FILE = "results.json"
MODEL_FILE = "model.dcz"


def write_json_atomically(path: Path, content: dict[str, Any]) -> None:
  atomic.write_bytes(path, (json.dumps(content, indent=2) + "\n").encode())


def record(workdir: Path, keys: tuple[str, ...], entry: Any) -> dict[str, Any]:
  """Sets results[keys[0]]...[keys[-1]] = entry in the workdir's results.json; returns the whole file.

  Process 0 writes it; every process reads it back once all have reached the barrier.
  """
  path = workdir / RESULTS_FILE
  if distributed.is_primary():
    results = json.loads(path.read_text()) if path.exists() else {"stages": {}}
    node = results
    for key in keys[:-1]:
      node = node.setdefault(key, {})
    node[keys[-1]] = entry
    write_json_atomically(path, results)
  distributed.barrier(f"record {'/'.join(keys)}")
  return json.loads(path.read_text())


def check_compatible(model_name: str, dataset: data.Dataset) -> None:
  """Fails before any compute when the data's images do not fit the model."""
  expected = models.INPUT_SHAPES[model_name]
  if dataset.image_shape != expected:
    raise DataError(f"model.name={model_name!r} takes {expected} images; "
                    f"data.name={dataset.name!r} has {dataset.image_shape}")


def start_checkpoints(start_from: str) -> Path:
  """The checkpoint folder `start_from` names: a workdir (its baseline/) or a checkpoint folder itself."""
  path = Path(start_from)
  folder = path / "baseline" if (path / "baseline").is_dir() else path
  if not folder.is_dir() or train.checkpoint_manager(folder).latest_step() is None:
    raise ConfigError(f"start_from={start_from!r} holds no checkpoint; valid: a dc_jax workdir or a "
                      f"checkpoint folder such as runs/lenet300/baseline")
  return folder


def restore_weights(state: train.TrainState, folder: Path) -> train.TrainState:
  """`state` with the params and BatchNorm statistics of the latest checkpoint in `folder`, whatever its optimizer."""
  manager = train.checkpoint_manager(folder)
  restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
  found = {"params": restored["params"], "batch_stats": restored.get("batch_stats") or {}}
  expected = {"params": state.params, "batch_stats": state.batch_stats}
  if _shapes(found) != _shapes(expected):
    raise DataError(f"the checkpoint in {folder} does not hold this model's parameters")
  found = jax.tree.map(jnp.asarray, found)
  return state.replace(params=found["params"], batch_stats=found["batch_stats"])


def schedule_steps(experiment: Experiment, dataset: data.Dataset) -> dict[str, int]:
  """Train steps of each stage the experiment runs: what the projected time multiplies."""
  def steps(spec: TrainSpec) -> int:
    return spec.epochs * train.steps_in_epoch(dataset, spec)

  found = {"baseline": 0 if experiment.start_from else steps(experiment.dense)}
  if "slimmed" in experiment.stages:
    found["slimmed"] = steps(experiment.channel_finetune)
  if "pruned" in experiment.stages:
    found["pruned"] = experiment.pruning.rounds * steps(experiment.retrain)
  if "shared" in experiment.stages:
    found["shared"] = steps(experiment.finetune)
  if "encoded" in experiment.stages:
    found.update({f"sweep k={k}": steps(experiment.finetune) for k in experiment.sweep if k != experiment.sharing.k})
  return found


def summary(experiment: Experiment, dataset: data.Dataset, model: nn.Module, workdir: Path,
            schedule: dict[str, int], command: str) -> str:
  """What is about to run, where, on what: the run's first lines."""
  shape = (1, *dataset.image_shape)
  params = train.count_params(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))["params"])
  devices = jax.devices()
  return (f"{command or 'dc_jax run'}\n"
          f"  model {experiment.model['name']} ({params:,} parameters, {experiment.model['dtype']} compute) on "
          f"{dataset.name}: "
          f"{dataset.train_images.shape[0]:,} training and {dataset.test_images.shape[0]:,} test images\n"
          f"  devices: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
          f"{jax.process_count()} process(es); batch {experiment.dense.batch_size}\n"
          f"  stages: {', '.join(f'{name} ({n:,} steps)' for name, n in schedule.items())}\n"
          f"  workdir: {workdir}")


# A projected schedule longer than this gets a warning that points to the CPU configs.
LONG_SCHEDULE_SECONDS = 86400


def projection(schedule: dict[str, int], batch_size: int) -> Callable[[float], None]:
  """What `train.fit` calls with its first measured step time: the whole schedule's time at that rate.

  Retraining, fine-tuning and shared steps cost about what a dense step does
  (bench/overhead.py), so one rate stands for all.
  """
  def report_projection(seconds_per_step: float) -> None:
    total = sum(schedule.values())
    eta = seconds_per_step * total
    logging.info("measured %.3f s per step of batch %d: the whole schedule (%s steps) takes about %s on this "
                 "machine, evaluation and coding aside", seconds_per_step, batch_size, f"{total:,}",
                 progress.duration(eta))
    if eta > LONG_SCHEDULE_SECONDS:
      logging.warning("this schedule runs for %s here; on a CPU use configs/vgg19_fast.py:narrow (VGG19-BN at 1/8 "
                      "width, hours), configs/lenet300.py or configs/lenet5.py (minutes), or a GPU",
                      progress.duration(eta))
  return report_projection


def train_baseline(experiment: Experiment, dataset: data.Dataset, model: nn.Module,
                   workdir: Path, on_step_time: Callable[[float], None] | None = None) -> train.TrainState:
  """Stage `baseline`: the dense network, trained from scratch (or resumed) in `workdir/baseline`.

  With `start_from`, the trained weights of an earlier run are restored instead.
  """
  spec = experiment.dense
  tx = train.create_optimizer(spec, train.steps_in_epoch(dataset, spec))
  if experiment.bn_scale_l1:  # Network slimming: BatchNorm scales pushed to 0, so that channels can be removed.
    tx = slimming.with_bn_scale_l1(tx, model, dataset.image_shape, experiment.bn_scale_l1,
                                   experiment.bn_scale_l1_flops)
  state = train.create_train_state(jax.random.key(experiment.seed), model, dataset.image_shape, tx)
  if experiment.start_from:
    return restore_weights(state, start_checkpoints(experiment.start_from))
  return train.fit(state, dataset, spec, experiment.seed,
                   checkpoint_dir=workdir / "baseline", metrics_path=workdir / "metrics.jsonl",
                   augmentation=experiment.augmentation, input_pipeline=experiment.input_pipeline,
                   on_step_time=on_step_time)


def slim_and_finetune(experiment: Experiment, dataset: data.Dataset, dense: train.TrainState,
                      checkpoint_dir: Path) -> tuple[Experiment, train.TrainState, dict[str, Any]]:
  """Stage `slimmed`: the dense VGG without its smallest-|gamma| channels, fine-tuned in `checkpoint_dir`.

  Returns the run as it goes on (`experiment.with_channels`: the smaller VGG
  that pruning, sharing and the file take), the fine-tuned state, and its
  entry: FLOPs and parameters before and after (`flops.count`), accuracy
  before and after fine-tuning. The choice is a function of the dense weights,
  so a resumed run chooses the same channels and restores the fine-tuned
  weights over them.
  """
  start = time.perf_counter()
  shape = dataset.image_shape
  keep = experiment.channels.select(dense.params, experiment.model, dataset.num_classes, shape[0])
  variables, channels = slimming.shrink({"params": dense.params, "batch_stats": dense.batch_stats}, keep,
                                        experiment.model["depth"])
  slim = experiment.with_channels(channels)
  full_model = models.create_model(num_classes=dataset.num_classes, **experiment.model)
  model = models.create_model(num_classes=dataset.num_classes, **slim.model)
  spec = experiment.channel_finetune
  state = train.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                  batch_stats=variables["batch_stats"],
                                  tx=train.create_optimizer(spec, train.steps_in_epoch(dataset, spec)))
  before = train.evaluate(state, dataset, spec.eval_batch_size, spec.eval_batches)
  state = train.fit(state, dataset, spec, experiment.channel_seed, checkpoint_dir=checkpoint_dir,
                    metrics_path=checkpoint_dir.parent / "metrics.jsonl", augmentation=experiment.augmentation,
                    input_pipeline=experiment.input_pipeline)
  after = train.evaluate(state, dataset, spec.eval_batch_size, spec.eval_batches)
  costs = slimming.summary(flops.count(full_model, shape), flops.count(model, shape))
  size = 4 * (train.count_params(state.params) + train.count_params(state.batch_stats))  # As float32.
  dense_size = 4 * (train.count_params(dense.params) + train.count_params(dense.batch_stats))
  plan = experiment.channels
  logging.info("slimmed: %s channels kept of %s; %.1f%% of the FLOPs, %.1f%% of the parameters; test accuracy "
               "%.4f before fine-tuning, %.4f after", sum(channels), sum(int(k.size) for k in keep.values()),
               100 * costs["flops_kept"], 100 * costs["params_kept"], before["accuracy"], after["accuracy"])
  return slim, state, {
      "test_accuracy": after["accuracy"],
      "test_accuracy_before_finetune": before["accuracy"],
      "test_examples": after["examples"],
      "flops_fraction": plan.flops_fraction,
      "scope": plan.scope,
      "multiple": plan.multiple,
      "channels_before": [int(k.size) for k in keep.values()],
      "channels": list(channels),
      **costs,
      "size_bytes": size,
      "compression_ratio": dense_size / size,  # Against the dense float32 model, as the later stages count theirs.
      "steps": int(state.step),
      "seconds": time.perf_counter() - start,
  }


def prune_and_retrain(experiment: Experiment, dataset: data.Dataset, dense: train.TrainState,
                      workdir: Path, plan: prune.Plan) -> tuple[train.TrainState, list[dict[str, Any]]]:
  """Stage `pruned`: rounds of pruning, each followed by retraining with the masks enforced by optax.

  Round r prunes the weights that round r-1 left, to the schedule's fraction,
  then retrains from them in `workdir/pruned/round_r` with a fresh optimizer.
  The masks live in the optimizer state: checkpointed, and restored on resume.
  """
  retrain = experiment.retrain
  steps = train.steps_in_epoch(dataset, retrain)
  teacher = teacher_of(dense, retrain)
  state, masks, rounds = dense, None, []
  for r in range(plan.rounds):
    masks = plan.prune(state.params, masks, r)
    tx = prune.masked(train.create_optimizer(retrain, steps), masks)
    state = train.TrainState.create(apply_fn=state.apply_fn, params=prune.apply_masks(state.params, masks),
                                    batch_stats=state.batch_stats, tx=tx)
    state = train.fit(state, dataset, retrain, experiment.round_seed(r),
                      checkpoint_dir=workdir / "pruned" / f"round_{r}", metrics_path=workdir / "metrics.jsonl",
                      augmentation=experiment.augmentation, input_pipeline=experiment.input_pipeline,
                      teacher=teacher)
    masks = prune.masks_of(state.opt_state)
    test = train.evaluate(state, dataset, retrain.eval_batch_size, retrain.eval_batches)
    _, totals = prune.report(masks, plan.patterns)
    rounds.append({"round": r + 1, "kept_fraction": totals["kept_fraction"], "test_accuracy": test["accuracy"]})
    logging.info("pruning round %d/%d: kept %.2f%% of weights, test accuracy %.4f", r + 1, plan.rounds,
                 100 * totals["kept_fraction"], test["accuracy"])
  return state, rounds


def teacher_of(dense: train.TrainState | None, spec: TrainSpec) -> dict[str, Any] | None:
  """The dense model's variables where `spec` distills (distill.weight > 0), else None."""
  if dense is None or not spec.distill_weight:
    return None
  return dense.variables(dense.params)


def shared_state(apply_fn: Callable[..., Any], shared: Any, batch_stats: Any, tx: optax.GradientTransformation,
                 experiment: Experiment) -> share.SharedTrainState:
  """A SharedTrainState of `share.quantize`'s tree, with `tx` training its codebooks (the paper's fine-tuning)."""
  trainable, frozen = share.split(shared)
  return share.SharedTrainState.create(apply_fn=apply_fn, params=trainable, batch_stats=batch_stats,
                                       tx=share.finetune_optimizer(tx, shared, experiment.train_unshared),
                                       frozen=frozen, reduction=experiment.reduction)


def share_and_finetune(experiment: Experiment, dataset: data.Dataset, pruned: train.TrainState,
                       checkpoint_dir: Path,
                       dense: train.TrainState | None = None) -> tuple[share.SharedTrainState, dict[str, Any]]:
  """Stage `shared`: k-means per pruned layer, then fine-tuning in `checkpoint_dir`: of the codebooks, or with DKM.

  `dense` is the teacher when `distill.weight` > 0. With `experiment.dkm`
  the pruned weights train through soft k-means (dkm.py) from the k-means
  centroids, then snap to their nearest centroids: the same kind of state.

  Clustering is deterministic, so a resumed run clusters again and restores
  the fine-tuned codebooks (or weights) over it.
  """
  start = time.perf_counter()
  masks = prune.masks_of(pruned.opt_state)
  shared, layers = share.quantize(pruned.params, masks, experiment.sharing)
  finetune = experiment.finetune
  tx = train.create_optimizer(finetune, train.steps_in_epoch(dataset, finetune))
  state = shared_state(pruned.apply_fn, shared, pruned.batch_stats, tx, experiment)
  before = train.evaluate(state, dataset, finetune.eval_batch_size, finetune.eval_batches)
  logging.info("shared: test accuracy %.4f after clustering, before fine-tuning", before["accuracy"])
  fit = functools.partial(train.fit, dataset=dataset, config=finetune, seed=experiment.finetune_seed,
                          checkpoint_dir=checkpoint_dir, metrics_path=checkpoint_dir.parent / "metrics.jsonl",
                          augmentation=experiment.augmentation, input_pipeline=experiment.input_pipeline,
                          teacher=teacher_of(dense, finetune))
  if experiment.dkm is None:
    state = fit(state)
  else:
    soft = dkm.DKMTrainState.create(apply_fn=pruned.apply_fn, params=pruned.params, batch_stats=pruned.batch_stats,
                                    tx=dkm.optimizer(tx, shared, masks, experiment.train_unshared),
                                    soft=dkm.start(shared, pruned.params), plan=experiment.dkm)
    soft = fit(soft)
    state = shared_state(pruned.apply_fn, dkm.snap(soft), soft.batch_stats, tx, experiment)
  after = train.evaluate(state, dataset, finetune.eval_batch_size, finetune.eval_batches)
  return state, {
      "test_accuracy": after["accuracy"],
      "test_accuracy_before_finetune": before["accuracy"],
      "test_examples": after["examples"],
      "init": experiment.sharing.init,
      "method": "paper" if experiment.dkm is None else "dkm",
      "reduction": experiment.reduction,
      "layers": layers,
      "seconds": time.perf_counter() - start,
  }


def evaluate_variables(model: nn.Module, variables: dict[str, Any], dataset: data.Dataset,
                       config: ml_collections.ConfigDict) -> dict[str, float]:
  """Test accuracy of `model` with variables as `codec.read` returns them (SharedKernels materialised).

  Raw leaves stored at half precision (codec.raw_dtype) compute as float32 again, as the model's own would.
  """
  widen = lambda leaf: leaf.astype(np.float32) if leaf.dtype == np.float16 else leaf
  variables = jax.tree.map(widen, {"params": share.materialize(variables["params"]),
                                   "batch_stats": variables.get("batch_stats", {})})
  state = train.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                  batch_stats=variables["batch_stats"], tx=optax.identity())
  return train.evaluate(state, dataset, config.eval_batch_size, config.eval_batches)


def _check_decoded(written: Any, decoded: Any, path: Path) -> None:
  """The file must give back exactly the tree written: same structure, dtypes and bits."""
  leaves, structure = jax.tree.flatten(written)
  decoded_leaves, decoded_structure = jax.tree.flatten(decoded)
  same = structure == decoded_structure and all(
      np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b) for a, b in zip(leaves, decoded_leaves))
  if not same:
    raise RuntimeError(f"{path} does not decode to the model it was written from")


def encode_and_evaluate(experiment: Experiment, dataset: data.Dataset, model: nn.Module,
                        state: share.SharedTrainState, path: Path) -> dict[str, Any]:
  """Stage `encoded`: the shared model as a compressed file, read back bit-exactly, evaluated from the file."""
  start = time.perf_counter()
  variables = {"params": state.shared_params(), "batch_stats": state.batch_stats}
  if experiment.fold_batch_norm:
    variables = folding.fold_batch_norm(variables, models.batch_norm_pairs(experiment.model),
                                        models.BATCH_NORM_EPSILON)
  variables = codec.narrow_raw_floats(variables, experiment.raw_dtype)
  variables = codec.narrow_codebooks(variables, experiment.codebook_dtype)
  content, summary = codec.encode(variables, experiment.index_bits, loading.describe(experiment.model, dataset),
                                  experiment.deflate)
  if distributed.is_primary():
    atomic.write_bytes(path, content)
  distributed.barrier(f"write {path.name}")
  decoded = codec.read(path)
  _check_decoded(variables, decoded, path)
  test = evaluate_variables(model, decoded, dataset, experiment.finetune)
  logging.info("%s\n%s", path.name, report.coding_text(summary.layers, summary.totals))
  return {
      "test_accuracy": test["accuracy"],
      "test_examples": test["examples"],
      "file": path.name,
      "file_bytes": summary.totals["file_bytes"],
      "size_bytes": summary.totals["file_bytes"],
      "dense_bytes": summary.totals["dense_bytes"],
      "compression_ratio": summary.totals["compression_ratio"],
      "layers": summary.layers,
      "totals": summary.totals,
      "seconds": time.perf_counter() - start,
  }


def evaluate_file(config: ml_collections.ConfigDict | None, path: str | Path,
                  eval_batch_size: int = 1000) -> dict[str, float]:
  """Test accuracy of a compressed model file, for the config's model and data.

  Without a config, the file's metadata (format version 3) names the model,
  the dataset (read as `data.load(name)` reads it) and the normalisation
  statistics; `eval_batch_size` is then the batch (configs/base.py's). With
  a config whose channels.flops_fraction < 1, the conv channels are the
  file's: stage slimmed chose them, the config does not say which.
  """
  if config is None:
    described = loading.metadata(path)
    dataset = data.load(described["dataset"])
    dataset = dataclasses.replace(dataset, mean=np.asarray(described["mean"], np.float32),
                                  std=np.asarray(described["std"], np.float32))
    config = ml_collections.ConfigDict({"model": described["model"],
                                        "train": {"eval_batch_size": eval_batch_size, "eval_batches": -1}})
  else:
    dataset = data.load(config.data.name, config.data.path, config.data.tfds_dir)
  settings = config.model.to_dict()
  if "channels" in config and config.channels.flops_fraction < 1:  # Stage slimmed chose them; the file says which.
    settings.update(width=1.0, channels=tuple(loading.metadata(path)["model"]["channels"]))
  check_compatible(settings["name"], dataset)
  model = models.create_model(num_classes=dataset.num_classes, **settings)
  variables = codec.read(path)
  expected = _shapes(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *dataset.image_shape))))
  found = _shapes({"params": share.materialize(variables.get("params", {})),
                   "batch_stats": variables.get("batch_stats", {})})
  for name in sorted(expected.keys() | found.keys()):
    if expected.get(name) != found.get(name):
      raise DataError(f"{path} does not hold model.name={settings['name']!r}'s parameters: {name} is "
                      f"{found.get(name, 'missing')} in the file, {expected.get(name, 'absent')} in the model")
  return evaluate_variables(model, variables, dataset, config.train)


def _shapes(variables: dict[str, Any]) -> dict[str, tuple[int, ...]]:
  return {name: tuple(leaf.shape) for name, leaf in rules.by_path(variables).items()}


def check_config(config: ml_collections.ConfigDict) -> Experiment:
  """Everything that can be checked without data or training; the config as the Experiment the stages run."""
  experiment = Experiment.from_config(config)
  train.check_param_sharding(experiment.dense.param_sharding)
  if experiment.start_from:
    start_checkpoints(experiment.start_from)
  return experiment


def analyze_sensitivity(experiment: Experiment, dataset: data.Dataset, state: train.TrainState,
                        workdir: Path, dense_accuracy: float) -> dict[str, Any]:
  """Each pruned layer pruned alone, no retraining (Han et al. 2015, Fig. 5), kept in results.json.

  A rerun reads the curves back instead of evaluating again.
  """
  previous = json.loads((workdir / RESULTS_FILE).read_text()).get("sensitivity")
  settings = experiment.sensitivity
  fractions = [float(f) for f in settings.fractions]
  # Everything the curves depend on besides the dense model (config.json covers that one).
  # The curves are of the model pruning starts from: after stage slimmed, the smaller VGG (its model.channels).
  inputs = {"fractions": fractions, "eval_batches": settings.eval_batches,
            "patterns": list(experiment.pruning.patterns), "channels": list(experiment.model.get("channels", ()))}
  if previous and all(previous.get(name) == value for name, value in inputs.items()):
    curves = previous["curves"]
  else:
    curves = sensitivity.curves(state, dataset, experiment.pruning.patterns, fractions,
                                experiment.dense.eval_batch_size, settings.eval_batches)
  kept = sensitivity.kept_fractions(curves, dense_accuracy, settings.tolerated_drop)
  entry = {**inputs, "tolerated_drop": settings.tolerated_drop,
           "dense_accuracy": dense_accuracy, "curves": curves, "kept_fractions": kept}
  record(workdir, ("sensitivity",), entry)
  return entry


def make_figures(workdir: Path, experiment: Experiment, results: dict[str, Any],
                 dense: train.TrainState, pruned: train.TrainState | None,
                 shared: share.SharedTrainState | None) -> list[tuple[str, str]]:
  """The run's figures as PNGs under workdir/figures; (title, path relative to the workdir) each."""
  folder = workdir / "figures"
  folder.mkdir(exist_ok=True)
  figures = []
  if pruned is not None:
    masks = prune.masks_of(pruned.opt_state)
    layers, _ = prune.report(masks, experiment.pruning.patterns)
    report.plot_kept_fractions(folder / "kept_fractions.png", layers)
    figures.append(("Weights kept per layer", "figures/kept_fractions.png"))
    dense_leaves, pruned_leaves, mask_leaves = rules.by_path(dense.params), rules.by_path(pruned.params), rules.by_path(masks)
    shared_leaves = rules.by_path(shared.shared_params(), share.is_shared) if shared is not None else {}
    for i, row in enumerate(layers):
      name = row["layer"]
      kernel = shared_leaves.get(name)
      file = f"figures/weights_{i:02d}_{name.replace('/', '_')}.png"
      report.plot_layer(workdir / file, name, np.asarray(dense_leaves[name]), np.asarray(pruned_leaves[name]),
                        np.asarray(mask_leaves[name]),
                        None if kernel is None else np.asarray(kernel.materialize()),
                        None if kernel is None else np.asarray(kernel.codebook),
                        1 if kernel is None else kernel.vector_size)
      figures.append((f"{name}: dense, pruned, shared", file))
  if results.get("sweep"):
    report.plot_sweep(folder / "sweep.png", results["sweep"], results["stages"]["baseline"]["test_accuracy"])
    figures.append(("Accuracy against compressed size, one point per k", "figures/sweep.png"))
  if "encoded" in results["stages"] and experiment.model["name"] in report.PUBLISHED:
    report.plot_pareto(folder / "pareto.png", report.file_points(results), results["stages"]["encoded"]["dense_bytes"],
                       experiment.model["name"])
    figures.append(("Accuracy against file bytes, with the published points", "figures/pareto.png"))
  if results.get("sensitivity"):
    report.plot_sensitivity(folder / "sensitivity.png", results["sensitivity"]["curves"],
                            results["sensitivity"]["dense_accuracy"])
    figures.append(("Sensitivity: one layer pruned alone, no retraining", "figures/sensitivity.png"))
  return figures


# What each stage leaves in the workdir besides its entry in results.json.
STAGE_OUTPUTS = {"baseline": "baseline", "slimmed": "slimmed", "pruned": "pruned", "shared": "shared", "encoded": MODEL_FILE}


def _sweep_outputs(k: int) -> tuple[str, str]:
  return f"shared_k{k}", f"model_k{k}.dcz"


def _read_results(workdir: Path) -> dict[str, Any]:
  path = workdir / RESULTS_FILE
  return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def sweep_points_on_disk(workdir: Path, results: dict[str, Any]) -> set[int]:
  """The k of every sweep point with a checkpoint folder, a file or an entry in results.json."""
  found = {int(key.removeprefix("k=")) for key in results.get("sweep", {})}
  found |= {int(p.name.removeprefix("shared_k")) for p in workdir.glob("shared_k*") if p.name[8:].isdigit()}
  found |= {int(p.stem.removeprefix("model_k")) for p in workdir.glob("model_k*.dcz") if p.stem[7:].isdigit()}
  return found


def stages_on_disk(workdir: Path, results: dict[str, Any]) -> list[str]:
  """The stages (and sweep points, "sweep k=4") that left outputs in the workdir, in pipeline order."""
  stages = [s for s in STAGES if s in results["stages"] or (workdir / STAGE_OUTPUTS[s]).exists()]
  return stages + [f"{provenance.SWEEP_PREFIX}{k}" for k in sorted(sweep_points_on_disk(workdir, results))]


def adopt(config: ml_collections.ConfigDict, workdir: Path) -> None:
  """A workdir made before config.json existed: its stages are taken to have the current settings, with a warning."""
  on_disk = stages_on_disk(workdir, _read_results(workdir))
  if not on_disk:
    return
  provenance.save(workdir, {stage: provenance.stage_fields(config, stage) for stage in on_disk})
  logging.warning("%s has stages (%s) but no record of their settings: recorded the current config in %s now, "
                  "which is right only if these are the settings they were made with",
                  workdir, ", ".join(on_disk), provenance.CONFIG_FILE)


def _remove(path: Path) -> None:
  if path.is_dir():
    shutil.rmtree(path)
  elif path.exists():
    path.unlink()


def discard(workdir: Path, changed: list[str]) -> list[str]:
  """Deletes the outputs, results and records of the changed stages and of every stage made from them."""
  results, recorded = _read_results(workdir), provenance.load(workdir) or {}
  present = set(recorded) | set(stages_on_disk(workdir, results))
  names = {name for stage in changed for name in provenance.downstream(stage)}
  if "sweep" in names:  # Every sweep point, on disk or only recorded.
    names.discard("sweep")
    names |= {f"{provenance.SWEEP_PREFIX}{k}" for k in sweep_points_on_disk(workdir, results)}
    names |= {name for name in recorded if name.startswith(provenance.SWEEP_PREFIX)}
  if distributed.is_primary():
    for name in names:
      if name.startswith(provenance.SWEEP_PREFIX):
        k = int(name.removeprefix(provenance.SWEEP_PREFIX))
        for output in _sweep_outputs(k):
          _remove(workdir / output)
        results.get("sweep", {}).pop(f"k={k}", None)
      else:
        _remove(workdir / STAGE_OUTPUTS[name])
        results["stages"].pop(name, None)
    if "baseline" in names:  # Every stage is redone: the curves and metrics of the old dense model go too.
      results.pop("sensitivity", None)
      _remove(workdir / "metrics.jsonl")
    _remove(workdir / report.REPORT_FILE)
    if (workdir / RESULTS_FILE).exists():
      write_json_atomically(workdir / RESULTS_FILE, results)
  provenance.save(workdir, {stage: fields for stage, fields in recorded.items() if stage not in names})
  redone = provenance.in_order(names & present)
  logging.warning("config.redo_changed: deleted %s in %s, to redo with the new settings", ", ".join(redone), workdir)
  return redone


def check_workdir(config: ml_collections.ConfigDict, workdir: Path) -> None:
  """Before any work: the workdir's stages must have been made with this config's settings (see provenance.py).

  A changed setting stops the run with one line, or with `redo_changed`
  deletes the stages it affects, which then run again.
  """
  recorded = provenance.load(workdir)
  distributed.barrier("read config.json")  # Every process reads it before process 0 may change it.
  if recorded is None:
    adopt(config, workdir)
    return
  changed = provenance.check(config, workdir, recorded)
  if changed:
    discard(workdir, changed)


def keep_seconds(previous: dict[str, Any] | None, entry: dict[str, Any]) -> dict[str, Any]:
  """`entry` with the `seconds` of the run that made the stage; this run's (a restore) as `restore_seconds`.

  A stage with an entry in results.json was finished by an earlier run with
  the same settings (check_workdir sees to that), so this run only restored it.
  """
  if not previous or "seconds" not in previous:
    return entry
  return {**entry, "seconds": previous["seconds"], "restore_seconds": entry["seconds"]}


def reported(results: dict[str, Any], stages: tuple[str, ...]) -> dict[str, Any]:
  """The results of this run's stages only: an older run's later stages may have other settings."""
  shown = {**results, "stages": {name: e for name, e in results["stages"].items() if name in stages}}
  if "encoded" not in stages:
    shown.pop("sweep", None)
  return shown


def run(config: ml_collections.ConfigDict, workdir: str | Path, command: str = "") -> dict[str, Any]:
  """Runs the stages the config asks for, writes report.md and its figures, returns results.json's contents.

  Everything that can be checked without training is checked first (see
  `check_config`, `check_workdir`), then the data.
  """
  workdir = Path(workdir)
  experiment = check_config(config)
  check_workdir(config, workdir)
  dataset = data.load(experiment.dataset, experiment.data_path, experiment.tfds_dir)
  check_compatible(experiment.model["name"], dataset)
  model = models.create_model(num_classes=dataset.num_classes, **experiment.model)
  workdir.mkdir(parents=True, exist_ok=True)
  if distributed.is_primary():
    for stale in workdir.glob(".*.tmp"):  # Left by a run killed while writing a file.
      stale.unlink()
  before = _read_results(workdir)  # A stage found here is restored: its first run's time is kept.
  schedule = schedule_steps(experiment, dataset)
  logging.info("%s", summary(experiment, dataset, model, workdir, schedule, command))

  # Each stage's "seconds" is its wall time in the run that made it; a rerun's restore is "restore_seconds".
  start = time.perf_counter()
  provenance.record(workdir, config, "baseline")
  dense = train_baseline(experiment, dataset, model, workdir, projection(schedule, experiment.dense.batch_size))
  test = train.evaluate(dense, dataset, experiment.dense.eval_batch_size, experiment.dense.eval_batches)
  results = record(workdir, ("stages", "baseline"), keep_seconds(before["stages"].get("baseline"), {
      "test_accuracy": test["accuracy"],
      "test_examples": test["examples"],
      "params": train.count_params(dense.params),
      "flops": flops.count(model, dataset.image_shape)[1]["flops"],  # Multiply-adds per image.
      "size_bytes": 4 * (train.count_params(dense.params) + train.count_params(dense.batch_stats)),  # As float32.
      "steps": int(dense.step),
      "seconds": time.perf_counter() - start,
      **({"start_from": experiment.start_from} if experiment.start_from else {}),
  }))
  dense_accuracy = test["accuracy"]
  if "slimmed" in experiment.stages:  # From here on the run is that of the smaller VGG: `dense` is its weights.
    provenance.record(workdir, config, "slimmed")
    experiment, dense, entry = slim_and_finetune(experiment, dataset, dense, workdir / "slimmed")
    model = models.create_model(num_classes=dataset.num_classes, **experiment.model)
    results = record(workdir, ("stages", "slimmed"), keep_seconds(before["stages"].get("slimmed"), entry))
    dense_accuracy = entry["test_accuracy"]
  derived = None
  if experiment.sensitivity.enabled:
    derived = analyze_sensitivity(experiment, dataset, dense, workdir, dense_accuracy)["kept_fractions"]
    results = json.loads((workdir / RESULTS_FILE).read_text())
  pruned = shared = None
  if "pruned" in experiment.stages:
    start = time.perf_counter()
    provenance.record(workdir, config, "pruned")
    plan = experiment.pruning_with(derived if experiment.sensitivity.apply else None)
    pruned, rounds = prune_and_retrain(experiment, dataset, dense, workdir, plan)
    layers, totals = prune.report(prune.masks_of(pruned.opt_state), plan.patterns)
    logging.info("pruned\n%s", report.pruning_text(layers, totals))
    results = record(workdir, ("stages", "pruned"), keep_seconds(before["stages"].get("pruned"), {
        "test_accuracy": rounds[-1]["test_accuracy"],
        "test_examples": test["examples"],
        "kept_fraction": totals["kept_fraction"],
        "compression_ratio": totals["compression_ratio"],
        "weights": totals["weights"],
        "kept": totals["kept"],
        "layers": layers,
        "rounds": rounds,
        "seconds": time.perf_counter() - start,
    }))
  if "shared" in experiment.stages:
    provenance.record(workdir, config, "shared")
    shared, entry = share_and_finetune(experiment, dataset, pruned, workdir / "shared", dense)
    logging.info("shared\n%s", report.sharing_text(entry["layers"]))
    logging.info("shared: test accuracy %.4f after fine-tuning", entry["test_accuracy"])
    results = record(workdir, ("stages", "shared"), keep_seconds(before["stages"].get("shared"), entry))
  if "encoded" in experiment.stages:
    provenance.record(workdir, config, "encoded")
    encoded = encode_and_evaluate(experiment, dataset, model, shared, workdir / MODEL_FILE)
    encoded = against_original(experiment, results, encoded)
    results = record(workdir, ("stages", "encoded"), keep_seconds(before["stages"].get("encoded"), encoded))
    for k in experiment.sweep:
      if k == experiment.sharing.k:  # The run's own k: already shared and encoded.
        point = _sweep_entry(k, results["stages"]["shared"], results["stages"]["encoded"])
      else:
        provenance.record(workdir, config, f"{provenance.SWEEP_PREFIX}{k}")
        point = keep_seconds(before.get("sweep", {}).get(f"k={k}"), against_original(
            experiment, results, sweep_point(experiment, dataset, model, pruned, workdir, k, dense)))
      results = record(workdir, ("sweep", f"k={k}"), point)
  if distributed.is_primary():
    shown = reported(results, experiment.stages)
    figures = make_figures(workdir, experiment, shown, dense, pruned, shared)
    path = report.write_report(workdir, shown, experiment.model["name"], command, figures)
    logging.info("report: %s", path)
  return results


def sweep_point(experiment: Experiment, dataset: data.Dataset, model: nn.Module, pruned: train.TrainState,
                workdir: Path, k: int, dense: train.TrainState | None = None) -> dict[str, Any]:
  """The pruned model shared at k clusters per layer, fine-tuned and encoded: one column of the original's table."""
  swept = experiment.shared_at(k)
  state, entry = share_and_finetune(swept, dataset, pruned, workdir / f"shared_k{k}", dense)
  encoded = encode_and_evaluate(swept, dataset, model, state, workdir / f"model_k{k}.dcz")
  logging.info("sweep k=%d: test accuracy %.4f, %s bytes (%.1fx)", k, encoded["test_accuracy"],
               f"{encoded['file_bytes']:,}", encoded["compression_ratio"])
  return _sweep_entry(k, entry, encoded)


def _sweep_entry(k: int, shared: dict[str, Any], encoded: dict[str, Any]) -> dict[str, Any]:
  return {"k": k, "test_accuracy": encoded["test_accuracy"],
          "test_accuracy_before_finetune": shared["test_accuracy_before_finetune"],
          "file": encoded["file"], "file_bytes": encoded["file_bytes"],
          "compression_ratio": encoded["compression_ratio"], "seconds": shared["seconds"] + encoded["seconds"],
          **{key: encoded[key] for key in ("original_dense_bytes", "compression_ratio_original") if key in encoded}}


def against_original(experiment: Experiment, results: dict[str, Any], encoded: dict[str, Any]) -> dict[str, Any]:
  """An encoded file's entry, after stage slimmed also against the original dense float32 model (the baseline's).

  `compression_ratio` counts against the dense float32 variables of the model
  in the file, the smaller VGG; the channels removed are a saving too.
  """
  if "slimmed" not in experiment.stages:
    return encoded
  original = results["stages"]["baseline"]["size_bytes"]
  return {**encoded, "original_dense_bytes": original, "compression_ratio_original": original / encoded["file_bytes"]}
