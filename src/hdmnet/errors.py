"""The project's one error base: problems the user can fix.

Every error that means "your input, files or settings need attention" derives from
:class:`HdmnetError` (some also from the built-in type they used to be, so that callers catching
``ValueError`` or ``OSError`` keep working). The CLI prints these as one line naming the file, key
or value and what to do; every other exception is a bug and keeps its traceback, in a terminal
as in a SLURM log.
"""


class HdmnetError(Exception):
    """A problem the user can fix; the message names the file, key or value and what to do."""


class StageError(HdmnetError, RuntimeError):
    """A stage cannot run: a missing input, an incompatible checkpoint... (message says why)."""


class MissingFileError(HdmnetError, FileNotFoundError):
    """A file a stage needs does not exist (the message says which, and what makes it)."""
