"""A run you can trust (issue 17): settings recorded per stage, every field checked first, a full disk, times, modes.

  DC_JAX_DATA_DIR=../shared/data python -m pytest tests/test_trust.py -q
"""

import asyncio
import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from configs import lenet300
from dc_jax import atomic, codec, pipeline, provenance, validate
from dc_jax.errors import ConfigError, WriteError
from tests.conftest import synthetic_dataset

ROOT = Path(__file__).parents[1]
# LeNet-300-100 in a few steps: 1 epoch of 3 steps, 1 pruning round, 4 bits, no sweep.
_SMALL = ("--config.train.epochs=1", "--config.train.batch_size=32", "--config.train.steps_per_epoch=3",
          "--config.train.eval_batch_size=50", "--config.prune.rounds=1", "--config.prune.epochs=1",
          "--config.share.bits=4", "--config.share.epochs=1", "--config.share.sweep=()")


def _write_npz(path: Path) -> Path:
  dataset = synthetic_dataset("mnist", n_train=256, n_test=100)
  np.savez(path, x_train=dataset.train_images[..., 0], y_train=dataset.train_labels,
           x_test=dataset.test_images[..., 0], y_test=dataset.test_labels)
  return path


UMASK_022 = "umask 022"


def _launch(workdir: Path, *flags: str, data: Path, shell: str = UMASK_022) -> subprocess.CompletedProcess:
  """launch.py after the `shell` commands (a umask, a ulimit): sh sets them, not a fork of this JAX process."""
  command = [sys.executable, str(ROOT / "launch.py"), f"--config={ROOT / 'configs' / 'lenet300.py'}",
             f"--workdir={workdir}", f"--config.data.path={data}", *_SMALL, *flags]
  return subprocess.run(["sh", "-c", f'{shell} && exec "$@"', "sh", *command], cwd=workdir.parent,
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, "DC_JAX_DATA_DIR": str(data.parent)})


def _error_line(result: subprocess.CompletedProcess) -> str:
  """The one line a failed run leaves on stderr: exit 1, no traceback."""
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and result.stderr.strip().splitlines()[-1] == lines[0], result.stderr[-3000:]
  return lines[0]


def _files(folder: Path) -> dict[str, float]:
  """{relative path: mtime} of every file under `folder`: equal before and after = untouched."""
  return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _results(workdir: Path) -> dict:
  return json.loads((workdir / "results.json").read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """One finished run of every stage, under umask 022; tests work on copies of it."""
  root = tmp_path_factory.mktemp("finished")
  data = _write_npz(root / "mnist.npz")
  workdir = root / "run"
  result = _launch(workdir, data=data)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, data


def _copy(finished, tmp_path) -> Path:
  workdir = tmp_path / "run"
  shutil.copytree(finished[0], workdir)
  return workdir


# 1. The settings each stage was made with.

def test_a_run_records_the_settings_each_stage_depends_on(finished):
  workdir, _ = finished
  stages = json.loads((workdir / "config.json").read_text())["stages"]
  assert list(stages) == ["baseline", "encoded", "pruned", "shared"]  # Sorted.
  assert stages["baseline"]["train.epochs"] == 1 and "prune.kept_fraction" not in stages["baseline"]
  assert stages["pruned"]["prune.kept_fraction"] == 0.07 and "share.bits" not in stages["pruned"]
  assert stages["shared"]["share.bits"] == 4 and "codec.index_bits" not in stages["shared"]
  assert stages["encoded"]["codec.index_bits"] == 0
  for fields in stages.values():
    assert not {"stages", "redo_changed", "train.eval_batch_size", "train.log_every_steps"} & fields.keys()
    assert not any(name.startswith("distributed.") for name in fields)


def test_a_changed_setting_stops_the_rerun_in_one_line_naming_it_and_the_ways_on(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  before = _files(workdir)
  line = _error_line(_launch(workdir, "--config.prune.kept_fraction=0.03", data=finished[1]))
  assert line == (f"error: {workdir} holds stages made with other settings: prune.kept_fraction 0.07 -> 0.03 "
                  f"(stages pruned, shared, encoded); use a new --workdir, or --config.start_from={workdir} with "
                  f"a new --workdir to reuse its trained baseline, or --config.redo_changed=True to delete and "
                  f"redo those stages here")
  assert _files(workdir) == before  # Stopped before any work: nothing written.


def test_a_changed_baseline_setting_names_every_stage_and_offers_no_start_from(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  line = _error_line(_launch(workdir, "--config.seed=3", "--config.codec.index_bits=5", data=finished[1]))
  assert "codec.index_bits 0 -> 5, seed 0 -> 3 (stages baseline, pruned, shared, encoded)" in line
  assert "start_from" not in line


def test_redo_changed_redoes_exactly_the_affected_stages_and_reports_the_new_numbers(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  old = _results(workdir)["stages"]
  baseline_files = _files(workdir / "baseline")
  result = _launch(workdir, "--config.prune.kept_fraction=0.03", "--config.redo_changed=True", data=finished[1])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "config.redo_changed: deleted pruned, shared, encoded" in result.stderr
  assert _files(workdir / "baseline") == baseline_files  # Restored, not trained again.
  new = _results(workdir)["stages"]
  assert new["baseline"] == {**old["baseline"], "restore_seconds": new["baseline"]["restore_seconds"]}
  kept = (round(0.03 * 235_200) + round(0.09 * 30_000) + 250) / 266_200  # ip2 and ip3 keep their own fractions.
  assert new["pruned"]["kept_fraction"] == pytest.approx(kept) and old["pruned"]["kept_fraction"] > 0.07
  assert new["encoded"]["file_bytes"] == (workdir / "model.dcz").stat().st_size < old["encoded"]["file_bytes"]
  assert "restore_seconds" not in new["pruned"]  # Trained in this run.
  report = (workdir / "report.md").read_text()
  assert f"{100 * kept:.2f}%" in report and f"{100 * old['pruned']['kept_fraction']:.2f}%" not in report
  recorded = json.loads((workdir / "config.json").read_text())["stages"]
  assert recorded["pruned"]["prune.kept_fraction"] == recorded["encoded"]["prune.kept_fraction"] == 0.03


def test_the_report_shows_only_the_stages_of_this_run():
  results = {"stages": {"baseline": {}, "pruned": {}, "shared": {}, "encoded": {}}, "sweep": {"k=4": {}}}
  assert pipeline.reported(results, ("baseline", "pruned")) == {"stages": {"baseline": {}, "pruned": {}}}
  assert pipeline.reported(results, pipeline.STAGES) == results


def test_a_workdir_without_config_json_is_adopted_with_one_warning(tmp_path, caplog):
  workdir = tmp_path / "old"
  (workdir / "baseline").mkdir(parents=True)
  (workdir / "results.json").write_text(json.dumps({"stages": {"baseline": {}, "pruned": {}}, "sweep": {"k=4": {}}}))
  config = lenet300.get_config()
  with caplog.at_level("WARNING"):
    pipeline.check_workdir(config, workdir)
  assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
      f"{workdir} has stages (baseline, pruned, sweep k=4) but no record of their settings: recorded the current "
      f"config in config.json now, which is right only if these are the settings they were made with"]
  recorded = provenance.load(workdir)
  assert recorded == {stage: provenance.stage_fields(config, stage) for stage in ("baseline", "pruned", "sweep k=4")}
  config.prune.kept_fraction = 0.03
  with pytest.raises(ConfigError, match=r"prune.kept_fraction 0.07 -> 0.03 \(stages pruned, sweep k=4\)"):
    pipeline.check_workdir(config, workdir)


def test_a_stage_killed_before_its_first_result_is_recorded_and_checked_too(tmp_path):
  """A stage records its settings before it trains: a rerun cannot resume its checkpoints under other settings."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  config = lenet300.get_config()
  for stage in ("baseline", "pruned"):  # What a run killed in its first pruning round leaves.
    provenance.record(workdir, config, stage)
  config.prune.rounds = 3
  with pytest.raises(ConfigError, match=r"prune.rounds 5 -> 3 \(stages pruned\)"):
    pipeline.check_workdir(config, workdir)


def _recorded_before(workdir: Path, field: str) -> None:
  """config.json as a dc_jax from before `field` existed wrote it: the field is in no stage's record."""
  recorded = provenance.load(workdir)
  provenance.save(workdir, {stage: {k: v for k, v in fields.items() if k != field} for stage, fields in recorded.items()})


def test_a_field_newer_than_the_record_is_compared_as_its_default(tmp_path):
  """An old workdir was made as the new field's default makes it: another value is a change, the default none."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  config = lenet300.get_config()
  for stage in ("baseline", "pruned", "shared", "encoded"):
    provenance.record(workdir, config, stage)
  _recorded_before(workdir, "codec.fold_batch_norm")
  pipeline.check_workdir(config, workdir)  # Default: the same settings.
  config.codec.fold_batch_norm = True
  with pytest.raises(ConfigError, match=r"codec.fold_batch_norm false -> true \(stages encoded\)"):
    pipeline.check_workdir(config, workdir)


def test_a_field_newer_than_the_record_is_redone_with_redo_changed_and_then_recorded(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  _recorded_before(workdir, "codec.raw_dtype")
  line = _error_line(_launch(workdir, "--config.codec.raw_dtype=float16", data=finished[1]))
  assert 'codec.raw_dtype "float32" -> "float16" (stages encoded)' in line
  old_bytes = _results(workdir)["stages"]["encoded"]["file_bytes"]
  result = _launch(workdir, "--config.codec.raw_dtype=float16", "--config.redo_changed=True", data=finished[1])
  assert result.returncode == 0, result.stderr[-3000:]
  assert _results(workdir)["stages"]["encoded"]["file_bytes"] < old_bytes  # Half-precision biases.
  assert provenance.load(workdir)["encoded"]["codec.raw_dtype"] == "float16"


def test_a_sweep_point_depends_on_its_own_k_not_on_the_runs_sharing():
  config = lenet300.get_config()
  point = provenance.stage_fields(config, "sweep k=4")
  assert point["share.k"] == 4 and "share.bits" not in point and "share.sweep" not in point
  config.share.bits, config.share.sweep = 5, (4,)
  assert provenance.stage_fields(config, "sweep k=4") == point
  assert provenance.stage_fields(config, "shared")["share.bits"] == 5


def test_distillation_settings_are_dependencies_of_pruning_and_what_follows_not_of_the_baseline():
  config = lenet300.get_config()
  assert "distill.weight" not in provenance.stage_fields(config, "baseline")
  before = {stage: provenance.stage_fields(config, stage) for stage in ("pruned", "shared", "encoded")}
  config.distill.weight = 0.5
  assert all(provenance.stage_fields(config, stage) != fields for stage, fields in before.items())


def test_discard_deletes_the_changed_stage_and_those_made_from_it_only(tmp_path):
  workdir = tmp_path / "run"
  for folder in ("baseline", "pruned", "shared", "shared_k4"):
    (workdir / folder).mkdir(parents=True)
  for file in ("model.dcz", "model_k4.dcz", "report.md", "metrics.jsonl"):
    (workdir / file).write_text("x")
  entries = {"baseline": {}, "pruned": {}, "shared": {}, "encoded": {}}
  (workdir / "results.json").write_text(json.dumps({"stages": entries, "sweep": {"k=4": {}}}))
  config = lenet300.get_config()
  provenance.save(workdir, {s: provenance.stage_fields(config, s) for s in [*entries, "sweep k=4"]})
  assert pipeline.discard(workdir, ["shared"]) == ["shared", "encoded"]
  assert sorted(p.name for p in workdir.iterdir()) == [
      "baseline", "config.json", "metrics.jsonl", "model_k4.dcz", "pruned", "results.json", "shared_k4"]
  assert list(_results(workdir)["stages"]) == ["baseline", "pruned"] and "k=4" in _results(workdir)["sweep"]
  assert list(provenance.load(workdir)) == ["baseline", "pruned", "sweep k=4"]
  assert pipeline.discard(workdir, ["pruned"]) == ["pruned", "sweep k=4"]
  assert sorted(p.name for p in workdir.iterdir()) == ["baseline", "config.json", "metrics.jsonl", "results.json"]


# 4. Times kept across a rerun; 5. file modes.

def test_a_rerun_keeps_each_stages_training_seconds_and_records_its_restore_apart(finished, tmp_path):
  """Also: settings that no stage depends on may change between runs."""
  workdir = _copy(finished, tmp_path)
  old = _results(workdir)["stages"]
  result = _launch(workdir, "--config.train.eval_batch_size=20", "--config.train.log_every_steps=2", data=finished[1])
  assert result.returncode == 0, result.stderr[-3000:]
  new = _results(workdir)["stages"]
  for stage in ("baseline", "pruned", "shared", "encoded"):
    assert new[stage]["seconds"] == old[stage]["seconds"], stage
    assert new[stage]["restore_seconds"] > 0, stage
  assert f"{old['baseline']['seconds']:,.1f} s" in (workdir / "report.md").read_text()


def test_the_runs_files_honour_the_umask_as_any_other_file(finished):
  workdir, _ = finished
  for name in ("model.dcz", "results.json", "report.md", "config.json", "metrics.jsonl"):
    assert stat.S_IMODE((workdir / name).stat().st_mode) == 0o644, name


def test_an_atomic_write_under_umask_077_is_private(tmp_path):
  old = os.umask(0o077)
  try:
    atomic.write_bytes(tmp_path / "f", b"x")
  finally:
    os.umask(old)
  assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o600


# 3. A full disk.

def test_a_failed_atomic_write_is_one_write_error_and_leaves_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  path.write_text("old")

  def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(WriteError) as raised:
    atomic.write_bytes(path, b"new")
  assert str(raised.value) == (f"{path}: cannot write the file: No space left on device; free space and rerun "
                               f"the same command, which resumes")
  assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def _mount_tmpfs(folder: Path, size: str) -> bool:
  """A small real filesystem, where this test may mount one (root, a mount namespace that allows it)."""
  folder.mkdir()
  if os.geteuid() != 0 or not shutil.which("mount"):
    return False
  return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                        capture_output=True).returncode == 0


# Where no tmpfs can be mounted: every file the run writes stops at 200-400 KB (sh counts 512 or 1024-byte
# blocks), so a write fails with EFBIG (Python ignores SIGXFSZ); a checkpoint takes about 2.4 MB.
LIMIT_FILE_SIZE = f"{UMASK_022} && ulimit -f 400"


def test_a_full_disk_stops_at_the_first_failed_checkpoint_in_one_line_and_a_rerun_resumes(tmp_path):
  data = _write_npz(tmp_path / "mnist.npz")
  disk = tmp_path / "disk"
  mounted = _mount_tmpfs(disk, "8m")
  try:
    workdir = disk / "run"
    done = _launch(workdir, "--config.stages=('baseline',)", data=data)
    assert done.returncode == 0, done.stderr[-3000:]
    baseline = _files(workdir / "baseline")
    filler = disk / "filler"
    if mounted:  # Leave 300 KB: a pruned checkpoint takes about 2.4 MB.
      free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
      filler.write_bytes(bytes(max(0, free - 300_000)))
    line = _error_line(_launch(workdir, data=data, shell=UMASK_022 if mounted else LIMIT_FILE_SIZE))
    reason = "No space left on device" if mounted else "File too large"
    assert re.fullmatch(rf"error: {re.escape(str(workdir))}/pruned/round_0/\d+: cannot write the checkpoint: "
                        rf"{reason}; free space and rerun the same command, which resumes", line), line
    assert not [p for p in workdir.rglob("*") if "tmp" in p.name]  # Nothing half-written...
    assert not [p for p in (workdir / "pruned" / "round_0").iterdir() if p.name[0].isdigit()]
    assert list(_results(workdir)["stages"]) == ["baseline"]  # ...and what was whole is still there.

    filler.unlink(missing_ok=True)  # Space freed: the same command again.
    resumed = _launch(workdir, data=data)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list(_results(workdir)["stages"]) == ["baseline", "pruned", "shared", "encoded"]
    assert _files(workdir / "baseline") == baseline
  finally:
    if mounted:
      subprocess.run(["umount", "-l", str(disk)], check=False)


class _ReportsWhenDeleted:
  """Calls `report` in __del__, whose error Python hands to sys.unraisablehook, as tensorstore's threads do theirs."""

  def __init__(self, report):
    self.report = report

  def __del__(self):
    self.report()


def test_while_a_checkpoint_is_written_only_asyncios_closed_loop_reports_are_dropped(monkeypatch):
  """The CI's stray tracebacks of a full disk: tensorstore's threads report a closed event loop while the save fails."""
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  closed = asyncio.new_event_loop()
  closed.close()
  with atomic._failed_write_reported_once():
    _ReportsWhenDeleted(lambda: closed.call_soon_threadsafe(print))
    _ReportsWhenDeleted(lambda: 1 / 0)
  _ReportsWhenDeleted(lambda: closed.call_soon_threadsafe(print))  # After the save: shown again.
  assert [type(r.exc_value) for r in reported] == [ZeroDivisionError, RuntimeError]
  with pytest.raises(KeyError), atomic._failed_write_reported_once():
    raise KeyError("not a write error: the filters come off")
  assert sys.unraisablehook == reported.append


# 2. Every field checked before any work, and settings that another one overrides.

_BAD_FIELDS = {
    "train.optimizer": ("--config.train.optimizer=adamw", "train.optimizer='adamw' is not valid; valid: sgd, adam"),
    "train.lr_schedule": ("--config.train.lr_schedule=cosin",
                          "train.lr_schedule='cosin' is not valid; valid: constant, step, cosine"),
    "prune.lr_schedule": ("--config.prune.lr_schedule=Cosine",
                          "prune.lr_schedule='Cosine' is not valid; valid: constant, step, cosine"),
    "share.lr_schedule": ("--config.share.lr_schedule=linear",
                          "share.lr_schedule='linear' is not valid; valid: constant, step, cosine"),
    "share.reduction": ("--config.share.reduction=avg", "share.reduction='avg' is not valid; valid: sum, mean"),
    "train.batch_size": ("--config.train.batch_size=0", "train.batch_size=0 is not valid; valid: an integer >= 1"),
    "share.k with share.bits": ("--config.share.k=1", "share.k=1 has no effect: share.bits=6 gives every shared "
                                "layer 2**6 clusters; valid: share.k with share.bits=0, or share.bits alone"),
}


@pytest.fixture(scope="module")
def bad_launches(tmp_path_factory):
  """Each bad field through launch.py, four at a time: case -> (result, workdir)."""
  root = tmp_path_factory.mktemp("bad")
  data = _write_npz(root / "mnist.npz")
  out = {}
  cases = list(_BAD_FIELDS.items())
  for start in range(0, len(cases), 4):  # 7 cases: 4, then 3.
    running = {}
    for case, (flag, _) in cases[start:start + 4]:
      workdir = root / case.replace(" ", "_")
      command = [sys.executable, str(ROOT / "launch.py"), f"--config={ROOT / 'configs' / 'lenet300.py'}",
                 f"--workdir={workdir}", f"--config.data.path={data}", flag]
      running[case] = (subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True), workdir)
    for case, (process, workdir) in running.items():
      stdout, stderr = process.communicate(timeout=600)
      out[case] = (subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), workdir)
  return out


@pytest.mark.parametrize("case", _BAD_FIELDS)
def test_a_bad_field_fails_in_one_line_before_any_work(bad_launches, case):
  result, workdir = bad_launches[case]
  assert _error_line(result) == f"error: {_BAD_FIELDS[case][1]}"
  assert not workdir.exists()


def _configs():
  return [p.stem for p in (ROOT / "configs").glob("*.py") if p.stem not in ("__init__", "base")]


@pytest.mark.parametrize("name", _configs())
def test_every_shipped_config_passes_validation(name):
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  validate.check(module.get_config())




@pytest.mark.parametrize("field, value, message", [
    ("train.momentum", 1.0, "train.momentum=1.0 is not valid; valid: a number >= 0 and < 1"),
    ("train.nesterov", 1, "train.nesterov=1 is not valid; valid: True or False"),
    ("train.weight_decay", -1e-4, "train.weight_decay=-0.0001"),
    ("train.lr_decay_epochs", (1, -2), "train.lr_decay_epochs=(1, -2) is not valid; valid: a tuple of an integer"),
    ("train.lr_decay_factor", 0.0, "train.lr_decay_factor=0.0"),
    ("train.steps_per_epoch", 0, "train.steps_per_epoch=0 is not valid; valid: an integer >= 1 or -1"),
    ("train.eval_batches", -2, "train.eval_batches=-2"),
    ("train.eval_batch_size", 0, "train.eval_batch_size=0"),
    ("train.learning_rate", -0.1, "train.learning_rate=-0.1"),
    ("train.epochs", -1, "train.epochs=-1 is not valid; valid: an integer >= 0"),
    ("prune.learning_rate", 0.0, "prune.learning_rate=0.0 is not valid; valid: a number > 0"),
    ("train.log_every_steps", 0, "train.log_every_steps=0"),
    ("train.checkpoint_every_epochs", 0, "train.checkpoint_every_epochs=0"),
    ("seed", -1, "seed=-1"),
    ("data.crop_padding", -1, "data.crop_padding=-1"),
    ("model.dropout", 1.0, "model.dropout=1.0"),
    ("model.width", 0.0, "model.width=0.0"),
    ("model.classifier_widths", (0,), "model.classifier_widths=(0,)"),
    ("sensitivity.tolerated_drop", -0.1, "sensitivity.tolerated_drop=-0.1"),
    ("sensitivity.eval_batches", 0, "sensitivity.eval_batches=0"),
    ("prune.epochs", -1, "prune.epochs=-1"),
    ("share.epochs", -1, "share.epochs=-1"),
    ("share.learning_rate", 0.0, "share.learning_rate=0.0"),
    ("share.max_iterations", 0, "share.max_iterations=0"),
    ("share.granularity", "row", "share.granularity='row' is not valid; valid: tensor, channel, group"),
    ("share.group_size", 0, "share.group_size=0 is not valid; valid: an integer >= 1"),
    ("share.layer_granularity", (("ip1.*", "row"),), "share.layer_granularity=(('ip1.*', 'row'),) is not valid; "
     "valid: ((regex, granularity), ...), granularity one of tensor, channel, group"),
    ("share.layer_granularity", ("channel",), "share.layer_granularity=('channel',) is not valid"),
    ("share.vector_size", 17, "share.vector_size=17 is not valid; valid: an integer 1..16"),
    ("codec.deflate", "yes", "codec.deflate='yes' is not valid; valid: True or False"),
    ("codec.codebook_dtype", "int8", "codec.codebook_dtype='int8' is not valid; valid: float32, float16"),
    ("distill.weight", 1.5, "distill.weight=1.5 is not valid; valid: a number >= 0 and <= 1"),
    ("distill.temperature", 0.0, "distill.temperature=0.0 is not valid; valid: a number > 0"),
    ("share.train_unshared", "yes", "share.train_unshared='yes'"),
    ("redo_changed", "yes", "redo_changed='yes'"),
])
def test_each_field_is_checked_with_its_value_and_what_is_valid(field, value, message):
  fields = lenet300.get_config().to_dict()  # A plain dict: a ConfigDict would refuse a value of another type.
  section, _, name = field.rpartition(".")
  (fields[section] if section else fields)[name] = value
  config = ml_collections.ConfigDict(fields)
  with pytest.raises(ConfigError, match=re.escape(message)):
    pipeline.check_config(config)


@pytest.mark.parametrize("changes, message", [
    ({"train.optimizer": "adam", "train.nesterov": True}, "train.nesterov=True has no effect: train.optimizer='adam'"),
    ({"prune.quality": 0.5}, "prune.quality=0.5 has no effect: prune.criterion='layer' keeps fractions"),
    ({"prune.layer_qualities": (("ip1.*", 0.5),)}, "prune.layer_qualities=(('ip1.*', 0.5),) has no effect"),
    ({"data.augment": False, "data.crop_padding": 4}, "data.flip=False has no effect: data.augment=False"),
    ({"data.augment": False}, "data.crop_padding=2 has no effect: data.augment=False"),
    ({"share.group_size": 4}, "share.group_size=4 has no effect: share.granularity='tensor' has no groups"),
    ({"share.granularity": "channel", "share.vector_size": 2},
     "share.vector_size=2 has no effect: share.granularity='channel' has scalar codebooks per channel"),
    ({"share.method": "dkm", "share.vector_size": 2}, "share.vector_size=2 has no effect: share.method='dkm'"),
    ({"share.method": "dkm", "share.layer_granularity": (("ip1.*", "channel"),)},
     "share.layer_granularity=(('ip1.*', 'channel'),) has no effect: share.method='dkm' clusters each layer as one"),
    ({"share.group_size": 4, "share.layer_granularity": (("ip1.*", "channel"),)},
     "share.group_size=4 has no effect: share.granularity='tensor' has no groups of channels, nor has any "
     "share.layer_granularity rule"),
    ({"share.init": "kmeans++", "share.vector_size": 2, "share.layer_granularity": (("ip1.*", "channel"),)},
     "share.layer_granularity=(('ip1.*', 'channel'),); valid: share.layer_granularity=() or every granularity"),
])
def test_a_setting_that_another_overrides_is_an_error_naming_both(changes, message):
  config = lenet300.get_config()
  for field, value in changes.items():
    section, _, name = field.rpartition(".")
    config[section][name] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    pipeline.check_config(config)


def test_share_k_is_fine_while_share_bits_is_0_and_the_default_k_while_bits_is_set():
  config = lenet300.get_config()
  validate.check(config)  # bits = 6 with the default k.
  config.share.bits, config.share.k = 0, 9
  validate.check(config)


def test_share_group_size_is_fine_while_a_layer_granularity_rule_asks_for_groups():
  config = lenet300.get_config()
  config.share.group_size, config.share.layer_granularity = 4, (("ip1.*", "channel"), ("ip2.*", "group"))
  plan = pipeline.check_config(config).sharing
  assert [plan.channels_per_codebook(f"ip{i}/kernel") for i in (1, 2, 3)] == [1, 4, 0]


# 6. The documented example file.

def test_formats_example_is_the_bytes_the_writer_gives(tmp_path):
  text = (ROOT / "docs" / "FORMAT.md").read_text().split("## Example")[1]
  size = int(re.search(r"(\d+) bytes", text).group(1))
  rows = text.split("```")[1].strip().splitlines()
  documented = bytes.fromhex(" ".join(re.match(r"((?:[0-9A-F]{2}\s+)+)", row + " ").group(1) for row in rows))
  codec.write(tmp_path / "b.dcz", {"b": np.zeros(2, np.float32)})
  assert documented == (tmp_path / "b.dcz").read_bytes() and size == len(documented) == 69
