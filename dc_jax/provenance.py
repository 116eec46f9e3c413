"""The settings each stage in a workdir was made with, kept in `config.json`, and how a rerun compares with them.

Each stage records the config fields its results depend on before it starts,
so that a rerun can tell when restoring its checkpoints would give numbers of
other settings. Dependencies are cumulative: a stage depends on everything its
inputs depend on, so a change reaches every stage after the first it touches.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_collections

from dc_jax import atomic, defaults, distributed
from dc_jax.errors import ConfigError

CONFIG_FILE = "config.json"
ORDER = ("baseline", "slimmed", "pruned", "shared", "encoded")
SWEEP_PREFIX = "sweep k="

# train.* fields that change no stage's weights: evaluation is redone on every run, logging and checkpoint
# spacing leave training as it is (a resumed run replays exactly), and placement only moves arrays.
NOT_DEPENDENCIES = ("train.eval_batch_size", "train.eval_batches", "train.log_every_steps",
                    "train.checkpoint_every_epochs", "train.param_sharding")
SWEPT = ("share.k", "share.bits", "share.layer_bits", "share.sweep")  # A sweep point sets its own k.


def _flat(config: ml_collections.ConfigDict, section: str) -> dict[str, Any]:
  """{"section.field": value} for a config section, values as JSON gives them back (tuples as lists)."""
  return {f"{section}.{name}": json.loads(json.dumps(value)) for name, value in config[section].to_dict().items()}


def baseline_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  fields = {"seed": config.seed, "start_from": config.start_from,
            **_flat(config, "data"), **_flat(config, "model"), **_flat(config, "train")}
  return {name: value for name, value in fields.items() if name not in NOT_DEPENDENCIES}


def slimmed_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The baseline's and channels.*; only channels.flops_fraction while it is 1 (no stage slimmed: nothing else counts)."""
  channels = _flat(config, "channels")
  if config.channels.flops_fraction == 1.0:
    channels = {"channels.flops_fraction": channels["channels.flops_fraction"]}
  return {**baseline_fields(config), **channels}


def pruned_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Stage slimmed's, prune.*, distill.* (the retraining loss), and the sensitivity analysis if it sets the fractions."""
  fields = {**slimmed_fields(config), **_flat(config, "prune"), **_flat(config, "distill"),
            "sensitivity.apply": config.sensitivity.apply}
  if config.sensitivity.apply:
    fields.update({**_flat(config, "sensitivity"), "train.eval_batches": config.train.eval_batches})
  return fields


def stage_fields(config: ml_collections.ConfigDict, stage: str) -> dict[str, Any]:
  """The fields whose values `stage` ("baseline", ..., or "sweep k=4") depends on."""
  if stage == "baseline":
    return baseline_fields(config)
  if stage == "slimmed":
    return slimmed_fields(config)
  if stage == "pruned":
    return pruned_fields(config)
  share = {name: value for name, value in _flat(config, "share").items() if name != "share.sweep"}
  if stage == "shared":
    return {**pruned_fields(config), **share}
  if stage == "encoded":
    return {**pruned_fields(config), **share, **_flat(config, "codec")}
  if stage.startswith(SWEEP_PREFIX):
    share = {name: value for name, value in share.items() if name not in SWEPT}
    return {**pruned_fields(config), **share, **_flat(config, "codec"), "share.k": int(stage[len(SWEEP_PREFIX):])}
  raise ValueError(f"no stage {stage!r}")


def in_order(stages: Iterable[str]) -> list[str]:
  """Stages in pipeline order, sweep points last by k."""
  def position(stage):
    return (ORDER.index(stage), 0) if stage in ORDER else (len(ORDER), int(stage[len(SWEEP_PREFIX):]))
  return sorted(stages, key=position)


def downstream(stage: str) -> tuple[str, ...]:
  """`stage` and the stages made from its output (sweep points come from the pruned model)."""
  if stage.startswith(SWEEP_PREFIX):
    return (stage,)
  following = ORDER[ORDER.index(stage):]
  return following + (("sweep",) if stage in ("baseline", "slimmed", "pruned") else ())


def load(workdir: Path) -> dict[str, dict[str, Any]] | None:
  """{stage: fields} as recorded in the workdir, or None where nothing was recorded."""
  path = workdir / CONFIG_FILE
  return json.loads(path.read_text())["stages"] if path.exists() else None


def save(workdir: Path, stages: dict[str, dict[str, Any]]) -> None:
  """Process 0 writes config.json (sorted, so that equal settings give equal bytes); all wait for it."""
  if distributed.is_primary():
    _write(workdir, stages)
  distributed.barrier("save config.json")


def _write(workdir: Path, stages: dict[str, dict[str, Any]]) -> None:
  content = {"note": "The config fields each stage's results depend on, as the run that made them had them.",
             "stages": stages}
  atomic.write_bytes(workdir / CONFIG_FILE, (json.dumps(content, indent=2, sort_keys=True) + "\n").encode())


def record(workdir: Path, config: ml_collections.ConfigDict, stage: str) -> None:
  """Records the fields `stage` depends on, before it trains: a stage killed half-way is recorded too."""
  if distributed.is_primary():
    stages = load(workdir) or {}
    fields = stage_fields(config, stage)
    if stages.get(stage) != fields:
      _write(workdir, {**stages, stage: fields})
  distributed.barrier(f"record the settings of {stage}")


def _every_field(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{"section.field" or "field": value} over the whole config, values as JSON gives them back."""
  fields = {}
  for name, value in json.loads(json.dumps(config.to_dict())).items():
    if isinstance(value, dict):
      fields.update({f"{name}.{field}": inner for field, inner in value.items()})
    else:
      fields[name] = value
  return fields


def changes(recorded: dict[str, Any], current: dict[str, Any], default: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """{field: (old, new)} for the fields whose value differs from the record's.

  A field the record lacks is newer than the stage (or was not recorded while
  another setting made it irrelevant): the stage was made as its default
  (`default`: dc_jax/defaults.py's fields) would make it, which is what a new
  field's default must reproduce. A field only the record has is gone from
  dc_jax or irrelevant now: it no longer sets anything, so it is no change.
  """
  old = {name: recorded.get(name, default.get(name)) for name in current}
  return {name: (old[name], current[name]) for name in sorted(current) if old[name] != current[name]}


def changed_stages(config: ml_collections.ConfigDict,
                   recorded: dict[str, dict[str, Any]]) -> dict[str, dict[str, tuple[Any, Any]]]:
  """{stage: its changed fields} for every recorded stage whose fields differ from the config's."""
  base = _every_field(defaults.get_config())
  found = {stage: changes(fields, stage_fields(config, stage), base) for stage, fields in recorded.items()}
  return {stage: fields for stage, fields in found.items() if fields}


def _show(value: Any) -> str:
  return json.dumps(value)


def conflict_message(workdir: Path, config: ml_collections.ConfigDict,
                     changed: dict[str, dict[str, tuple[Any, Any]]], recorded: dict[str, dict[str, Any]]) -> str:
  """One line: which fields changed for which stages, and the three ways on."""
  fields: dict[str, tuple[Any, Any]] = {}
  for stage_changes in changed.values():
    fields.update(stage_changes)
  shown = ", ".join(f"{name} {_show(old)} -> {_show(new)}" for name, (old, new) in sorted(fields.items())[:6])
  if len(fields) > 6:
    shown += f" and {len(fields) - 6} more"
  ways = ["a new --workdir"]
  if "baseline" in recorded and "baseline" not in changed:
    source = recorded["baseline"].get("start_from") or str(workdir)
    ways.append(f"--config.start_from={source} with a new --workdir to reuse its trained baseline")
  ways.append("--config.redo_changed=True to delete and redo those stages here")
  return (f"{workdir} holds stages made with other settings: {shown} (stages {', '.join(in_order(changed))}); "
          f"use {', or '.join(ways)}")


def check(config: ml_collections.ConfigDict, workdir: Path, recorded: dict[str, dict[str, Any]]) -> list[str]:
  """The recorded stages that the config changes; a ConfigError naming the fields unless config.redo_changed."""
  changed = changed_stages(config, recorded)
  if changed and not config.redo_changed:
    raise ConfigError(conflict_message(workdir, config, changed, recorded))
  return list(changed)
