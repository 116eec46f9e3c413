"""Every config field checked before any work: its type and range, and settings that another one overrides.

A bad value fails here in one line (field, value, what is valid) instead of
after hours of training. To check a new field, add a row to FIELDS; a field
with no row is not checked here (the plans in prune, share and codec check
theirs when pipeline.check_config builds them).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

import ml_collections

from dc_jax import codec, defaults, device_data, dkm, prune, share, slimming
from dc_jax.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")  # As train.create_optimizer builds them.
LR_SCHEDULES = ("constant", "step", "cosine")  # As train.learning_rate_schedule builds them.
REDUCTIONS = ("sum", "mean")  # As share.lookup takes them.


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a field must hold: a test, and its words for the message."""

  holds: Callable[[Any], bool]
  valid: str


def _is_integer(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(low: int, also: tuple[int, ...] = ()) -> Rule:
  words = f"an integer >= {low}" + "".join(f" or {value}" for value in also)
  return Rule(lambda v: _is_integer(v) and (v >= low or v in also), words)


def number(low: float, high: float | None = None, low_included: bool = False, high_included: bool = True) -> Rule:
  """A real number in the interval from `low` to `high` (None: unbounded)."""
  def holds(v):
    above = v >= low if low_included else v > low
    below = high is None or (v <= high if high_included else v < high)
    return _is_number(v) and above and below

  words = f"a number {'>=' if low_included else '>'} {low}" + (
      "" if high is None else f" and {'<=' if high_included else '<'} {high}")
  return Rule(holds, words)


def one_of(*choices: Any) -> Rule:
  return Rule(lambda v: isinstance(v, type(choices[0])) and v in choices, ", ".join(map(str, choices)))


def sequence_of(item: Rule) -> Rule:
  return Rule(lambda v: isinstance(v, (tuple, list)) and all(item.holds(x) for x in v), f"a tuple of {item.valid}s")


BOOLEAN = Rule(lambda v: isinstance(v, bool), "True or False")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
POSITIVE = number(0)
BATCHES = integer(1, also=(-1,))  # -1 = all.

FIELDS: dict[str, Rule] = {
    "seed": integer(0),
    "start_from": TEXT,
    "redo_changed": BOOLEAN,
    "data.path": TEXT,
    "data.tfds_dir": TEXT,
    "data.augment": BOOLEAN,
    "data.crop_padding": integer(0),
    "data.flip": BOOLEAN,
    "data.pipeline": one_of(*device_data.PIPELINES),
    "codec.raw_dtype": one_of(*codec.RAW_FLOAT_DTYPES),
    "codec.deflate": BOOLEAN,
    "codec.fold_batch_norm": BOOLEAN,
    "codec.codebook_dtype": one_of(*codec.RAW_FLOAT_DTYPES),
    "model.width": POSITIVE,
    "model.channels": sequence_of(integer(1)),
    "model.classifier_widths": sequence_of(integer(1)),
    "model.dropout": number(0, 1, low_included=True, high_included=False),
    "train.epochs": integer(0),
    "train.batch_size": integer(1),
    "train.eval_batch_size": integer(1),
    "train.optimizer": one_of(*OPTIMIZERS),
    "train.learning_rate": POSITIVE,
    "train.momentum": number(0, 1, low_included=True, high_included=False),
    "train.nesterov": BOOLEAN,
    "train.weight_decay": number(0, low_included=True),
    "train.lr_schedule": one_of(*LR_SCHEDULES),
    "train.lr_decay_epochs": sequence_of(integer(0)),
    "train.lr_decay_factor": POSITIVE,
    "train.warmup_epochs": number(0, low_included=True),
    "train.label_smoothing": number(0, 1, low_included=True, high_included=False),
    "train.bn_scale_l1": number(0, low_included=True),
    "train.bn_scale_l1_flops": BOOLEAN,
    "train.steps_per_dispatch": integer(1),
    "train.steps_per_epoch": BATCHES,
    "train.eval_batches": BATCHES,
    "train.log_every_steps": integer(1),
    "train.checkpoint_every_epochs": integer(1),
    "sensitivity.enabled": BOOLEAN,
    "sensitivity.tolerated_drop": number(0, 1, low_included=True),
    "sensitivity.apply": BOOLEAN,
    "sensitivity.eval_batches": BATCHES,
    "channels.flops_fraction": number(0, 1),
    "channels.scope": one_of(*slimming.SCOPES),
    "channels.multiple": integer(1),
    "channels.epochs": integer(0),
    "channels.learning_rate": POSITIVE,
    "channels.lr_schedule": one_of(*LR_SCHEDULES),
    "prune.structure": one_of(*prune.STRUCTURES),
    "prune.n": integer(1),
    "prune.m": integer(2),
    "prune.block_shape": Rule(lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(map(_is_integer, v))
                              and min(v) >= 1, "(rows, columns), integers >= 1"),
    "prune.block_score": one_of(*prune.BLOCK_SCORES),
    "prune.epochs": integer(0),
    "prune.learning_rate": POSITIVE,
    "prune.lr_schedule": one_of(*LR_SCHEDULES),
    "distill.weight": number(0, 1, low_included=True),
    "distill.temperature": POSITIVE,
    "share.max_iterations": integer(1),
    "share.granularity": one_of(*share.GRANULARITIES),
    "share.layer_granularity": Rule(lambda v: isinstance(v, (tuple, list)) and all(
        isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
        and one_of(*share.GRANULARITIES).holds(rule[1]) for rule in v),
                                    f"((regex, granularity), ...), granularity one of {', '.join(share.GRANULARITIES)}"),
    "share.group_size": integer(1),
    "share.vector_size": Rule(lambda v: _is_integer(v) and 1 <= v <= share.MAX_VECTOR_SIZE,
                              f"an integer 1..{share.MAX_VECTOR_SIZE}"),
    "share.reduction": one_of(*REDUCTIONS),
    "share.method": one_of(*dkm.METHODS),
    "share.dkm_iterations": integer(1),
    "share.dkm_temperature": POSITIVE,
    "share.train_unshared": BOOLEAN,
    "share.epochs": integer(0),
    "share.learning_rate": POSITIVE,
    "share.lr_schedule": one_of(*LR_SCHEDULES),
}


def _layer_groups(config: ml_collections.ConfigDict) -> bool:
  """Whether a share.layer_granularity rule asks for groups of channels (and so reads share.group_size)."""
  return any(granularity == "group" for _, granularity in config.share.get("layer_granularity", ()))


@dataclasses.dataclass(frozen=True)
class Override:
  """`field` has no effect while `when(config)` holds: an error if it differs from its default (defaults.py) then."""

  field: str
  when: Callable[[ml_collections.ConfigDict], bool]
  because: Callable[[ml_collections.ConfigDict], str]  # The setting that overrides it, as field=value.


OVERRIDES = (
    Override("share.k", lambda c: c.share.bits > 0,
             lambda c: f"share.bits={c.share.bits} gives every shared layer 2**{c.share.bits} clusters; "
                       f"valid: share.k with share.bits=0, or share.bits alone"),
    Override("share.dkm_iterations", lambda c: c.share.method != "dkm",
             lambda c: f"share.method={c.share.method!r} has no soft clustering; valid: with share.method=dkm only"),
    Override("share.dkm_temperature", lambda c: c.share.method != "dkm",
             lambda c: f"share.method={c.share.method!r} has no soft clustering; valid: with share.method=dkm only"),
    Override("share.reduction", lambda c: c.share.method == "dkm",
             lambda c: "share.method='dkm' trains the weights, not codebooks; valid: with share.method=paper only"),
    Override("share.granularity", lambda c: c.share.method == "dkm",
             lambda c: "share.method='dkm' clusters each layer as one tensor; valid: with share.method=paper only"),
    Override("share.layer_granularity", lambda c: c.share.method == "dkm",
             lambda c: "share.method='dkm' clusters each layer as one tensor; valid: with share.method=paper only"),
    Override("share.vector_size", lambda c: c.share.method == "dkm",
             lambda c: "share.method='dkm' clusters scalars; valid: with share.method=paper only"),
    Override("share.vector_size", lambda c: c.share.granularity != "tensor",
             lambda c: f"share.granularity={c.share.granularity!r} has scalar codebooks per channel; "
                       f"valid: with share.granularity='tensor' only"),
    Override("share.group_size", lambda c: c.share.granularity != "group" and not _layer_groups(c),
             lambda c: f"share.granularity={c.share.granularity!r} has no groups of channels, nor has any "
                       f"share.layer_granularity rule; valid: with granularity 'group' there or in a rule only"),
    Override("train.nesterov", lambda c: c.train.optimizer != "sgd",
             lambda c: f"train.optimizer={c.train.optimizer!r} has no Nesterov momentum; valid: with sgd only"),
    Override("prune.quality", lambda c: c.prune.criterion != "threshold",
             lambda c: f"prune.criterion={c.prune.criterion!r} keeps fractions, not q * std; "
                       f"valid: with prune.criterion=threshold only"),
    Override("prune.layer_qualities", lambda c: c.prune.criterion != "threshold",
             lambda c: f"prune.criterion={c.prune.criterion!r} keeps fractions, not q * std; "
                       f"valid: with prune.criterion=threshold only"),
    Override("prune.kept_fraction", lambda c: c.prune.structure == "n:m",
             lambda c: f"prune.structure='n:m' keeps {c.prune.n} of every {c.prune.m} weights; "
                       f"valid: with prune.structure unstructured or block only"),
    Override("prune.layer_kept_fractions", lambda c: c.prune.structure == "n:m",
             lambda c: f"prune.structure='n:m' keeps {c.prune.n} of every {c.prune.m} weights; "
                       f"valid: with prune.structure unstructured or block only"),
    Override("prune.n", lambda c: c.prune.structure != "n:m",
             lambda c: f"prune.structure={c.prune.structure!r} has no n:m groups; valid: with prune.structure=n:m only"),
    Override("prune.m", lambda c: c.prune.structure != "n:m",
             lambda c: f"prune.structure={c.prune.structure!r} has no n:m groups; valid: with prune.structure=n:m only"),
    Override("prune.block_shape", lambda c: c.prune.structure != "block",
             lambda c: f"prune.structure={c.prune.structure!r} has no blocks; valid: with prune.structure=block only"),
    Override("prune.block_score", lambda c: c.prune.structure != "block",
             lambda c: f"prune.structure={c.prune.structure!r} has no blocks; valid: with prune.structure=block only"),
    Override("train.bn_scale_l1_flops", lambda c: not c.train.bn_scale_l1,
             lambda c: "train.bn_scale_l1=0 adds no L1 to weight; valid: with train.bn_scale_l1 > 0 only"),
    *(Override(f"channels.{name}", lambda c: c.channels.flops_fraction == 1.0,
               lambda c: "channels.flops_fraction=1.0 removes no channels; valid: with channels.flops_fraction < 1 only")
      for name in ("scope", "multiple", "epochs", "learning_rate", "lr_schedule")),
    Override("model.width", lambda c: bool(c.model.channels),
             lambda c: "model.channels gives every conv's channels; valid: model.width with model.channels=() only"),
    Override("train.warmup_epochs", lambda c: c.train.lr_schedule != "cosine",
             lambda c: f"train.lr_schedule={c.train.lr_schedule!r} has no warm-up; valid: with cosine only"),
    Override("data.crop_padding", lambda c: not c.data.augment,
             lambda c: "data.augment=False turns shifts off; valid: with data.augment=True only"),
    Override("data.flip", lambda c: not c.data.augment,
             lambda c: "data.augment=False turns flips off; valid: with data.augment=True only"),
)


def value(config: ml_collections.ConfigDict, field: str) -> Any:
  """config's value at a dotted field name such as "train.epochs"."""
  node = config
  for name in field.split("."):
    node = node[name]
  return node


def has(config: ml_collections.ConfigDict, field: str) -> bool:
  section, _, name = field.rpartition(".")
  node = value(config, section) if section else config
  return name in node


def _same(a: Any, b: Any) -> bool:
  """Equal as the config would print them: tuples and lists alike."""
  if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  return a == b


def check_fields(config: ml_collections.ConfigDict) -> None:
  """Each field of FIELDS the config has holds what its rule says."""
  for field, rule in FIELDS.items():
    if has(config, field) and not rule.holds(value(config, field)):
      found = value(config, field)
      found = tuple(found) if isinstance(found, list) else found
      raise ConfigError(f"{field}={found!r} is not valid; valid: {rule.valid}")


def check_overrides(config: ml_collections.ConfigDict) -> None:
  """A setting that another one makes ineffective is an error naming both."""
  base = defaults.get_config()
  for rule in OVERRIDES:
    if has(config, rule.field) and rule.when(config) and not _same(value(config, rule.field), value(base, rule.field)):
      raise ConfigError(f"{rule.field}={value(config, rule.field)!r} has no effect: {rule.because(config)}")


def check(config: ml_collections.ConfigDict) -> None:
  """Types, ranges and choices of every field in FIELDS, then the overridden settings."""
  check_fields(config)
  check_overrides(config)
