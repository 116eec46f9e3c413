"""Dense training: TrainState, jitted train/eval steps, optimizers from config, resumable loop.

The loop is shared by every stage that retrains (baseline, pruning, sharing):
it takes an optax transformation and a checkpoint folder, and resumes from the
latest checkpoint there. Batches depend only on (seed, epoch), so a resumed run
replays exactly what an uninterrupted one would.

Data parallelism: every batch is split over all devices along its first axis
and the state (parameters, optimizer state with its masks, codebooks) is
replicated, or with `train.param_sharding = "sharded"` its large arrays are
split over the same devices (as ZeRO-3 / FSDP: each device stores a slice,
XLA gathers what a step needs); the jitted steps are written for one device
and XLA partitions them, so results match a single device's up to float
summation order. In a multi-process run (see distributed.py) the mesh spans
every process's devices: each process draws the same global batches and
places its own rows.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator, Sequence
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
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from dc_jax import atomic, data, device_data, distributed, events, progress
from dc_jax.errors import ConfigError


class TrainState(train_state.TrainState):
  """Flax's TrainState plus BatchNorm statistics ({} for nets without BatchNorm)."""

  batch_stats: Any

  @classmethod
  def create(cls, *, apply_fn, params, tx, **kwargs) -> "TrainState":
    """Flax's `create` with `step` an int32 array: a Python 0 would make train_step compile twice."""
    state = super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs)
    return state.replace(step=jnp.zeros((), jnp.int32))

  def variables(self, params: Any) -> dict[str, Any]:
    """What `apply_fn` takes; a state that stores its parameters in another form materialises them here."""
    return {"params": params, "batch_stats": self.batch_stats}


class TrainingDiverged(FloatingPointError):
  """The loss became NaN or Inf; the last checkpoint on disk is the last good state."""


BATCH_AXIS = "batch"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all of them) whose one axis splits batches."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (BATCH_AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """`tree` with a full copy of every array on each device of `mesh`: how states are placed by default."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


PARAM_SHARDINGS = ("replicated", "sharded")
MIN_SHARDED_SIZE = 1 << 16  # Smaller arrays stay replicated: a slice of them saves little memory.


def check_param_sharding(mode: str) -> None:
  if mode not in PARAM_SHARDINGS:
    raise ConfigError(f"train.param_sharding={mode!r} is not a placement; valid: {', '.join(PARAM_SHARDINGS)}")


def array_sharding(shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
  """A large array split along its longest axis that the device count divides; others replicated."""
  devices = mesh.devices.size
  axes = [axis for axis, size in enumerate(shape) if size % devices == 0]
  if devices == 1 or math.prod(shape) < MIN_SHARDED_SIZE or not axes:
    return NamedSharding(mesh, PartitionSpec())
  split = max(axes, key=lambda axis: shape[axis])
  return NamedSharding(mesh, PartitionSpec(*(BATCH_AXIS if axis == split else None for axis in range(len(shape)))))


def place(tree: Any, mesh: Mesh, param_sharding: str = "replicated") -> Any:
  """`tree` on the devices of `mesh`, replicated or (param_sharding="sharded") with its large arrays split."""
  check_param_sharding(param_sharding)
  if param_sharding == "replicated":
    return replicate(tree, mesh)
  return jax.tree.map(lambda leaf: jax.device_put(leaf, array_sharding(np.shape(leaf), mesh)), tree)


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "train.batch_size") -> None:
  """Every device must get the same number of rows: a ragged split would not compile."""
  devices = mesh.devices.size
  if batch_size % devices:
    raise ConfigError(f"{field}={batch_size} does not split over {devices} devices; "
                      f"valid: a multiple of the device count {devices}")


def process_rows(rows: int, sharding: NamedSharding) -> np.ndarray:
  """A mask of the global batch's `rows` that this process's devices hold under `sharding`: all in one process."""
  mine = np.zeros(rows, bool)
  for index in sharding.addressable_devices_indices_map((rows,)).values():
    mine[index[0]] = True
  return mine


def shard_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """The global batch split along its first axis over the devices of `mesh`, whose count must divide it.

  Every process holds the same global batch and hands JAX only its own rows.
  """
  rows = len(batch["label"])
  check_batch_size(rows, mesh)
  sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
  mine = process_rows(rows, sharding)
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value)[mine], np.shape(value))
          for name, value in batch.items()}


def pad_eval_batch(batch: dict[str, np.ndarray], devices: int) -> dict[str, np.ndarray]:
  """An eval batch padded with masked-out rows to a multiple of `devices`, so any eval batch size shards."""
  pad = -len(batch["mask"]) % devices
  if not pad:
    return batch
  return {name: np.concatenate([value, np.zeros((pad, *value.shape[1:]), value.dtype)])
          for name, value in batch.items()}


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """The `train.lr_schedule` named in the config, over `epochs * steps_per_epoch` steps."""
  if config.lr_schedule == "constant":
    return optax.constant_schedule(config.learning_rate)
  if config.lr_schedule == "step":
    boundaries = {int(epoch) * steps_per_epoch: config.lr_decay_factor for epoch in config.lr_decay_epochs}
    return optax.piecewise_constant_schedule(config.learning_rate, boundaries)
  if config.lr_schedule == "cosine":
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total - 1, round(config.warmup_epochs * steps_per_epoch))
    if warmup <= 0:
      return optax.cosine_decay_schedule(config.learning_rate, total)
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, total)
  raise ConfigError(f"train.lr_schedule={config.lr_schedule!r} is not a schedule; valid: constant, step, cosine")


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum or Adam, with L2 weight decay added to the gradients first (as PyTorch does)."""
  schedule = learning_rate_schedule(config, steps_per_epoch)
  if config.optimizer == "sgd":
    optimizer = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
  elif config.optimizer == "adam":
    optimizer = optax.adam(schedule)
  else:
    raise ConfigError(f"train.optimizer={config.optimizer!r} is not an optimizer; valid: sgd, adam")
  if config.weight_decay:
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optimizer)
  return optimizer


def create_train_state(rng: jax.Array, model: nn.Module, image_shape: tuple[int, ...],
                       tx: optax.GradientTransformation) -> TrainState:
  variables = jax.jit(model.init)(rng, jnp.zeros((1, *image_shape), jnp.float32))
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           batch_stats=variables.get("batch_stats", {}), tx=tx)


def count_params(params: Any) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def _cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, label_smoothing: float = 0.0) -> jnp.ndarray:
  """Cross-entropy with integer labels; with smoothing, against (1 - s) one-hot + s / classes."""
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def distillation_loss(logits: jnp.ndarray, teacher_logits: jnp.ndarray, temperature: float) -> jnp.ndarray:
  """T^2 KL(teacher || student) of the logits softened by T (Hinton et al. 2015), per example.

  The T^2 keeps the soft targets' gradients on the scale of the hard ones' as T changes.
  """
  targets = jax.nn.softmax(teacher_logits / temperature)
  return temperature**2 * (optax.softmax_cross_entropy(logits / temperature, targets)
                           - optax.softmax_cross_entropy(teacher_logits / temperature, targets))


def _train_step(state: TrainState, batch: dict[str, jnp.ndarray], dropout_key: jax.Array,
                label_smoothing: float = 0.0, teacher: Any = None,
                distill: tuple[float, float] = (0.0, 1.0)) -> tuple[TrainState, dict[str, jnp.ndarray]]:
  """One SGD step; the dropout key is folded with the step so that resumed runs repeat it.

  With a `teacher` (variables for `state.apply_fn`) and distill = (weight, temperature), the loss
  is (1 - weight) x cross-entropy + weight x `distillation_loss` against the teacher's logits.
  """
  key = jax.random.fold_in(dropout_key, state.step)
  weight, temperature = distill
  if teacher is not None:
    teacher_logits = jax.lax.stop_gradient(state.apply_fn(teacher, batch["image"], train=False))

  def loss_fn(params):
    logits, updates = state.apply_fn(
        state.variables(params), batch["image"], train=True,
        mutable=["batch_stats"], rngs={"dropout": key})
    loss = _cross_entropy(logits, batch["label"], label_smoothing)
    if teacher is not None:
      loss = (1 - weight) * loss + weight * distillation_loss(logits, teacher_logits, temperature)
    return loss.mean(), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return state, {"loss": loss, "accuracy": accuracy}


train_step = jax.jit(_train_step, static_argnames=("label_smoothing", "distill"))


@functools.partial(jax.jit, static_argnames=("steps", "batch_size", "augmentation", "sharding", "label_smoothing",
                                             "distill"))
def train_steps(state: TrainState, train_set: device_data.TrainSet, order: jax.Array, first_step: jax.Array,
                augmentation_key: jax.Array, dropout_key: jax.Array, teacher: Any = None, *, steps: int,
                batch_size: int, augmentation: data.Augmentation | None, sharding: NamedSharding | None = None,
                label_smoothing: float = 0.0,
                distill: tuple[float, float] = (0.0, 1.0)) -> tuple[TrainState, dict[str, jnp.ndarray]]:
  """`steps` train steps in one dispatch (a `lax.scan`), each drawing its batch on the devices.

  Steps `first_step ... first_step + steps - 1` of the epoch whose permutation is
  `order`; the same steps as `train_step` on the host pipeline's batches, but
  for the augmentation's random numbers. Returns the last step's metrics.
  """
  def one_step(state, step):
    batch = device_data.batch(train_set, order, step, batch_size, augmentation_key, augmentation, sharding)
    return _train_step(state, batch, dropout_key, label_smoothing, teacher, distill)

  if steps == 1:  # XLA:CPU runs loop bodies several times slower than straight code (bench/input_pipeline.py).
    return one_step(state, first_step)
  state, metrics = jax.lax.scan(one_step, state, first_step + jnp.arange(steps))
  return state, jax.tree.map(lambda m: m[-1], metrics)


@jax.jit
def eval_step(state: TrainState, batch: dict[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
  """Sums (not means) over the real rows of a padded batch, to be added up over the test set."""
  logits = state.apply_fn(state.variables(state.params), batch["image"], train=False)
  mask = batch["mask"]
  correct = (jnp.argmax(logits, -1) == batch["label"]) & mask
  loss = jnp.where(mask, _cross_entropy(logits, batch["label"]), 0.0)
  return {"correct": correct.sum(), "loss": loss.sum(), "count": mask.sum()}


def evaluate(state: TrainState, dataset: data.Dataset, batch_size: int,
             max_batches: int = -1, mesh: Mesh | None = None) -> dict[str, float]:
  """Test accuracy and mean loss, over the whole test set unless `max_batches` limits it.

  Batches are split over the devices of `mesh` (default: all), padded with
  masked-out rows where the device count does not divide `batch_size`.
  """
  mesh = data_mesh() if mesh is None else mesh
  state = replicate(state, mesh)
  totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
  for batch in data.eval_batches(dataset, batch_size, max_batches):
    batch = shard_batch(pad_eval_batch(batch, mesh.devices.size), mesh)
    sums = jax.device_get(eval_step(state, batch))
    totals = {k: totals[k] + float(sums[k]) for k in totals}
  count = totals["count"]
  return {"accuracy": totals["correct"] / count, "loss": totals["loss"] / count,
          "examples": int(count)}


def checkpoint_manager(directory: Path, max_to_keep: int = 2) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(directory.absolute(), options=options)


def restore_latest(manager: ocp.CheckpointManager, state: TrainState) -> TrainState:
  """The latest checkpoint in `manager` restored into `state`'s structure, or `state` if none."""
  step = manager.latest_step()
  if step is None:
    return state
  return manager.restore(step, args=ocp.args.StandardRestore(state))


def append_metrics(path: Path, record: dict[str, Any], events_writer: events.ScalarWriter | None = None) -> None:
  """One JSON line, and its numbers as TensorBoard scalars "stage/split/name", written by process 0 only."""
  if not distributed.is_primary():
    return
  with path.open("a") as f:
    f.write(json.dumps(record) + "\n")
  if events_writer is not None:
    prefix = "/".join(str(record[key]) for key in ("stage", "split") if key in record)
    events_writer.scalars(record["step"], {f"{prefix}/{name}": value for name, value in record.items()
                                           if name in ("loss", "accuracy")})


def steps_in_epoch(dataset: data.Dataset, config: ml_collections.ConfigDict) -> int:
  full = data.steps_per_epoch(dataset, config.batch_size)
  return full if config.steps_per_epoch < 0 else min(full, config.steps_per_epoch)


def fit(state: TrainState, dataset: data.Dataset, config: ml_collections.ConfigDict, seed: int,
        checkpoint_dir: Path, metrics_path: Path, augmentation: data.Augmentation | None,
        mesh: Mesh | None = None, input_pipeline: str = "auto",
        on_step_time: Callable[[float], None] | None = None, teacher: Any = None) -> TrainState:
  """Trains for `config.epochs`, resuming from the latest checkpoint in `checkpoint_dir`.

  Evaluates and checkpoints at the end of epochs; logs train and test metrics
  as JSON lines. Batches are split over the devices of `mesh` (default: all)
  and the state is placed by `config.param_sharding`; `input_pipeline`
  ("auto", "device" or "host", see device_data.py) says where batches are
  drawn. Metrics also go to TensorBoard event files in `tensorboard/` beside
  `metrics_path`, tagged with the stage (`checkpoint_dir` below that folder).
  `on_step_time` is called once with the seconds per step of the first steps
  after compiling. With `teacher` (the dense model's variables), the loss also
  learns its logits by `config.distill_weight` and `config.distill_temperature`
  (see `_train_step`). Returns the final state (restored, if training had
  finished), replicated: what follows (pruning, clustering, coding) reads
  whole arrays on the host.
  """
  mesh = data_mesh() if mesh is None else mesh
  check_batch_size(config.batch_size, mesh)
  steps = steps_in_epoch(dataset, config)
  manager = checkpoint_manager(checkpoint_dir)
  state = restore_latest(manager, place(state, mesh, config.param_sharding))
  if teacher is not None:
    teacher = place(teacher, mesh, config.param_sharding)
  dropout_key = jax.random.fold_in(jax.random.key(seed), 1)
  first_epoch = int(state.step) // steps
  run_epoch = host_epoch
  if first_epoch < config.epochs and device_data.resolve(input_pipeline, dataset, list(mesh.devices.flat)) == "device":
    run_epoch = functools.partial(device_epoch, device_data.put(dataset, mesh))  # Copied only to train.
  stage = _stage_name(checkpoint_dir, metrics_path.parent)
  writer = events.ScalarWriter(metrics_path.parent / "tensorboard") if distributed.is_primary() else None
  log = progress.Progress(stage, config.epochs, first_epoch, steps, config.batch_size,
                          log_lines=not progress.bar_shown(), on_step_time=on_step_time)
  try:
    for epoch in range(first_epoch, config.epochs):
      bar = tqdm(total=steps, desc=f"{stage} epoch {epoch + 1}/{config.epochs}", disable=None, leave=False)
      for state, done, metrics in run_epoch(state, dataset, config, seed, epoch, steps, augmentation,
                                            mesh, dropout_key, teacher):
        bar.update(done - bar.n)
        log.advance(epoch, done, (epoch - first_epoch) * steps + done, metrics)
        if done % config.log_every_steps == 0 or done == steps:
          metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          if not math.isfinite(metrics["loss"]):
            raise TrainingDiverged(f"loss is {metrics['loss']} at step {int(state.step)} (epoch {epoch + 1}); "
                                   f"the last good checkpoint is in {checkpoint_dir}")
          bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['accuracy']:.3f}")
          append_metrics(metrics_path, {"stage": stage, "step": int(state.step), "epoch": epoch + 1,
                                        "split": "train", **metrics}, writer)
      bar.close()
      test = evaluate(state, dataset, config.eval_batch_size, config.eval_batches, mesh)
      append_metrics(metrics_path, {"stage": stage, "step": int(state.step), "epoch": epoch + 1, "split": "test",
                                    **test}, writer)
      logging.info("%s: epoch %d/%d, train loss %.4f, test accuracy %.4f", stage, epoch + 1, config.epochs,
                   metrics["loss"], test["accuracy"])
      if (epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == config.epochs:
        atomic.save_checkpoint(manager, int(state.step), state)  # Stops at a failed write (a full disk).
  finally:
    manager.wait_until_finished()
    manager.close()
  return replicate(state, mesh)


def _stage_name(checkpoint_dir: Path, workdir: Path) -> str:
  """"baseline", "pruned/round_0", "shared_k4": the checkpoint folder below the workdir."""
  try:
    return checkpoint_dir.absolute().relative_to(workdir.absolute()).as_posix()
  except ValueError:
    return checkpoint_dir.name


def distillation(config: ml_collections.ConfigDict, teacher: Any) -> tuple[float, float]:
  """(weight, temperature) for `_train_step`: a spec's distill settings where there is a teacher."""
  return (config.distill_weight, config.distill_temperature) if teacher is not None else (0.0, 1.0)


def host_epoch(state: TrainState, dataset: data.Dataset, config: ml_collections.ConfigDict, seed: int, epoch: int,
                steps: int, augmentation: data.Augmentation | None, mesh: Mesh, dropout_key: jax.Array,
                teacher: Any = None) -> Iterator[tuple[TrainState, int, dict[str, jax.Array]]]:
  """One epoch of batches drawn with numpy and copied to the devices: (state, steps done, metrics) per step."""
  batches = data.train_batches(dataset, config.batch_size, seed, epoch, augmentation)
  for done, batch in zip(range(1, steps + 1), batches):
    state, metrics = train_step(state, shard_batch(batch, mesh), dropout_key, config.label_smoothing,
                                teacher, distillation(config, teacher))
    yield state, done, metrics


def device_epoch(train_set: device_data.TrainSet, state: TrainState, dataset: data.Dataset,
                  config: ml_collections.ConfigDict, seed: int, epoch: int, steps: int,
                  augmentation: data.Augmentation | None, mesh: Mesh, dropout_key: jax.Array,
                  teacher: Any = None) -> Iterator[tuple[TrainState, int, dict[str, jax.Array]]]:
  """One epoch drawn on the devices, `config.steps_per_dispatch` steps per call, ending at every logged step."""
  order = device_data.put_order(data.epoch_order(dataset.train_images.shape[0], seed, epoch), mesh)
  augmentation_key = device_data.epoch_key(seed, epoch)
  sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
  done = 0
  while done < steps:
    chunk = min(config.steps_per_dispatch, config.log_every_steps - done % config.log_every_steps, steps - done)
    state, metrics = train_steps(state, train_set, order, jnp.int32(done), augmentation_key, dropout_key, teacher,
                                 steps=chunk, batch_size=config.batch_size, augmentation=augmentation,
                                 sharding=sharding, label_smoothing=config.label_smoothing,
                                 distill=distillation(config, teacher))
    done += chunk
    yield state, done, metrics
