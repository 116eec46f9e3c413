"""Runs a dc_jax experiment.

  python launch.py --config configs/vgg19_k13.py [--workdir DIR] [--config.FIELD=VALUE ...]
  python launch.py --evaluate runs/lenet300/model.dcz                       (the file names its model and data)
  python launch.py --config configs/lenet300.py --evaluate runs/lenet300/model.dcz   (the config's model and data)
  python launch.py --config configs/lenet300.py --config.distributed.enabled=True [...]  (on every host)
"""

import logging as std_logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from dc_jax import distributed, pipeline
from dc_jax.errors import FULL_DISK, UserError, write_error

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results; default: runs/<config name>.")
_EVALUATE = flags.DEFINE_string("evaluate", None, "A compressed model file (model.dcz) to evaluate on its test "
                                "set, instead of running the stages: the model and data its metadata names, or "
                                "the config's when --config is given.")
ROOT = Path(__file__).absolute().parent


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a misspelt --config.FIELD ends in one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    reason = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    sys.exit(f"error: not a config field: {reason}")
  except flags.Error as e:
    sys.exit(f"error: {e}")


def own_info_only(record: std_logging.LogRecord) -> bool:
  """dc_jax's progress at INFO, other libraries' warnings only: orbax logs every checkpoint at INFO.

  --verbosity=0 shows everything.
  """
  return record.levelno >= std_logging.WARNING or Path(record.pathname).parent.name in ("dc_jax", ROOT.name)


def end_with(message: str) -> NoReturn:
  """Exits with status 1 and `message` as the last line on stderr: nothing is printed after it.

  After a failed checkpoint write, orbax's other writer threads are still
  failing; on a busy machine they outlive the main thread and print
  tracebacks while the interpreter shuts down, after the line that says why.
  """
  stderr, sys.stderr = sys.stderr, open(os.devnull, "w")
  stderr.write(f"error: {message}\n")
  stderr.flush()
  raise SystemExit(1)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(own_info_only)
  config = _CONFIG.value
  if config is None and not _EVALUATE.value:
    sys.exit("error: --config is required (only --evaluate FILE.dcz runs without one)")
  workdir = _WORKDIR.value or "."
  if config is not None and not _WORKDIR.value:
    workdir = str(Path("runs") / Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem)
  try:
    if config is not None:
      distributed.initialize(config.distributed)
    if _EVALUATE.value:
      test = pipeline.evaluate_file(config, _EVALUATE.value)
      print(f"{_EVALUATE.value}: test accuracy {test['accuracy']:.4f} on {test['examples']} examples")
      return
    results = pipeline.run(config, workdir, command=" ".join(["python", *sys.argv]))
  except UserError as e:
    end_with(str(e))
  except OSError as e:
    if e.errno not in FULL_DISK:
      raise
    end_with(str(write_error(e.filename or workdir, "a file", e)))  # Metrics, figures: any file of the run.
  for stage, entry in results["stages"].items():
    print(f"{stage}: test accuracy {entry['test_accuracy']:.4f}")
  print(f"results: {Path(workdir) / pipeline.RESULTS_FILE}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
