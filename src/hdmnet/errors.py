"""Errors a stage raises for problems the user can fix (the CLI prints them as one line)."""


class StageError(RuntimeError):
    """A stage cannot run: a missing input, an incompatible checkpoint... (message says why)."""
