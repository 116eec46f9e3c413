"""VGG's conv implementations on this backend: XLA's convolution vs im2col patches (+ matmul), side by side.

  python bench/conv.py [--models narrow,full] [--impls xla,patches,auto] [--steps 3] [--batch 128] [--layers]

Times full jitted VGG19-BN train steps (SGD with momentum, random data) of
each implementation in turn, and with --layers one 3x3 conv (forward and
backward) at each of VGG19's feature-map sizes: what `conv_impl="auto"`'s
rule (patches up to vgg.PATCHES_MAX_PIXELS pixels, on CPU) is read from.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

sys.path.insert(0, str(Path(__file__).parents[1]))
from bench.common import interleaved_medians, print_table  # noqa: E402
from dc_jax import models, train  # noqa: E402
from dc_jax.models import vgg  # noqa: E402

_MODELS = flags.DEFINE_list("models", ["narrow", "full"], "narrow (width 1/8, classifier 256,256) and/or full.")
_IMPLS = flags.DEFINE_list("impls", ["xla", "patches", "auto"], "Contenders: model.conv_impl values.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed rounds after the compiling one.")
_BATCH = flags.DEFINE_integer("batch", 128, "Batch size.")
_LAYERS = flags.DEFINE_bool("layers", False, "Also time one conv per VGG19 feature-map size.")

VGG_MODELS = {
    "narrow": dict(depth=19, width=1 / 8, classifier_widths=(256, 256)),
    "full": dict(depth=19, width=1.0, classifier_widths=(4096, 4096)),
}
# (H = W, in, out) of VGG19's convs, one per block (the block's later, widest convs).
LAYERS = ((32, 64, 64), (16, 128, 128), (8, 256, 256), (4, 512, 512), (2, 512, 512))


def _xla_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def bench_layers(batch: int) -> None:
  rng = np.random.default_rng(0)
  for size, cin, cout in LAYERS:
    x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) * 0.05, jnp.float32)
    contenders = {}
    for name, conv in (("xla", _xla_conv), ("patches", vgg.patches_conv)):
      step = jax.jit(jax.grad(lambda x, k, conv=conv: jnp.sum(conv(x, k) ** 2), argnums=(0, 1)))
      contenders[name] = lambda step=step: step(x, kernel)
    error = float(jnp.max(jnp.abs(_xla_conv(x, kernel) - vgg.patches_conv(x, kernel))))
    print_table(f"conv 3x3 forward+backward on ({batch}, {size}, {size}, {cin}) -> {cout}: max |diff| {error:.1e}",
                interleaved_medians(contenders, _STEPS.value), "xla")


def bench_model(name: str, batch: int) -> None:
  rng = np.random.default_rng(0)
  data = {"image": rng.standard_normal((batch, 32, 32, 3), np.float32),
          "label": rng.integers(0, 10, batch).astype(np.int32)}
  contenders, states = {}, {}
  for impl in _IMPLS.value:
    model = models.VGG(**VGG_MODELS[name], conv_impl=impl)
    states[impl] = train.create_train_state(jax.random.key(0), model, (32, 32, 3), optax.sgd(0.01, 0.9))

    def step(impl=impl):  # Train from the same state every time: same work per call.
      return train.train_step(states[impl], data, jax.random.key(1))[1]["loss"]

    contenders[f"conv_impl={impl}"] = step
  losses = {impl: float(fn()) for impl, fn in contenders.items()}
  medians = interleaved_medians(contenders, _STEPS.value)
  params = train.count_params(states[_IMPLS.value[0]].params)
  print_table(f"VGG19-BN {name} ({params:,} params) train step, batch {batch}:", medians, next(iter(contenders)),
              unit="s", extra=[f"first-step losses {losses}"])


def main(argv):
  del argv
  print(f"backend={jax.default_backend()} devices={jax.device_count()} jax={jax.__version__}", flush=True)
  if _LAYERS.value:
    bench_layers(_BATCH.value)
  for name in _MODELS.value:
    bench_model(name, _BATCH.value)


if __name__ == "__main__":
  app.run(main)
