"""Exceptions with messages meant for users (the CLI prints them as one line, without a traceback)."""


class InputError(ValueError):
  """Bad input: the message names the file (or argument) and the problem."""


class MemoryBudgetError(MemoryError):
  """The run would not fit in the available memory; the message gives the estimate and what fits."""
