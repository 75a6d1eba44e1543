"""Errors that are the user's to fix: main.py prints them as one line, no traceback."""


class UserError(Exception):
  """A mistake in the user's input, config or files; the message names it and the fix."""


class UserValueError(UserError, ValueError):
  """A UserError that is also a ValueError (for callers catching those)."""


class UserFileNotFoundError(UserError, FileNotFoundError):
  """A UserError that is also a FileNotFoundError."""
