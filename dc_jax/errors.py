"""Exceptions for user mistakes: launch.py prints their one-line message instead of a traceback."""

from __future__ import annotations

import errno
import os
import re


class UserError(ValueError):
  """Bad input from the user (config, file, data); the message names it and what is valid."""


class ConfigError(UserError):
  """A config field holds a value that cannot work."""


class DataError(UserError):
  """The dataset cannot be found or is malformed; the message says how to fix it."""


class WriteError(UserError):
  """A file or checkpoint could not be written (a full disk, a quota): the message names it and the OS's reason."""


# Failures that freeing space (or raising a quota) cures: a rerun of the same command then resumes.
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def os_reason(error: BaseException) -> tuple[int, str] | None:
  """(errno, the OS's words) for a failed write, or None if `error` is no OS error.

  Orbax reports a failed write of tensorstore's as a ValueError whose text ends
  in `[os_error_code='28']`: read from that too, and from the chained causes.
  """
  while error is not None:
    if isinstance(error, OSError) and error.errno is not None:
      return error.errno, os.strerror(error.errno)
    found = re.search(r"os_error_code='?(\d+)", str(error))
    if found:
      return int(found.group(1)), os.strerror(int(found.group(1)))
    error = error.__cause__ or error.__context__
  return None


def write_error(path: os.PathLike | str, what: str, error: BaseException) -> WriteError | None:
  """A one-line WriteError for a failed write of `path` (what to do included), or None if not an OS failure."""
  reason = os_reason(error)
  if reason is None:
    return None
  code, words = reason
  advice = ("free space and rerun the same command, which resumes" if code in FULL_DISK
            else "fix the folder (permissions, mount) and rerun the same command, which resumes")
  return WriteError(f"{path}: cannot write {what}: {words}; {advice}")
