"""Typed identifiers for content-addressed objects.

Owns the 32-byte identifier types (`ChunkId`, `PackId`, `SnapshotId`) and their text forms.
Does not compute them: chunk ids come from `engine.keys`, pack ids from `engine.pack`.
"""

from __future__ import annotations

from typing import ClassVar, Self

ID_SIZE = 32  # bytes: BLAKE3 default output length


class _Id32(bytes):
    """An immutable 32-byte identifier; `bytes` underneath so it is hashable and compact."""

    __slots__ = ()
    kind: ClassVar[str] = "id"

    def __new__(cls, raw: bytes) -> Self:
        if len(raw) != ID_SIZE:
            raise ValueError(f"{cls.kind} must be {ID_SIZE} bytes, got {len(raw)}")
        return super().__new__(cls, raw)

    @classmethod
    def parse(cls, text: str) -> Self:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"not a {cls.kind}: {text!r}") from None
        if len(raw) != ID_SIZE:
            raise ValueError(f"not a {cls.kind}: {text!r}")
        return cls(raw)

    def hex(self) -> str:  # type: ignore[override]
        return bytes.hex(self)

    def short(self) -> str:
        return bytes.hex(self[:4])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.short()})"

    def __str__(self) -> str:
        return self.hex()


class ChunkId(_Id32):
    """Keyed BLAKE3 of a chunk's plaintext: the server learns equality, nothing more."""

    __slots__ = ()
    kind = "chunk id"


class PackId(_Id32):
    """Unkeyed BLAKE3 of a pack's bytes, so any holder can verify a pack without keys."""

    __slots__ = ()
    kind = "pack id"


class SnapshotId(_Id32):
    """Unkeyed BLAKE3 of a snapshot commit record's bytes."""

    __slots__ = ()
    kind = "snapshot id"
