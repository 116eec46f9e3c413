"""Files that are whole or absent: every output a run leaves (results, the compressed model) goes through here."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes(path: Path, content: bytes) -> None:
  """Writes to a temporary file beside `path`, fsyncs, then renames: `path` is whole or untouched."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
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
