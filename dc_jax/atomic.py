"""Files that are whole or absent: every output a run leaves (results, the compressed model) goes through here."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from dc_jax import distributed
from dc_jax.errors import WriteError, write_error


def current_umask() -> int:
  """The process's umask (Linux shows it in /proc; elsewhere it is set and restored)."""
  try:
    for line in Path("/proc/self/status").read_text().splitlines():
      if line.startswith("Umask:"):
        return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def write_bytes(path: Path, content: bytes) -> None:
  """Writes to a temporary file beside `path`, fsyncs, then renames: `path` is whole or untouched.

  The file gets the mode any new file gets (0666 less the umask), not
  mkstemp's 0600. A failed write (a full disk) is a one-line WriteError.
  """
  try:
    _write_atomically(Path(path), content)
  except OSError as e:
    error = write_error(path, "the file", e)
    if error is None:
      raise
    raise error from e


def _write_atomically(path: Path, content: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      os.fchmod(f.fileno(), 0o666 & ~current_umask())
      f.write(content)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
  folder = os.open(path.parent, os.O_RDONLY)
  try:
    os.fsync(folder)  # The rename itself survives a crash.
  finally:
    os.close(folder)


class _OrbaxErrors(logging.Filter):
  """Drops orbax's error logs: each of its threads logs a failed write with a traceback, and the error is raised."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def _without_closed_loops(hook: Callable[[sys.UnraisableHookArgs], None]) -> Callable[[sys.UnraisableHookArgs], None]:
  """`hook` (a sys.unraisablehook) less asyncio's "Event loop is closed".

  Tensorstore's writer threads report there, with no object and so no header
  line, when a failed save has already closed the event loop they hand their
  results to; the trace has no frame of orbax's to tell it by, only asyncio's.
  """

  def filtered(unraisable: sys.UnraisableHookArgs) -> None:
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    error = unraisable.exc_value
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    if not (closed_loop and frames and f"{os.sep}asyncio{os.sep}" in frames[-1].filename):
      hook(unraisable)

  return filtered


def _quiet_orbax_threads() -> None:
  """Drops what orbax's other writer threads report of the same failed write while the run ends.

  They raise, or fail to hand their results to an event loop that is already
  closed, and the standard library logs that with a traceback each.
  """
  for name in ("concurrent.futures", "asyncio"):
    logging.getLogger(name).setLevel(logging.CRITICAL)
  previous = threading.excepthook

  def hook(args: threading.ExceptHookArgs) -> None:
    frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback else []
    if not any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames):
      previous(args)

  threading.excepthook = hook


@contextlib.contextmanager
def _failed_write_reported_once() -> Iterator[None]:
  """Orbax's and tensorstore's own reports of a failed write are dropped: the WriteError raised says it in one line.

  They come from its threads while the write fails, before the error reaches
  the caller, so the filters go on before the save; they come off after a
  save that ends any other way, and stay after a WriteError: the run ends.
  """
  quiet, logger, hook = _OrbaxErrors(), logging.getLogger("absl"), sys.unraisablehook
  logger.addFilter(quiet)
  sys.unraisablehook = _without_closed_loops(hook)
  failed_write = False
  try:
    yield
  except WriteError:
    failed_write = True
    _quiet_orbax_threads()
    raise
  finally:
    if not failed_write:
      logger.removeFilter(quiet)
      sys.unraisablehook = hook


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves `state` as checkpoint `step` and waits for it: a failed write stops the run at once, in one line.

  Orbax writes into `<step>.orbax-checkpoint-tmp` and renames it when whole; on
  a failed write that folder is removed, so the last whole checkpoint is the one
  a rerun resumes from. Waiting costs the write's time once an epoch.
  """
  folder = Path(manager.directory)
  with _failed_write_reported_once():
    try:
      manager.save(step, args=ocp.args.StandardSave(state))
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  (re-raised unless the OS refused a write)
      error = write_error(folder / str(step), "the checkpoint", e)
      if error is None:
        raise
      if distributed.is_primary():
        for partial in [*folder.glob(f"{step}.orbax-checkpoint-tmp*"), folder / str(step)]:
          shutil.rmtree(partial, ignore_errors=True)
      raise error from e
