"""Configs and the command line: overrides, locked fields, and a real run of launch.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from dc_jax import codec, validate

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.py"))


def _parse(*args):
  argv = ["launch.py", *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem not in ("__init__", "base")], ids=lambda p: p.stem)
def test_every_config_loads_locked(path):
  config = _parse(f"--config={path}")
  with pytest.raises(AttributeError):
    config.train.epoch = 3  # Misspelt: locked configs refuse new fields.


def test_command_line_overrides_apply():
  config = _parse(f"--config={ROOT / 'configs/vgg19_k13.py'}", "--config.train.epochs=3",
                  "--config.train.learning_rate=0.1", "--config.data.path=/data/c.npz",
                  "--config.train.lr_decay_epochs=(1,2)", "--config.seed=7")
  assert (config.train.epochs, config.train.learning_rate, config.data.path) == (3, 0.1, "/data/c.npz")
  assert tuple(config.train.lr_decay_epochs) == (1, 2) and config.seed == 7
  assert config.share.k == 13 and config.model.name == "vgg"


def test_k4_on_the_narrow_schedule_shares_per_channel_without_a_sweep():
  config = _parse(f"--config={ROOT / 'configs/vgg19_k4.py'}:fast_narrow")
  validate.check(config)
  assert (config.share.k, config.share.granularity, tuple(config.share.sweep)) == (4, "channel", ())
  assert config.model.width == 1 / 8 and (config.share.learning_rate, config.share.epochs) == (0.005, 8)
  wide = _parse(f"--config={ROOT / 'configs/vgg19_k4.py'}:fast")  # Full width keeps the original's codebooks.
  assert (wide.share.granularity, tuple(wide.share.sweep)) == ("tensor", (4, 9, 13, 35))


def _launch(*args, env_data_dir, cwd):
  env = {**os.environ, "DC_JAX_DATA_DIR": str(env_data_dir)}
  return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


def test_launch_runs_every_stage_on_real_cifar10_and_evaluates_the_file(shared_data_dir, tmp_path):
  workdir = tmp_path / "run"
  result = _launch(f"--config={ROOT / 'configs/tiny.py'}", f"--workdir={workdir}",
                   "--config.train.epochs=1", env_data_dir=shared_data_dir, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  stages = json.loads((workdir / "results.json").read_text())["stages"]
  assert list(stages) == ["baseline", "pruned", "shared", "encoded"]
  assert stages["baseline"]["steps"] == 3 and stages["baseline"]["test_examples"] == 64
  assert 0.0 <= stages["baseline"]["test_accuracy"] <= 1.0
  assert stages["baseline"]["params"] > 0
  assert (workdir / "baseline" / "3").is_dir()
  assert stages["encoded"]["file_bytes"] == (workdir / "model.dcz").stat().st_size
  assert stages["encoded"]["test_accuracy"] == stages["shared"]["test_accuracy"]
  # Not a terminal: the summary first, then the measured step time and the schedule's projected time.
  assert "stages: baseline (3 steps), pruned (" in result.stderr and f"workdir: {workdir}" in result.stderr
  assert " s per step of batch " in result.stderr and "the whole schedule (" in result.stderr

  evaluated = _launch(f"--config={ROOT / 'configs/tiny.py'}", f"--evaluate={workdir / 'model.dcz'}",
                      env_data_dir=shared_data_dir, cwd=tmp_path)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert f"test accuracy {stages['encoded']['test_accuracy']:.4f} on 64 examples" in evaluated.stdout
  assert_evaluates_alone_as_with_its_config(workdir / "model.dcz", "tiny", shared_data_dir, tmp_path)


def test_launch_reports_a_user_error_in_one_line_without_traceback(shared_data_dir, tmp_path):
  result = _launch(f"--config={ROOT / 'configs/tiny.py'}", f"--workdir={tmp_path / 'run'}",
                   "--config.data.name=mnist", env_data_dir=shared_data_dir, cwd=tmp_path)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert "error: model.name='vgg' takes (32, 32, 3) images; data.name='mnist' has (28, 28, 1)" in result.stderr
  assert not (tmp_path / "run" / "results.json").exists()


def test_launch_evaluate_names_a_missing_file_in_one_line(shared_data_dir, tmp_path):
  result = _launch(f"--config={ROOT / 'configs/lenet300.py'}", f"--evaluate={tmp_path / 'none.dcz'}",
                   env_data_dir=shared_data_dir, cwd=tmp_path)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path / 'none.dcz'}: cannot read the compressed model: No such file or directory")


def test_launch_rejects_a_misspelt_override_in_one_line(tmp_path):
  result = _launch(f"--config={ROOT / 'configs/lenet300.py'}", "--config.train.epoch=3",
                   env_data_dir=tmp_path, cwd=tmp_path)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "error: not a config field: 'epoch' Did you mean \"epochs\" instead of \"epoch\"?")


SMOKE = ("--config.train.epochs=1", "--config.train.steps_per_epoch=3", "--config.train.eval_batches=1",
         "--config.prune.rounds=1", "--config.prune.epochs=1", "--config.share.epochs=1", "--config.share.sweep=()")


@pytest.mark.parametrize("config", ["lenet300", "lenet5"])  # configs/tiny.py's file: the every-stage test above.
def test_evaluate_needs_no_config_for_a_file_the_pipeline_wrote(shared_data_dir, tmp_path, config):
  workdir = tmp_path / "run"
  result = _launch(f"--config={ROOT / f'configs/{config}.py'}", f"--workdir={workdir}", *SMOKE,
                   env_data_dir=shared_data_dir, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_evaluates_alone_as_with_its_config(workdir / "model.dcz", config, shared_data_dir, tmp_path)


def assert_evaluates_alone_as_with_its_config(model, config, data_dir, cwd):
  """Without a config, the file's metadata gives model, data and statistics: the whole test set, as with one."""
  alone = _launch(f"--evaluate={model}", env_data_dir=data_dir, cwd=cwd)
  assert alone.returncode == 0, alone.stderr[-3000:]
  with_config = _launch(f"--config={ROOT / f'configs/{config}.py'}", "--config.train.eval_batches=-1",
                        f"--evaluate={model}", env_data_dir=data_dir, cwd=cwd)
  assert with_config.returncode == 0, with_config.stderr[-3000:]
  assert alone.stdout == with_config.stdout and " on 10000 examples" in alone.stdout


def test_evaluate_without_config_names_a_file_without_metadata_in_one_line(tmp_path):
  path = tmp_path / "old.dcz"
  codec.write(path, {"params": {"w": np.zeros(3, np.float32)}})
  result = _launch(f"--evaluate={path}", env_data_dir=tmp_path, cwd=tmp_path)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: {path} holds no metadata (a file of format "
                                                           "version 1 or 2")


def test_a_run_without_config_or_evaluate_fails_in_one_line(tmp_path):
  result = _launch(env_data_dir=tmp_path, cwd=tmp_path)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --config is required (only --evaluate FILE.dcz runs without one)")
