"""Exceptions with messages meant for users (the CLI prints them as one line, without a traceback)."""


class InputError(ValueError):
  """Bad input: the message names the file (or argument) and the problem."""


class MemoryBudgetError(MemoryError):
  """The run would not fit in the available memory; the message gives the estimate and what fits."""


def format_bytes(n: float) -> str:
  """Memory sizes in messages: '1.5 GiB' from 1 GiB up, else '37 MiB' (never '0.0 GiB')."""
  return f'{n / 2**30:.1f} GiB' if n >= 2**30 else f'{n / 2**20:.0f} MiB'
