"""Multi-process training: 2 real processes on localhost (2 CPU devices each) match 1 process on 1 device.

Each worker joins through distributed.initialize (gloo collectives on CPU),
trains on the same real MNIST slice with train.fit, resumes it, trains a small
VGG with BatchNorm and dropout on a synthetic CIFAR-10, and saves what it got; the test trains the same in its own process and compares. A slow test
runs every stage through launch.py on 2 processes against 1.
"""

import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import base
from dc_jax import data, distributed, models, pipeline, train
from dc_jax.errors import ConfigError
from tests.conftest import synthetic_dataset

PROCESSES = 2
DEVICES_PER_PROCESS = 2
TIMEOUT_S = 120
ROOT = Path(__file__).parents[1]


def _config(**overrides):
  config = base.get_config()
  config.train.update(dict(epochs=1, batch_size=32, steps_per_epoch=4, eval_batch_size=50, eval_batches=2,
                           log_every_steps=1, lr_schedule="constant", learning_rate=0.05))
  config.distributed.update(overrides)
  return config


def _mnist_slice(data_dir: str) -> data.Dataset:
  """256 training and 100 test images of the real MNIST (statistics of the full training set)."""
  full = data.load("mnist", str(Path(data_dir) / "mnist.npz"))
  return dataclasses.replace(full, train_images=full.train_images[:256], train_labels=full.train_labels[:256],
                             test_images=full.test_images[:100], test_labels=full.test_labels[:100])


def _initial_state(dataset):
  tx = train.create_optimizer(_config().train, _config().train.steps_per_epoch)
  return train.create_train_state(jax.random.key(0), models.LeNet300100(), dataset.image_shape, tx)


def _fit(state, dataset, workdir, mesh=None, param_sharding="replicated"):
  config = _config().train
  config.param_sharding = param_sharding
  return train.fit(state, dataset, config, 0, workdir / "ckpt", workdir / "metrics.jsonl", None, mesh)


def _flat_params(state) -> dict[str, np.ndarray]:
  return {"/".join(keys): np.asarray(v) for keys, v in traverse_util.flatten_dict(state.params).items()}


def _flat_variables(state) -> dict[str, np.ndarray]:
  """Parameters and BatchNorm statistics, one flat dict."""
  variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  return {"/".join(keys): np.asarray(v) for keys, v in traverse_util.flatten_dict(variables).items()}


def _fit_vgg(workdir, mesh=None):
  """A small VGG11 with BatchNorm and dropout, 4 steps on a synthetic CIFAR-10: statistics of the global batch."""
  dataset = synthetic_dataset("cifar10", n_train=128, n_test=100)
  model = models.VGG(depth=11, width=0.0625, classifier_widths=(32,), dropout_rate=0.5)
  config = _config().train
  state = train.create_train_state(jax.random.key(0), model, dataset.image_shape,
                                   train.create_optimizer(config, config.steps_per_epoch))
  return train.fit(state, dataset, config, 0, workdir / "ckpt", workdir / "metrics.jsonl", None, mesh)


def worker(process_id: str, port: str, workdir: str) -> None:
  """One of the processes: joins, trains on the global mesh (replicated, then sharded), resumes, writes a record."""
  distributed.initialize(_config(enabled=True, coordinator_address=f"localhost:{port}",
                                 num_processes=PROCESSES, process_id=int(process_id)).distributed)
  assert jax.process_count() == PROCESSES and jax.device_count() == PROCESSES * DEVICES_PER_PROCESS
  workdir = Path(workdir)
  dataset = _mnist_slice(os.environ[data.DATA_DIR_ENV])
  initial = _initial_state(dataset)
  state = _fit(initial, dataset, workdir)
  resumed = _fit(initial, dataset, workdir)  # Restores the finished run's checkpoint on both processes.
  chex.assert_trees_all_equal(jax.device_get(resumed.params), jax.device_get(state.params))
  sharded = _fit(initial, dataset, workdir / "sharded", param_sharding="sharded")  # ip1 split across processes.
  chex.assert_trees_all_close(jax.device_get(sharded.params), jax.device_get(state.params), atol=1e-6, rtol=1e-5)
  test = train.evaluate(state, dataset, 50, 2)
  np.savez(workdir / f"params_{process_id}.npz", **_flat_params(state))
  np.savez(workdir / f"vgg_{process_id}.npz", **_flat_variables(_fit_vgg(workdir / "vgg")))
  results = pipeline.record(workdir, ("stages", "baseline"), {"test_accuracy": test["accuracy"]})
  (workdir / f"test_{process_id}.json").write_text(json.dumps({**test, "results": results}))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_processes(command: Callable[[int, int], list[str]], data_dir: Path, timeout: int = TIMEOUT_S) -> None:
  """`command(process_id, port)` in PROCESSES processes of DEVICES_PER_PROCESS CPU devices, which must succeed."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", data.DATA_DIR_ENV: str(data_dir),
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"}
  port = _free_port()
  processes = [subprocess.Popen(command(i, port), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(PROCESSES)]
  try:  # A process that waits for a dead peer would hang: both are killed at the timeout.
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
  finally:
    for p in processes:
      p.kill()
  for i, (p, output) in enumerate(zip(processes, outputs)):
    assert p.returncode == 0, f"process {i}:\n{output}"


def _run_workers(workdir: Path, data_dir: Path) -> None:
  code = "import sys; from tests.test_distributed import worker; worker(*sys.argv[1:])"
  _run_processes(lambda i, port: [sys.executable, "-c", code, str(i), str(port), str(workdir)], data_dir)


def test_two_processes_train_and_evaluate_as_one_process_on_one_device_lenet_and_vgg_with_batchnorm(shared_data_dir, tmp_path):
  _run_workers(tmp_path / "multi", shared_data_dir)
  dataset = _mnist_slice(shared_data_dir)
  (tmp_path / "single").mkdir()
  state = _fit(_initial_state(dataset), dataset, tmp_path / "single", train.data_mesh(jax.devices()[:1]))
  expected = _flat_params(state)
  for i in range(PROCESSES):  # Every process ends with the same parameters: the single process's.
    params = dict(np.load(tmp_path / "multi" / f"params_{i}.npz"))
    chex.assert_trees_all_close(params, expected, atol=1e-6, rtol=1e-5)
  single = train.evaluate(state, dataset, 50, 2, train.data_mesh(jax.devices()[:1]))
  for i in range(PROCESSES):
    test = json.loads((tmp_path / "multi" / f"test_{i}.json").read_text())
    assert test["examples"] == single["examples"] == 100
    np.testing.assert_allclose(test["accuracy"], single["accuracy"])
    np.testing.assert_allclose(test["loss"], single["loss"], rtol=1e-5)
    assert test["results"]["stages"]["baseline"]["test_accuracy"] == test["accuracy"]
  # Metrics were appended once (by process 0), with the single process's losses.
  lines = [json.loads(line) for line in (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()]
  single_lines = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines] == [line["step"] for line in single_lines] == [1, 2, 3, 4, 4]
  np.testing.assert_allclose([line["loss"] for line in lines], [line["loss"] for line in single_lines], rtol=1e-5)
  # The VGG: the same weights and BatchNorm statistics (mean and variance over the global batch).
  vgg = _flat_variables(_fit_vgg(tmp_path / "single" / "vgg", train.data_mesh(jax.devices()[:1])))
  assert any(name.startswith("batch_stats/") for name in vgg)
  for i in range(PROCESSES):
    chex.assert_trees_all_close(dict(np.load(tmp_path / "multi" / f"vgg_{i}.npz")), vgg, atol=1e-5, rtol=1e-5)


def test_the_local_rows_of_one_process_are_all_rows():
  sharding = jax.sharding.NamedSharding(train.data_mesh(), jax.sharding.PartitionSpec(train.BATCH_AXIS))
  assert train.process_rows(6, sharding).all()


@pytest.mark.parametrize("overrides, message", [
    (dict(num_processes=2), "distributed.coordinator_address, distributed.process_id not set"),
    (dict(coordinator_address="localhost", num_processes=2, process_id=0), "valid: host:port"),
    (dict(coordinator_address="localhost:1234", num_processes=2, process_id=2), "valid: 0..1"),
    (dict(coordinator_address="localhost:1234", num_processes=-1, process_id=0), "num_processes=-1"),
])
def test_a_partial_or_bad_distributed_config_is_a_config_error(overrides, message):
  with pytest.raises(ConfigError, match=message):
    distributed.initialize(_config(enabled=True, **overrides).distributed)


def test_a_disabled_config_starts_nothing_and_an_auto_detected_one_leaves_all_three_to_jax(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  distributed.initialize(_config(num_processes=2).distributed)  # Not enabled: the half-set fields are ignored.
  assert calls == []
  distributed.initialize(_config(enabled=True).distributed)  # Cloud TPU, SLURM: jax finds the rest.
  assert calls == [dict(coordinator_address=None, num_processes=None, process_id=None, local_device_ids=None)]


def _launch_args(workdir: Path) -> list[str]:
  return [str(ROOT / "launch.py"), "--config=configs/lenet300.py", f"--workdir={workdir}",
          "--config.train.epochs=1", "--config.train.steps_per_epoch=5", "--config.train.eval_batches=1",
          "--config.train.batch_size=32", "--config.prune.rounds=1", "--config.prune.epochs=1",
          "--config.share.epochs=1", "--config.share.sweep=(4,)"]


@pytest.mark.slow
def test_launch_on_two_processes_runs_every_stage_as_one_process_does(shared_data_dir, tmp_path):
  def command(i, port):
    return [sys.executable, *_launch_args(tmp_path / "multi"), "--config.distributed.enabled=True",
            f"--config.distributed.coordinator_address=localhost:{port}",
            f"--config.distributed.num_processes={PROCESSES}", f"--config.distributed.process_id={i}"]

  _run_processes(command, shared_data_dir, timeout=300)
  single = subprocess.run([sys.executable, *_launch_args(tmp_path / "single")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, data.DATA_DIR_ENV: str(shared_data_dir)})
  assert single.returncode == 0, single.stderr
  multi, one = (json.loads((tmp_path / run / pipeline.RESULTS_FILE).read_text()) for run in ("multi", "single"))
  assert list(multi["stages"]) == list(one["stages"])
  for stage in one["stages"]:
    np.testing.assert_allclose(multi["stages"][stage]["test_accuracy"], one["stages"][stage]["test_accuracy"],
                               atol=0.002)
  assert multi["stages"]["encoded"]["file_bytes"] == (tmp_path / "multi" / pipeline.MODEL_FILE).stat().st_size
  np.testing.assert_allclose(multi["sweep"]["k=4"]["file_bytes"], one["sweep"]["k=4"]["file_bytes"], rtol=0.01)
  assert (tmp_path / "multi" / "report.md").exists()
