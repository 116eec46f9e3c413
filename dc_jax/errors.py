"""Exceptions for user mistakes: launch.py prints their one-line message instead of a traceback."""


class UserError(ValueError):
  """Bad input from the user (config, file, data); the message names it and what is valid."""


class ConfigError(UserError):
  """A config field holds a value that cannot work."""


class DataError(UserError):
  """The dataset cannot be found or is malformed; the message says how to fix it."""
