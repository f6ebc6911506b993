"""The one exception type siftrank raises for bad input.

Everything a user can get wrong (a missing file, a malformed line, a model that does not match an
index) raises :class:`SiftrankError` with a message that says what and where. The CLI and the API
turn it into a one-line error and a non-zero exit (or a 4xx), never a traceback.
"""

from __future__ import annotations


class SiftrankError(Exception):
    """Bad input or a broken contract, explained for the user; nothing was written."""
