"""The one table between errors and the wire: exception class ↔ HTTP status and JSON code.

The server's error middleware encodes with `http_status`; every client decodes with
`error_for`. The classes here are the ones only the wire distinguishes (the server raises them,
the client receives them); the rest are `engine.errors`. Two rules make the decoding more than a
lookup: several classes share a (status, code) and decode as the first of them (`NotFound` as
`ObjectNotFound`), and a status the server uses for its own failure (408, 5xx) always decodes
as a `TransientError`, so `StoreError`'s 500 is retried by the client.
"""

from __future__ import annotations

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


class NotPrimary(PermissionDenied):
    """This site does not take the practice's writes: it holds a replica, or another site was
    promoted primary (docs/design.md §17). Another site may; a client with several tries it."""


class BodyTooLarge(UsageError):
    """Request body larger than the server accepts."""


class SlowBody(TransientError):
    """The client sent its request body slower than the server's minimum rate: a slow link,
    worth another try."""


class StorageFull(TransientError):
    """The server's disk is full: the upload was refused and nothing was stored. The client
    keeps its data and retries; the provider has been alerted."""


class HashMismatch(IntegrityError):
    """Uploaded bytes do not match their name."""


class MissingChunks(IntegrityError):
    """The commit references chunks the repository does not hold."""

    def __init__(self, missing: list[ChunkId], message: str = "") -> None:
        super().__init__(message or f"commit refused: {len(missing)} referenced chunks are missing")
        self.missing = missing  # empty on the client: the answer lists only the first ids

    def details(self) -> dict[str, Any]:
        return {
            "missing": [m.hex() for m in self.missing[:MAX_LISTED_MISSING]],
            "missing_count": len(self.missing),
        }


class FullRefsRequired(IntegrityError):
    """A commit listing only its changed chunks came from a client whose index predates a
    prune (or while one runs): the client commits again listing every chunk it references
    (docs/design.md §14)."""


class PruneLocked(ObjectExists):
    """Another prune holds the repository's prune lock: refused, never two deleters at once."""


# Most specific first: encoding takes the first row the error is an instance of; decoding the
# first row with the status and code.
TABLE: tuple[tuple[type[DicomvaultError], int, str], ...] = (
    (Unauthenticated, 401, "unauthenticated"),
    (NotPrimary, 403, "not_primary"),
    (PermissionDenied, 403, "forbidden"),
    (RepositoryNotFound, 404, "repo_not_found"),
    (ObjectNotFound, 404, "not_found"),
    (NotFound, 404, "not_found"),
    (InvalidName, 400, "invalid_name"),
    (BodyTooLarge, 413, "too_large"),
    (SlowBody, 408, "too_slow"),
    (UsageError, 400, "bad_request"),
    (MissingChunks, 409, "missing_chunks"),
    (FullRefsRequired, 409, "full_refs_required"),
    (PruneLocked, 409, "prune_locked"),
    (ObjectExists, 409, "exists"),
    (RepositoryExists, 409, "repo_exists"),
    (HashMismatch, 422, "hash_mismatch"),
    (FormatError, 422, "malformed"),
    (IntegrityError, 422, "integrity"),
    (StorageFull, 507, "storage_full"),
    (TransientError, 503, "unavailable"),
    (StoreError, 500, "storage"),
)
INTERNAL = (500, "internal")  # anything else the server raised
# A code this table does not know (an older or newer server, a proxy): the status decides.
_BY_STATUS: dict[int, type[DicomvaultError]] = {
    401: PermissionDenied,
    403: PermissionDenied,
    404: ObjectNotFound,
    409: IntegrityError,
    422: IntegrityError,
    400: UsageError,
    413: BodyTooLarge,
    408: SlowBody,
    507: StorageFull,
}


def http_status(error: DicomvaultError) -> tuple[int, str]:
    """The (status, code) the server answers `error` with."""
    for cls, status, code in TABLE:
        if isinstance(error, cls):
            return status, code
    return INTERNAL


def error_class(status: int, code: str) -> type[DicomvaultError]:
    """The class a client raises for an error answer (status ≥ 400) with this code."""
    cls = next((c for c, s, k in TABLE if s == status and k == code), None)
    cls = cls or _BY_STATUS.get(status, StoreError)
    if retryable(status) and not issubclass(cls, TransientError):
        return TransientError
    return cls


def retryable(status: int) -> bool:
    """The server failed or timed out, not the request: the same request may succeed later."""
    return status == 408 or status >= 500


def error_for(status: int, code: str, message: str) -> DicomvaultError:
    cls = error_class(status, code)
    return MissingChunks([], message) if cls is MissingChunks else cls(message)
