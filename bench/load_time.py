"""Load time: from a .dcz on disk to a ready `predict` on the device, against the dense weights from orbax.

  python bench/load_time.py [--repeats 5] [--file /tmp/dc_jax_vgg19_k13.dcz]

Full-width VGG19 (38.9M weights) as configs/vgg19_k13.py builds it, randomly
initialised, pruned to that config's kept fractions (one round of its
criterion) and shared at k = 13 with its k-means: the file the pipeline would
write, metadata included. It is built once and kept at --file. The same
model's dense float32 weights (the shared kernels materialised) are saved
as an orbax checkpoint. Then, taking turns, each is loaded into a ready
`predict` (arrays on the device, jitted function built; `dc_jax.load` for the
file, orbax's StandardCheckpointer.restore and `inference.predictor` for the
checkpoint), and the phases of `dc_jax.load(path, "dense")` are timed apart. "first call" is
the first prediction on one image, which compiles (the same for both).
Medians of --repeats; files are in the page cache after the first turn.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).parents[1]))
import dc_jax  # noqa: E402
from configs import vgg19_k13  # noqa: E402
from dc_jax import codec, experiment, huffman, inference, loading, models, share  # noqa: E402

_REPEATS = flags.DEFINE_integer("repeats", 5, "Loads of each kind; medians are reported.")
_FILE = flags.DEFINE_string("file", "/tmp/dc_jax_vgg19_k13.dcz", "Where the .dcz is built (once) and read.")
_FORMS = flags.DEFINE_list("forms", ["dense", "codebook"], "dc_jax.load forms to time.")

# CIFAR-10's training-set statistics, as data.load computes them: the metadata a CIFAR-10 run stores.
CIFAR10 = {"dataset": "cifar10", "input_shape": [32, 32, 3], "num_classes": 10,
           "mean": [0.49139968, 0.48215827, 0.44653124], "std": [0.24703233, 0.24348505, 0.26158768]}


def build(path: Path) -> dict:
  """VGG19 pruned to configs/vgg19_k13.py's fractions and shared at its k, written to `path`; the tree written."""
  config = vgg19_k13.get_config()
  model = models.create_model(num_classes=10, **config.model)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  plan = experiment.pruning_plan(config.prune)
  masks = plan.prune(variables["params"], None, plan.rounds - 1)
  shared, _ = share.quantize(variables["params"], masks, experiment.sharing_plan(config.share))
  tree = jax.tree.map(np.asarray, {"params": shared, "batch_stats": variables["batch_stats"]})
  if not path.exists():
    codec.write(path, tree, experiment.index_bits(config.codec), {"model": config.model.to_dict(), **CIFAR10})
  return tree


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO.
  path = Path(_FILE.value)
  tree = build(path)
  described = loading.metadata(path)
  model = loading.model_of(described)
  dense = jax.tree.map(np.asarray, {"params": share.materialize(tree["params"]), "batch_stats": tree["batch_stats"]})
  weights = sum(k.mask.size for k in jax.tree.leaves(tree, is_leaf=share.is_shared) if share.is_shared(k))
  image = np.zeros((1, 32, 32, 3), np.uint8)
  with tempfile.TemporaryDirectory() as tmp:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(tmp) / "dense", dense)
    checkpointer.wait_until_finished()
    orbax_bytes = sum(f.stat().st_size for f in (Path(tmp) / "dense").rglob("*") if f.is_file())

    def from_orbax():
      restored = checkpointer.restore(Path(tmp) / "dense")
      return inference.predictor(model, restored, "dense", preprocess=loading.normalizer(described))

    loaders = {"orbax dense float32": from_orbax}
    loaders |= {f"dc_jax.load {form}": (lambda form=form: dc_jax.load(path, form)) for form in _FORMS.value}
    ready, first = {name: [] for name in loaders}, {name: [] for name in loaders}
    phases = {"read_metadata": [], "codec.read(dense=True)": [], "of which Huffman decoding": [],
              "inference.predictor": []}
    decode, decoding = huffman.decode, [0.0]

    def timed_decode(*args):  # Huffman decoding's share of codec.read.
      start = time.perf_counter()
      result = decode(*args)
      decoding[0] += time.perf_counter() - start
      return result
    for _ in range(_REPEATS.value):
      for name, load in loaders.items():
        start = time.perf_counter()
        predict = load()
        jax.block_until_ready(predict.variables)
        ready[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        jax.block_until_ready(predict(image))
        first[name].append(time.perf_counter() - start)
      start = time.perf_counter()
      loading.metadata(path)
      phases["read_metadata"].append(time.perf_counter() - start)
      start, decoding[0], huffman.decode = time.perf_counter(), 0.0, timed_decode
      variables = codec.read(path, dense=True)
      phases["codec.read(dense=True)"].append(time.perf_counter() - start)
      phases["of which Huffman decoding"].append(decoding[0])
      huffman.decode = decode
      start = time.perf_counter()
      jax.block_until_ready(inference.predictor(model, variables, "dense").variables)
      phases["inference.predictor"].append(time.perf_counter() - start)
  print(f"VGG19 full width, {weights:,} weights, k=13: .dcz {path.stat().st_size:,} bytes, orbax checkpoint "
        f"{orbax_bytes:,} bytes; median of {_REPEATS.value} (s)")
  print(f"{'load':<24}{'to ready':>10}{'first call':>12}")
  for name in loaders:
    print(f"{name:<24}{statistics.median(ready[name]):>10.3f}{statistics.median(first[name]):>12.3f}")
  print("phases of dc_jax.load (dense): " + ", ".join(f"{name} {statistics.median(t):.3f}"
                                                     for name, t in phases.items()))


if __name__ == "__main__":
  app.run(main)
