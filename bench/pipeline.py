"""The whole pipeline of one config, from scratch: wall time per stage, its share of the total, its accuracy.

  python bench/pipeline.py                     # LeNet-300-100 on MNIST, every stage and the sweep
  python bench/pipeline.py --config.train.epochs=1 --config.share.sweep=() [--workdir DIR]

Stage times are the `seconds` that pipeline.run records in results.json; the
sweep's own k reuses the shared and encoded stages, so only the other k get a
row. "other" is the rest of the total: loading the data, checking the config,
sensitivity, figures and report.md. Without --workdir the run goes to a fresh
temporary folder, deleted afterwards (a workdir that holds checkpoints would
time their restoring, not the training).
"""

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
from absl import app, flags, logging
from ml_collections import config_flags

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
from dc_jax import pipeline  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "lenet300.py"), "Config file to run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run writes; default: a temporary folder, deleted after.")


def timed_run(workdir: str) -> tuple[dict[str, Any], float]:
  """results.json's contents, and the wall seconds of the whole pipeline.run."""
  start = time.perf_counter()
  results = pipeline.run(_CONFIG.value, workdir, command=" ".join(["python", *sys.argv]))
  return results, time.perf_counter() - start


def rows(results: dict[str, Any]) -> list[tuple[str, float, float | None]]:
  """(name, seconds, test accuracy) per stage, then per sweep point that was computed on its own."""
  found = [(name, entry["seconds"], entry["test_accuracy"]) for name, entry in results["stages"].items()]
  found += [(f"sweep {name}", entry["seconds"], entry["test_accuracy"])
            for name, entry in results.get("sweep", {}).items() if entry["file"] != pipeline.MODEL_FILE]
  return found


def print_table(results: dict[str, Any], total: float) -> None:
  timed = rows(results)
  timed.append(("other", total - sum(seconds for _, seconds, _ in timed), None))
  print(f"\n{'stage':<14}{'seconds':>10}{'share':>9}{'test accuracy':>16}")
  for name, seconds, accuracy in timed:
    shown = "" if accuracy is None else f"{accuracy:.4f}"
    print(f"{name:<14}{seconds:>10.1f}{seconds / total:>9.1%}{shown:>16}".rstrip())
  print(f"{'total':<14}{total:>10.1f}{1:>9.1%}   ({total / 60:.1f} min, data loading and report included)",
        flush=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint at INFO.
  print(f"backend={jax.default_backend()} devices={jax.device_count()} jax={jax.__version__}", flush=True)
  if _WORKDIR.value:
    results, total = timed_run(_WORKDIR.value)
  else:
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as workdir:
      results, total = timed_run(workdir)
  print_table(results, total)


if __name__ == "__main__":
  app.run(main)
