"""Error type raised by :mod:`crossformers.data` for bad input."""

from __future__ import annotations

import re

from ..errors import CrossformersError

__all__ = ["DataError"]

# torch re-raises an exception from a DataLoader worker as ``type(exc)(text)`` where text is
# "Caught DataError in DataLoader worker process N.\nOriginal Traceback ...\n<module>.DataError: <message>".
_WORKER_PREFIX = re.compile(r"^Caught \w*DataError in DataLoader worker")
_LAST_LINE = re.compile(r"^[\w.]*DataError: ", re.MULTILINE)


class DataError(CrossformersError, ValueError):
    """Bad data, path or argument given to :mod:`crossformers.data`.

    The message always names the problem and how to fix it, so command-line entry points can
    print ``str(err)`` instead of a stack trace. When torch re-raises a DataError from a
    DataLoader worker, the message is cut back to the original one and the worker's traceback
    is kept in :attr:`worker_traceback` (``None`` otherwise).
    """

    def __init__(self, message: object = "", *args: object) -> None:
        worker_traceback: str | None = None
        if isinstance(message, str) and _WORKER_PREFIX.match(message):
            matches = list(_LAST_LINE.finditer(message))
            if matches:
                worker_traceback = message
                message = message[matches[-1].end() :].rstrip("\n")
        super().__init__(message, *args)
        self.worker_traceback = worker_traceback
