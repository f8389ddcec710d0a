"""The one exception type for bad input data (files, lists, annotations)."""

from __future__ import annotations

from hdmnet.errors import HdmnetError


class DataError(HdmnetError, ValueError):
    """Input data is missing, corrupt or inconsistent; the message names the file and the value."""
