"""Peak memory of clustering and coding the full VGG19-BN (38.9M parameters), each phase in a fresh process.

  python bench/memory.py [--config configs/vgg19.py] [--k 13,256]

Every phase runs in its own subprocess, so that one phase's peak (and what the
allocator keeps after it) cannot hide another's. A process builds the
randomly initialised VGG19, magnitude-pruned to the config's kept fractions
(pipeline.pruning_plan, last round), and measures from there: clustering
(share.quantize, at each --k), and writing the file (codec.write at the
config's k and index bits). Reading it back (codec.read) starts from a process
that has imported dc_jax and nothing more. The peak is VmHWM after resetting it
(/proc/self/clear_refs) just before the phase; the increment is the peak
minus VmRSS at that moment. MB = 10**6 bytes; "x params" is the increment
over the float32 bytes of all parameters.
"""

import dataclasses
import gc
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
from dc_jax import codec, experiment, models, prune, share, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "vgg19.py"), "Config of the model.")
_KS = flags.DEFINE_list("k", ["13", "256"], "Clusters per layer to time clustering at; the config's k is written.")
_PHASE = flags.DEFINE_string("phase", None, "Internal: the one phase a child process measures.")
_FILE = flags.DEFINE_string("file", None, "Internal: the compressed file the write phase makes and read reads.")

MB = 1e6


def memory_mb() -> dict[str, float]:
  """VmRSS (now) and VmHWM (the peak since start or the last reset), in MB."""
  found = re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
  return {name: int(kb) * 1024 / MB for name, kb in found}


def measure(fn: Callable[[], Any]) -> dict[str, float]:
  """RSS before `fn`, its peak RSS, the difference, and its wall seconds."""
  gc.collect()
  Path("/proc/self/clear_refs").write_text("5")  # Resets VmHWM to the current RSS.
  before = memory_mb()["VmRSS"]
  start = time.perf_counter()
  jax.block_until_ready(fn())
  seconds = time.perf_counter() - start
  peak = memory_mb()["VmHWM"]
  return {"before_mb": before, "peak_mb": peak, "increment_mb": peak - before, "seconds": seconds}


def pruned_variables() -> tuple[Any, Any, Any]:
  """(params, masks, batch_stats) of the config's model, initialised under jit, pruned as its last round would."""
  config = _CONFIG.value
  model = models.create_model(num_classes=10, **config.model)
  shape = (1, *models.INPUT_SHAPES[config.model.name])
  variables = jax.jit(model.init)(jax.random.key(config.seed), jnp.zeros(shape, jnp.float32))
  plan = experiment.pruning_plan(config.prune)
  masks = plan.prune(variables["params"], None, plan.rounds - 1)
  params = jax.block_until_ready(prune.apply_masks(variables["params"], masks))
  return params, masks, variables["batch_stats"]


def quantize(params: Any, masks: Any, k: int) -> Any:
  plan = experiment.sharing_plan(_CONFIG.value.share, _CONFIG.value.seed)
  return share.quantize(params, masks, dataclasses.replace(plan, k=k, bits=0, layer_bits=()))[0]


def run_phase(phase: str, path: str) -> dict[str, float]:
  """One phase in this process: `cluster k=K`, `write` or `read`."""
  if phase == "read":
    return measure(lambda: codec.read(path))
  params, masks, batch_stats = pruned_variables()
  floor = {"floor_mb": memory_mb()["VmRSS"], "params": train.count_params(params)}
  if phase.startswith("cluster k="):
    k = int(phase.removeprefix("cluster k="))
    return {**floor, **measure(lambda: quantize(params, masks, k))}
  if phase == "write":
    variables = {"params": quantize(params, masks, _CONFIG.value.share.k), "batch_stats": batch_stats}
    index_bits = experiment.index_bits(_CONFIG.value.codec)
    return {**floor, **measure(lambda: codec.write(path, variables, index_bits))}
  raise app.UsageError(f"--phase={phase!r}; valid: 'cluster k=K', write, read")


def child(phase: str, path: str) -> dict[str, float]:
  """run_phase in a fresh Python process, with the parent's flags."""
  result = subprocess.run([sys.executable, __file__, *sys.argv[1:], f"--phase={phase}", f"--file={path}"],
                          capture_output=True, text=True)
  if result.returncode != 0:
    raise RuntimeError(f"phase {phase!r} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _PHASE.value:
    print(json.dumps(run_phase(_PHASE.value, _FILE.value)))
    return
  print(f"backend={jax.default_backend()} jax={jax.__version__} model={_CONFIG.value.model.name} "
        f"depth={_CONFIG.value.model.depth} k={_CONFIG.value.share.k}", flush=True)
  with tempfile.TemporaryDirectory(prefix="bench_memory_") as folder:
    path = str(Path(folder) / "model.dcz")
    phases = [*(f"cluster k={k}" for k in _KS.value), "write", "read"]
    results = {phase: child(phase, path) for phase in phases}
    file_bytes = Path(path).stat().st_size
  first = results[phases[0]]
  param_mb = 4 * first["params"] / MB
  print(f"{first['params']:,} parameters = {param_mb:.1f} MB in float32; file {file_bytes:,} bytes")
  print(f"process after building the pruned params (floor): {first['floor_mb']:.0f} MB")
  print(f"\n{'phase':<16}{'RSS before':>12}{'peak':>10}{'increment':>11}{'x params':>10}{'seconds':>9}")
  for phase, r in results.items():
    print(f"{phase:<16}{r['before_mb']:>9.0f} MB{r['peak_mb']:>7.0f} MB{r['increment_mb']:>8.0f} MB"
          f"{r['increment_mb'] / param_mb:>9.2f}x{r['seconds']:>9.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
