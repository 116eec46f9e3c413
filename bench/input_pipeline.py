"""Steps per second with the host and the device input pipeline, side by side on real data.

  python bench/input_pipeline.py [--configs lenet300,vgg19_narrow] [--steps N] [--repeats R]

Each contender trains the config's model from the same initial state for the
same steps of epoch 0 (with the config's augmentation), after one untimed
(compiling) pass; rounds alternate between contenders so that load from other
processes hits them alike. `device xN` runs N steps per dispatch (lax.scan);
`step alone` repeats the step on one batch already on the device: no input at all.
With --fit_epochs, each pipeline also runs whole epochs through `train.fit`
(steps, the test-set evaluation and the checkpoint of each epoch), each into
a fresh folder, after one compiling epoch each.
Needs DC_JAX_DATA_DIR (or data.path) for the real datasets.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).parents[1]))
from configs import lenet300, vgg19_narrow  # noqa: E402
from dc_jax import data, device_data, models, train  # noqa: E402

CONFIGS = {"lenet300": lenet300, "vgg19_narrow": vgg19_narrow}


def contenders(name: str, steps: int, dispatch: tuple[int, ...]) -> dict:
  """{contender: a function that trains `steps` steps from the same initial state}."""
  config = CONFIGS[name].get_config()
  dataset = data.load(config.data.name, config.data.path, config.data.tfds_dir)
  model = models.create_model(num_classes=dataset.num_classes, **config.model)
  tx = train.create_optimizer(config.train, train.steps_in_epoch(dataset, config.train))
  initial = train.place(train.create_train_state(jax.random.key(0), model, dataset.image_shape, tx), train.data_mesh())
  augmentation = data.Augmentation.from_config(config.data)
  mesh, dropout_key = train.data_mesh(), jax.random.key(1)
  train_set = device_data.put(dataset, mesh)

  def run(epoch_fn, train_config):
    def go():
      state = initial
      for state, _, metrics in epoch_fn(state, dataset, train_config, 0, 0, steps, augmentation, mesh, dropout_key):
        pass
      return metrics["loss"]
    return go

  found = {"host": run(train.host_epoch, config.train)}
  fixed = train.shard_batch(next(data.train_batches(dataset, config.train.batch_size, 0, 0, augmentation)), mesh)

  def step_alone():  # The ceiling: the same steps on one batch already on the device, no input at all.
    state = initial
    for _ in range(steps):
      state, metrics = train.train_step(state, fixed, dropout_key, config.train.label_smoothing)
    return metrics["loss"]

  found["step alone"] = step_alone
  for n in dispatch:
    train_config = config.train.copy_and_resolve_references()
    train_config.steps_per_dispatch = n
    train_config.log_every_steps = steps  # Chunks end only where metrics are logged.
    found[f"device x{n}"] = run(lambda *a, **k: train.device_epoch(train_set, *a, **k), train_config)
  return config, found


def fit_epochs(name: str, repeats: int) -> None:
  """One whole epoch of `train.fit` per pipeline, interleaved, into fresh checkpoint folders."""
  config = CONFIGS[name].get_config()
  dataset = data.load(config.data.name, config.data.path, config.data.tfds_dir)
  model = models.create_model(num_classes=dataset.num_classes, **config.model)
  train_config = config.train.copy_and_resolve_references()
  train_config.epochs = 1
  tx = train.create_optimizer(train_config, train.steps_in_epoch(dataset, train_config))
  initial = train.create_train_state(jax.random.key(0), model, dataset.image_shape, tx)
  augmentation = data.Augmentation.from_config(config.data)
  times = {"host": [], "device": []}
  with tempfile.TemporaryDirectory() as scratch:
    for repeat in range(repeats + 1):  # The first round compiles.
      for pipeline in times:
        folder = Path(scratch) / f"{pipeline}{repeat}"
        start = time.perf_counter()
        train.fit(initial, dataset, train_config, 0, folder / "ckpt", folder / "metrics.jsonl", augmentation,
                  input_pipeline=pipeline)
        if repeat:
          times[pipeline].append(time.perf_counter() - start)
  host, device = (statistics.median(times[p]) for p in ("host", "device"))
  print(f"{name}: whole epochs through train.fit (steps, evaluation, checkpoint), median of {repeats}: "
        f"host {host:.2f} s, device {device:.2f} s, x{host / device:.2f}", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--configs", default="lenet300,vgg19_narrow")
  parser.add_argument("--steps", default="lenet300=400,vgg19_narrow=20")
  parser.add_argument("--dispatch", default="1,8,32")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--fit_epochs", default="", help="configs whose whole epochs to time too, e.g. lenet300")
  args = parser.parse_args()
  steps = dict(item.split("=") for item in args.steps.split(","))
  dispatch = tuple(int(n) for n in args.dispatch.split(","))
  print(f"backend={jax.default_backend()} devices={jax.device_count()} cpus={os.cpu_count()} "
        f"load={os.getloadavg()[0]:.2f}", flush=True)
  for name in args.configs.split(","):
    n = int(steps[name])
    config, runs = contenders(name, n, dispatch)
    for fn in runs.values():  # Compile.
      jax.block_until_ready(fn())
    times = {label: [] for label in runs}
    for _ in range(args.repeats):
      for label, fn in runs.items():
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times[label].append(time.perf_counter() - start)
    host = statistics.median(times["host"])
    print(f"{name}: batch {config.train.batch_size}, {n} steps, median of {args.repeats}", flush=True)
    for label, ts in times.items():
      median = statistics.median(ts)
      print(f"  {label:<12} {n / median:9.1f} steps/s  {n * config.train.batch_size / median:10.0f} images/s  "
            f"x{host / median:.2f} vs host", flush=True)
  for name in filter(None, args.fit_epochs.split(",")):
    fit_epochs(name, args.repeats)


if __name__ == "__main__":
  main()
