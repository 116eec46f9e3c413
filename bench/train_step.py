"""Times the jitted train step of a config's model on random data: step time and images/s.

  python bench/train_step.py --config configs/vgg19.py [--steps 5] [--config.FIELD=VALUE ...]

Compile time is reported apart; the median of `--steps` timed steps is the figure.
"""

import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).parents[1]))
from dc_jax import models, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after the first (compiling) one.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  config = _CONFIG.value
  image_shape = models.INPUT_SHAPES[config.model.name]
  model = models.create_model(num_classes=10, **config.model)
  tx = train.create_optimizer(config.train, steps_per_epoch=100)
  state = train.create_train_state(jax.random.key(0), model, image_shape, tx)
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((config.train.batch_size, *image_shape), np.float32),
           "label": rng.integers(0, 10, config.train.batch_size).astype(np.int32)}
  key = jax.random.key(1)

  start = time.perf_counter()
  state, metrics = train.train_step(state, batch, key)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = train.train_step(state, batch, key)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step = statistics.median(times)
  print(f"{config.model.name} params={train.count_params(state.params):,} batch={config.train.batch_size} "
        f"backend={jax.default_backend()} devices={jax.device_count()}")
  print(f"first step (compile + run): {compile_s:.1f} s; median step over {len(times)}: {step:.3f} s; "
        f"{config.train.batch_size / step:.1f} images/s")


if __name__ == "__main__":
  app.run(main)
