"""The server's meaning of an `OSError` that escaped a handler.

The error classes only the wire distinguishes and their one table to HTTP status and JSON
codes are `engine.protocol.errors`, shared with every client; they are re-exported here for the
handlers. Must not format responses itself or catch errors for handlers.
"""

from __future__ import annotations

import errno

from engine.errors import StoreError, TransientError
from engine.protocol.errors import (
    BodyTooLarge,
    HashMismatch,
    MissingChunks,
    SlowBody,
    StorageFull,
    Unauthenticated,
    http_status,
)

__all__ = [
    "BodyTooLarge",
    "HashMismatch",
    "MissingChunks",
    "SlowBody",
    "StorageFull",
    "Unauthenticated",
    "from_os_error",
    "http_status",
]

_FULL = (errno.ENOSPC, errno.EDQUOT)
# Out of descriptors, memory or threads: the server's own state, which passes; never a 404.
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN)


def from_os_error(e: OSError, what: str) -> StoreError:
    """The server-side meaning of an `OSError` that escaped a handler."""
    if e.errno in _FULL:
        return StorageFull(f"server storage full: {what}")
    if e.errno in _EXHAUSTED:
        return TransientError(f"server out of resources ({e.strerror}): {what}")
    return StoreError(f"server storage error ({e.strerror or e}): {what}")
