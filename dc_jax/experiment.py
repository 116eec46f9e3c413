"""The config translated once, up front, into what each stage takes: plans, training specs, seeds.

Building an `Experiment` is the run's whole validation: every field's type and
range (validate.py), then each stage's plan, which checks its own values, and
the patterns against the model's parameter paths; so a bad setting fails
before any data is loaded or anything trains. The stages read only the
Experiment. The config itself is left to what must record it as given:
config.json (provenance.py) and the report's command line.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from dc_jax import codec, data, distributed, dkm, models, prune, rules, share, slimming, validate
from dc_jax.errors import ConfigError

STAGES = ("baseline", "slimmed", "pruned", "shared", "encoded")
OPTIONAL = ("slimmed",)  # Runs when its settings ask for it (channels.flops_fraction < 1), named in config.stages or not.


def _plain(value: Any) -> Any:
  """Config values as hashable Python: lists become tuples (a TrainSpec is a static jit argument's source)."""
  return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """How one stage trains and evaluates: what train.fit and train.create_optimizer read, by train.*'s names."""

  epochs: int
  batch_size: int
  eval_batch_size: int
  optimizer: str
  learning_rate: float
  momentum: float
  nesterov: bool
  weight_decay: float
  lr_schedule: str
  lr_decay_epochs: tuple[int, ...]
  lr_decay_factor: float
  warmup_epochs: float
  label_smoothing: float
  steps_per_epoch: int
  steps_per_dispatch: int
  eval_batches: int
  log_every_steps: int
  checkpoint_every_epochs: int
  param_sharding: str
  distill_weight: float = 0.0  # distill.*: set for retraining and fine-tuning, which have a dense teacher.
  distill_temperature: float = 1.0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> TrainSpec:
    return cls(**{field.name: _plain(config[field.name]) for field in dataclasses.fields(cls) if field.name in config})


def _per_layer(default: Any, overrides: tuple) -> Any:
  """A config's default value plus its ((regex, value), ...) overrides, as the plans take them."""
  return [*(tuple(pair) for pair in overrides), (".*", default)] if overrides else default


def pruning_plan(config: ml_collections.ConfigDict, layer_kept_fractions: dict[str, float] | None = None) -> prune.Plan:
  """The `prune.*` fields as a checked prune.Plan; `layer_kept_fractions` (exact paths) come first if given."""
  derived = tuple((re.escape(layer), f) for layer, f in (layer_kept_fractions or {}).items())
  return prune.Plan(
      criterion=config.criterion, schedule=config.schedule, rounds=config.rounds,
      kept_fraction=_per_layer(config.kept_fraction, derived + tuple(config.layer_kept_fractions)),
      quality=_per_layer(config.quality, config.layer_qualities), patterns=tuple(config.patterns),
      structure=config.structure, n=config.n, m=config.m, block_shape=tuple(config.block_shape),
      block_score=config.block_score)


def sharing_plan(config: ml_collections.ConfigDict, seed: int = 0) -> share.Plan:
  """The `share.*` fields as a checked share.Plan: per-layer bits first, then bits, then k."""
  return share.Plan(k=config.k, bits=config.bits, layer_bits=tuple(tuple(rule) for rule in config.layer_bits),
                    init=config.init, max_iterations=config.max_iterations, patterns=tuple(config.patterns),
                    seed=seed, granularity=config.granularity,
                    layer_granularity=tuple(tuple(rule) for rule in config.layer_granularity),
                    group_size=config.group_size,
                    vector_size=config.vector_size)


def dkm_plan(config: ml_collections.ConfigDict) -> dkm.Plan | None:
  """`share.method` and its settings: a checked dkm.Plan for DKM's fine-tuning, None for the paper's."""
  if config.method == "paper":
    return None
  return dkm.Plan(iterations=config.dkm_iterations, temperature=config.dkm_temperature)


def index_bits(config: ml_collections.ConfigDict) -> codec.IndexBits:
  """The `codec.*` fields as codec.write takes them; 0 bits means "auto" (the smallest file per layer)."""
  def width(bits):
    return "auto" if bits == 0 else bits

  if not config.layer_index_bits:
    return width(config.index_bits)
  return [*((pattern, width(bits)) for pattern, bits in config.layer_index_bits), (".*", width(config.index_bits))]


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a run does, checked: the stages' plans, the four training specs, augmentation and seeds."""

  seed: int
  stages: tuple[str, ...]
  start_from: str
  dataset: str  # data.load's arguments: the name, a local file or folder, TFDS's data_dir.
  data_path: str
  tfds_dir: str
  model: dict[str, Any]  # models.create_model's keywords, name included.
  augmentation: data.Augmentation | None
  input_pipeline: str
  dense: TrainSpec  # The baseline's training.
  retrain: TrainSpec  # Each pruning round's: prune.epochs, prune.learning_rate, no warm-up.
  finetune: TrainSpec  # Sharing's: share.epochs, share.learning_rate, no warm-up and no weight decay.
  pruning: prune.Plan
  sharing: share.Plan
  dkm: dkm.Plan | None  # share.method=dkm: fine-tune the weights through soft k-means; None = the paper's codebooks.
  channels: slimming.Plan | None  # channels.*: stage slimmed's choice of channels; None = no channels removed.
  channel_finetune: TrainSpec  # The shrunk VGG's: channels.epochs, channels.learning_rate, no warm-up, no teacher.
  bn_scale_l1: float  # The baseline's network-slimming L1 on BatchNorm scales (train.bn_scale_l1)...
  bn_scale_l1_flops: bool  # ...weighted per channel by its FLOPs (train.bn_scale_l1_flops).
  sweep: tuple[int, ...]
  train_unshared: bool
  reduction: str
  index_bits: codec.IndexBits
  raw_dtype: str
  codebook_dtype: str
  deflate: bool
  fold_batch_norm: bool  # BatchNorm folded into a per-channel scale and shift in the file (dc_jax/folding.py).
  sensitivity: ml_collections.ConfigDict

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Experiment:
    """The config as an Experiment, or a ConfigError naming the first bad setting; needs no data and trains nothing."""
    validate.check(config)
    distributed.check_config(config.distributed)
    channels = channel_plan(config.channels)
    experiment = cls(
        seed=config.seed, stages=run_stages(tuple(config.stages), channels is not None),
        start_from=config.start_from, dataset=config.data.name,
        data_path=config.data.path, tfds_dir=config.data.tfds_dir, model=config.model.to_dict(),
        augmentation=data.Augmentation.from_config(config.data),
        input_pipeline=config.data.pipeline, dense=TrainSpec.from_config(config.train), retrain=_retrain(config),
        finetune=_finetune(config), pruning=pruning_plan(config.prune), sharing=sharing_plan(config.share, config.seed),
        dkm=dkm_plan(config.share), channels=channels, channel_finetune=_channel_finetune(config),
        bn_scale_l1=config.train.bn_scale_l1,
        bn_scale_l1_flops=config.train.bn_scale_l1_flops, sweep=tuple(config.share.sweep),
        train_unshared=config.share.train_unshared, reduction=config.share.reduction,
        index_bits=index_bits(config.codec), raw_dtype=config.codec.raw_dtype,
        codebook_dtype=config.codec.codebook_dtype, deflate=config.codec.deflate,
        fold_batch_norm=config.codec.fold_batch_norm, sensitivity=config.sensitivity)
    _check_against_the_model(experiment)
    return experiment

  @property
  def finetune_seed(self) -> int:
    """Fine-tuning draws after the pruning rounds' seeds (seed + 1 ... seed + rounds)."""
    return self.seed + self.pruning.rounds + 1

  def round_seed(self, r: int) -> int:
    return self.seed + r + 1

  @property
  def channel_seed(self) -> int:
    """The shrunk VGG's fine-tuning draws after sharing's."""
    return self.finetune_seed + 1

  def with_channels(self, channels: tuple[int, ...]) -> Experiment:
    """The same run on the VGG with these conv channels (model.channels): what follows stage slimmed."""
    return dataclasses.replace(self, model={**self.model, "width": 1.0, "channels": tuple(channels)})

  def shared_at(self, k: int) -> Experiment:
    """The same run sharing every layer at k clusters: a point of the sweep."""
    return dataclasses.replace(self, sharing=dataclasses.replace(self.sharing, k=k, bits=0, layer_bits=()))

  def pruning_with(self, layer_kept_fractions: dict[str, float] | None) -> prune.Plan:
    """The pruning plan with kept fractions for exact layer paths (the sensitivity analysis's) tried first."""
    if not layer_kept_fractions:
      return self.pruning
    derived = [(re.escape(layer), f) for layer, f in layer_kept_fractions.items()]
    given = self.pruning.kept_fraction
    return dataclasses.replace(self.pruning, kept_fraction=[*derived, *(
        given if rules.is_rule_list(given) else [(".*", given)])])


def _retrain(config: ml_collections.ConfigDict) -> TrainSpec:
  """train.* with the retraining epochs and learning rate of prune.*; retraining starts from trained weights."""
  return dataclasses.replace(TrainSpec.from_config(config.train), epochs=config.prune.epochs,
                             learning_rate=config.prune.learning_rate, lr_schedule=config.prune.lr_schedule,
                             warmup_epochs=0.0, distill_weight=config.distill.weight,
                             distill_temperature=config.distill.temperature)


def _channel_finetune(config: ml_collections.ConfigDict) -> TrainSpec:
  """train.* with the epochs and learning rate of channels.*; no teacher, as the dense model has other shapes."""
  return dataclasses.replace(TrainSpec.from_config(config.train), epochs=config.channels.epochs,
                             learning_rate=config.channels.learning_rate, lr_schedule=config.channels.lr_schedule,
                             warmup_epochs=0.0)


def channel_plan(config: ml_collections.ConfigDict) -> slimming.Plan | None:
  """The `channels.*` fields as a slimming.Plan; None at flops_fraction 1 (nothing removed)."""
  if config.flops_fraction == 1.0:
    return None
  return slimming.Plan(flops_fraction=config.flops_fraction, scope=config.scope, multiple=config.multiple)


def _finetune(config: ml_collections.ConfigDict) -> TrainSpec:
  """train.* with the fine-tuning epochs and learning rate of share.*, and no weight decay.

  L2 on a codebook would pull each centroid by its own value once, not once
  per weight that shares it: not the decay the dense weights had.
  """
  return dataclasses.replace(TrainSpec.from_config(config.train), epochs=config.share.epochs,
                             learning_rate=config.share.learning_rate, lr_schedule=config.share.lr_schedule,
                             warmup_epochs=0.0, weight_decay=0.0, distill_weight=config.distill.weight,
                             distill_temperature=config.distill.temperature)


def check_stages(stages: tuple[str, ...]) -> None:
  """A prefix of STAGES, in order; the optional stages may be left out of it."""
  required = tuple(s for s in STAGES if s not in OPTIONAL)
  named = tuple(s for s in stages if s not in OPTIONAL)
  if not stages or named != required[:len(named)] or tuple(stages) != tuple(s for s in STAGES if s in stages):
    raise ConfigError(f"stages={tuple(stages)!r} is not a run of stages; valid: a prefix of {STAGES}, in order, "
                      f"with or without {', '.join(OPTIONAL)}")


def run_stages(stages: tuple[str, ...], slimmed: bool) -> tuple[str, ...]:
  """The stages the run makes: config.stages, with slimmed after the baseline where channels are removed.

  So that config.stages keeps its meaning (and its prefixes stay valid) whether
  or not channels.flops_fraction turns stage slimmed on.
  """
  check_stages(stages)
  if "slimmed" in stages and not slimmed:
    raise ConfigError(f"stages={stages!r} names slimmed; channels.flops_fraction=1.0 removes no channels; "
                      f"valid: channels.flops_fraction < 1, or stages without slimmed")
  if slimmed and len(stages) > 1 and "slimmed" not in stages:
    return (stages[0], "slimmed", *stages[1:])
  return stages


def _check_against_the_model(experiment: Experiment) -> None:
  """The plans' patterns against the model's parameter paths, and what the stages need of each other."""
  model = models.create_model(num_classes=10, **experiment.model)
  shape = (1, *models.INPUT_SHAPES[experiment.model["name"]])
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))["params"]
  sensitivity = experiment.sensitivity
  if "pruned" in experiment.stages:
    prune.select(abstract, experiment.pruning.patterns)  # A pattern matching nothing fails now.
    if sensitivity.apply and experiment.pruning.criterion != "layer":
      raise ConfigError(f"sensitivity.apply sets per-layer kept fractions; prune.criterion="
                        f"{experiment.pruning.criterion!r} does not take them; valid: layer")
    if sensitivity.apply and experiment.pruning.structure == "n:m":
      raise ConfigError("sensitivity.apply sets per-layer kept fractions; prune.structure='n:m' keeps n of every m; "
                        "valid: prune.structure unstructured or block")
  if experiment.fold_batch_norm and not models.batch_norm_pairs(experiment.model):
    raise ConfigError(f"codec.fold_batch_norm=True folds BatchNorm; model.name={experiment.model['name']!r} has "
                      "none; valid: False, or model.name=vgg")
  if experiment.channels is not None and experiment.model["name"] != "vgg":
    raise ConfigError(f"channels.flops_fraction={experiment.channels.flops_fraction!r} removes channels by their "
                      f"BatchNorm scales; model.name={experiment.model['name']!r} has none; valid: 1.0, or "
                      f"model.name=vgg")
  if experiment.bn_scale_l1 and experiment.model["name"] != "vgg":
    raise ConfigError(f"train.bn_scale_l1={experiment.bn_scale_l1!r} regularises BatchNorm scales; model.name="
                      f"{experiment.model['name']!r} has none; valid: with model.name=vgg only")
  if sensitivity.apply and not sensitivity.enabled:
    raise ConfigError("sensitivity.apply=True needs sensitivity.enabled=True")
  if not all(0 < f <= 1 for f in sensitivity.fractions):
    raise ConfigError(f"sensitivity.fractions={tuple(sensitivity.fractions)!r}; valid: kept fractions in (0, 1]")
  if "shared" in experiment.stages:
    prune.select(abstract, experiment.sharing.patterns, "share.patterns")
    if not all(isinstance(k, int) and 2 <= k <= share.MAX_CLUSTERS for k in experiment.sweep):
      raise ConfigError(f"share.sweep={experiment.sweep!r}; valid: numbers of clusters in 2..{share.MAX_CLUSTERS}")
  if "encoded" in experiment.stages:
    codec.check_index_bits(experiment.index_bits)
