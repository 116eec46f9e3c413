"""Device memory of a loaded model in the `codebook` form against `dense`, and what the codebook form costs in latency.

  python bench/inference_memory.py [--k 13] [--repeats 20] [--vgg_repeats 3]

Each model's kernels are pruned at random to the paper's kept fraction and
shared over k clusters (a synthetic tree shaped as the pipeline leaves it:
full-width VGG19 has 38.9M weights), written to a .dcz with `codec.write` and
read back with `codec.read`, then loaded with `inference.predictor` in each
form. Bytes are those of the arrays the predictor holds on the device
(weights, codebooks, biases, BatchNorm statistics). Latency: median per call
at batch 1 and 128, the forms run in turn (bench/common.py).
"""

import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).parents[1]))
from bench.common import interleaved_medians  # noqa: E402
from dc_jax import codec, inference  # noqa: E402
from dc_jax.models import VGG, LeNet5, LeNet300100  # noqa: E402
from dc_jax.share import SharedKernel, is_shared  # noqa: E402

_K = flags.DEFINE_integer("k", 13, "Clusters per layer.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per form and batch size (LeNets, VGG19 batch 1).")
_VGG_REPEATS = flags.DEFINE_integer("vgg_repeats", 3, "Timed calls per form of VGG19 at batch 128.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic trees and inputs.")

# (name, model, input shape, fraction of weights kept): the paper's Tables 2 and 4 (LeNets 8%), VGG19 ~6%.
MODELS = (
    ("LeNet-300-100", LeNet300100(), (28, 28, 1), 0.08),
    ("LeNet-5", LeNet5(), (28, 28, 1), 0.08),
    ("VGG19 (full width)", VGG(depth=19), (32, 32, 3), 0.06),
)


def pruned_shared(variables, k: int, kept: float, rng: np.random.Generator):
  """Every kernel pruned at random to `kept` and shared over k sorted centroids (He-scaled, so logits vary)."""

  def share(path, leaf):
    if path[-1].key != "kernel":
      return np.asarray(leaf)
    mask = rng.random(leaf.shape, np.float32) < kept
    scale = np.sqrt(2 / (kept * np.prod(leaf.shape[:-1])))
    codebook = np.sort(rng.normal(0.0, scale, k)).astype(np.float32)
    return SharedKernel(codebook, np.where(mask, rng.integers(0, k, leaf.shape, np.uint8), 0).astype(np.uint8), mask)

  return jax.tree_util.tree_map_with_path(share, variables)


def loaded(model, shape, kept: float, k: int, rng: np.random.Generator):
  """The tree codec.read gives back for a synthetic pruned and shared model, and the .dcz's size."""
  variables = jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *shape))))
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "model.dcz"
    codec.write(path, pruned_shared(variables, k, kept, rng))
    return codec.read(path), path.stat().st_size


def main(argv):
  del argv
  rng = np.random.default_rng(_SEED.value)
  k = _K.value
  for name, model, shape, kept in MODELS:
    variables, file_bytes = loaded(model, shape, kept, k, rng)
    weights = sum(leaf.mask.size for leaf in jax.tree.leaves(variables, is_leaf=is_shared)
                  if isinstance(leaf, SharedKernel))
    forms = {"dense float32": inference.predictor(model, variables, "dense"),
             "codebook uint8": inference.predictor(model, variables, "codebook", nibbles=False),
             "codebook 4-bit": inference.predictor(model, variables, "codebook", nibbles=True)}
    dense_bytes = forms["dense float32"].device_bytes
    print(f"\n{name}: {weights:,} weights, {kept:.0%} kept, k={k}; .dcz file {file_bytes:,} bytes")
    print(f"  {'form':<16}{'device bytes':>14}{'smaller':>9}{'batch 1 ms':>12}{'x dense':>9}{'batch 128 ms':>14}"
          f"{'x dense':>9}")
    latency = {}
    for batch in (1, 128):
      images = jnp.asarray(rng.standard_normal((batch, *shape), np.float32))
      logits = {form: np.asarray(predict(images)) for form, predict in forms.items()}
      for form, value in logits.items():  # The forms must agree before they are timed.
        np.testing.assert_allclose(value, logits["dense float32"], rtol=1e-4, atol=1e-4, err_msg=form)
      repeats = _VGG_REPEATS.value if batch > 1 and "VGG" in name else _REPEATS.value
      latency[batch] = interleaved_medians({form: (lambda p=p: p(images)) for form, p in forms.items()}, repeats)
    for form, predict in forms.items():
      one, many = latency[1][form], latency[128][form]
      print(f"  {form:<16}{predict.device_bytes:>14,}{dense_bytes / predict.device_bytes:>8.2f}x"
            f"{1e3 * one:>12.3f}{one / latency[1]['dense float32']:>8.2f}x{1e3 * many:>14.2f}"
            f"{many / latency[128]['dense float32']:>8.2f}x", flush=True)


if __name__ == "__main__":
  app.run(main)
