"""Server-side errors and their one mapping to HTTP status codes and JSON error codes.

Owns the table the error middleware applies, so every handler just raises `engine.errors`.
Must not format responses itself or catch errors for handlers.
"""

from __future__ import annotations

import errno
from typing import Any

from engine.errors import (
    DicomvaultError,
    FormatError,
    IntegrityError,
    InvalidName,
    NotFound,
    ObjectExists,
    ObjectNotFound,
    PermissionDenied,
    RepositoryExists,
    RepositoryNotFound,
    StoreError,
    TransientError,
    UsageError,
)
from engine.ids import ChunkId

MAX_LISTED_MISSING = 100  # a refused commit names this many missing chunks, plus the count


class Unauthenticated(PermissionDenied):
    """Missing or unknown token."""


class BodyTooLarge(UsageError):
    """Request body larger than the server accepts."""


class SlowBody(UsageError):
    """The client sent its request body slower than the server's minimum rate."""


class StorageFull(StoreError):
    """The server's disk is full: the upload was refused and nothing was stored. The client
    keeps its data and retries; the provider has been alerted."""


class HashMismatch(IntegrityError):
    """Uploaded bytes do not match their name."""


class MissingChunks(IntegrityError):
    """The commit references chunks the repository does not hold."""

    def __init__(self, missing: list[ChunkId]) -> None:
        super().__init__(f"commit refused: {len(missing)} referenced chunks are missing")
        self.missing = missing

    def details(self) -> dict[str, Any]:
        return {
            "missing": [m.hex() for m in self.missing[:MAX_LISTED_MISSING]],
            "missing_count": len(self.missing),
        }


# Most specific first: the first matching class decides.
_TABLE: tuple[tuple[type[DicomvaultError], int, str], ...] = (
    (Unauthenticated, 401, "unauthenticated"),
    (PermissionDenied, 403, "forbidden"),
    (RepositoryNotFound, 404, "repo_not_found"),
    (ObjectNotFound, 404, "not_found"),
    (NotFound, 404, "not_found"),
    (InvalidName, 400, "invalid_name"),
    (BodyTooLarge, 413, "too_large"),
    (SlowBody, 408, "too_slow"),
    (UsageError, 400, "bad_request"),
    (MissingChunks, 409, "missing_chunks"),
    (ObjectExists, 409, "exists"),
    (RepositoryExists, 409, "repo_exists"),
    (HashMismatch, 422, "hash_mismatch"),
    (FormatError, 422, "malformed"),
    (IntegrityError, 422, "integrity"),
    (TransientError, 503, "unavailable"),
    (StorageFull, 507, "storage_full"),
    (StoreError, 500, "storage"),
)


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


def http_status(error: DicomvaultError) -> tuple[int, str]:
    for cls, status, code in _TABLE:
        if isinstance(error, cls):
            return status, code
    return 500, "internal"
