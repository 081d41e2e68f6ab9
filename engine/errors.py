"""The engine's exception tree.

Every error a user can meet carries its one-line message (the docstring when no message is given)
and an exit code, so the CLI translates errors in one place. Storage backends raise only these;
`OSError`, LMDB and HTTP-client errors are translated at the backend boundary.
"""

from __future__ import annotations


class DicomvaultError(Exception):
    """Unexpected error."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class UsageError(DicomvaultError):
    """Invalid arguments or configuration."""

    exit_code = 2


class RepositoryNotFound(DicomvaultError):
    """Repository does not exist."""

    exit_code = 10


class RepositoryExists(DicomvaultError):
    """Repository already exists."""

    exit_code = 11


class WrongPassphrase(DicomvaultError):
    """Wrong passphrase: no key object opens with it (or the key object is damaged or altered)."""

    exit_code = 12


class IntegrityError(DicomvaultError):
    """Data does not match its name or authentication tag."""

    exit_code = 13


class FormatError(IntegrityError):
    """Malformed or unsupported format."""


class StoreError(DicomvaultError):
    """Storage backend failed."""

    exit_code = 14


class ObjectNotFound(StoreError):
    """Object not found in the store."""


class ObjectExists(StoreError):
    """A different object already exists under this name (objects are write-once)."""


class InvalidName(StoreError):
    """Invalid object name."""


class ObjectLocked(StoreError):
    """The object store keeps a version of this object under an Object Lock retention."""

    def __init__(self, message: str | None = None, until: float = 0.0) -> None:
        super().__init__(message)
        self.until = until  # the retain-until date (unix seconds) of the latest locked version


class PermissionDenied(StoreError):
    """Not allowed with these credentials."""

    exit_code = 15


class TransientError(StoreError):
    """Temporary failure; retrying may succeed."""


class Unreachable(TransientError):
    """No answer from the server: refused, name not resolved, timed out, or the connection
    broke. Worth retrying once the server has answered (`engine.retry`), not before it."""


class NotFound(DicomvaultError):
    """No such snapshot or path."""

    exit_code = 16


class CheckFailed(DicomvaultError):
    """Repository check found problems."""

    exit_code = 17


class EscrowError(DicomvaultError):
    """The escrow shares do not rebuild this repository's key (too few, mistyped, or another
    repository's)."""

    exit_code = 21


class KitError(DicomvaultError):
    """The recovery kit cannot be read, is damaged, or belongs to another repository."""

    exit_code = 22


class PrimaryAlive(DicomvaultError):
    """The repository's primary site still answers: promoting a peer now would make two
    primaries (`dicomvault-server promote --force` if it must)."""

    exit_code = 23
