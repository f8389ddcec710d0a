"""The one exception type for bad input data (files, lists, annotations)."""

from __future__ import annotations


class DataError(ValueError):
    """Input data is missing, corrupt or inconsistent; the message names the file and the value."""
