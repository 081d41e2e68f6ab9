"""The `Store` contract: a flat namespace of immutable, named byte objects.

Backends (memory, local filesystem, and later object storage) implement exactly this and raise only
`engine.errors` exceptions. Retry, fault injection and metrics are wrappers that are themselves a
`Store`. A store knows nothing of packs, keys or snapshots.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from engine.errors import InvalidName, ObjectNotFound

# One path component: lower-case hex ids, key names, `.json` suffixes. Upper case is refused so
# that case-insensitive filesystems cannot alias two names.
_COMPONENT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
MAX_DEPTH = 4  # e.g. "packs/ab/<64 hex>": deep enough for fan-out, shallow enough to list cheaply


def validate_name(name: str) -> str:
    """Return `name` if it is a valid object name, else raise `InvalidName` with the reason."""
    if not name or name.startswith("/") or name.endswith("/"):
        raise InvalidName(f"invalid object name {name!r}: must be relative, no trailing slash")
    parts = name.split("/")
    if len(parts) > MAX_DEPTH:
        raise InvalidName(f"invalid object name {name!r}: deeper than {MAX_DEPTH} levels")
    for part in parts:
        # Refusing ".." and leading dots keeps names inside the store and away from temp files.
        if not _COMPONENT.match(part) or part in (".", ".."):
            raise InvalidName(f"invalid object name {name!r}: bad component {part!r}")
    return name


PIECE = 1 << 20  # what `get_stream` yields at a time: bounded memory whatever the object's size


@dataclass(frozen=True)
class ObjectStat:
    size: int
    mtime: float  # epoch seconds the object was stored (or set by `put(..., mtime=)`)


class Staged(ABC):
    """An object written in full and durably, not yet visible: what `put_stream` shows its
    `verify` callback, which may read any range of it before it is published."""

    size: int

    @abstractmethod
    async def read_range(self, offset: int, length: int) -> bytes: ...


class _StagedBytes(Staged):
    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    async def read_range(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


Verify = Callable[[Staged], Awaitable[None]]


class Store(ABC):
    """Contract every backend honours.

    - `put` is atomic and durable when it returns; it is write-once: a put to an existing name
      is a no-op (names are content hashes or unique ids, so the content is the same). It
      returns True if it created the object, False if the name existed. `mtime`, when given,
      is the time `stat` reports for a created object (the server's injected clock).
    - `put_stream(name, pieces, verify)` stores what the async iterable yields, with the same
      atomic, durable, write-once result as `put`. Once every piece is written and durable,
      and before the object is visible, it awaits `verify(staged)` (also when `name` already
      exists, so the caller learns what it sent): if that raises, or the
      iterable raises, nothing is visible under `name` and the error propagates. A backend
      holds at most a bounded part of the object in memory (the default, and the memory store,
      hold it whole).
    - `get`, `size` and `stat` raise `ObjectNotFound` for a missing object.
    - `get_stream(name, offset, length)` yields the bytes of `get_range` in pieces of at most
      `PIECE` bytes; it raises `ObjectNotFound` before yielding anything for a missing object.
    - `get_range` returns at most `length` bytes; a read past the end returns the bytes that exist
      (possibly none) and never raises for that.
    - `list(prefix, start_after)` yields full names under the folder `prefix` in lexicographic
      order, only those after `start_after` when it is given (to resume a listing); a missing
      folder yields nothing.
    - `delete` raises `ObjectNotFound` for a missing object.
    - `move(name, dest, dest_name, mtime=)` takes the object out of this store and publishes
      it as `dest_name` in `dest` (write-once there: False, and the source left alone, when
      `dest_name` exists), with `mtime` as its time when given, else the time it had. It
      raises `ObjectNotFound` for a missing object. A crash part-way leaves the object in both
      stores, never in neither: the default copies, then deletes.
    - `sweep(cutoff)` forgets staged uploads that were never published and last changed before
      `cutoff` (epoch seconds; all of them when None) and returns how many; staging is never
      visible, so this only forgets what was never acknowledged.
    """

    @abstractmethod
    async def put(
        self, name: str, data: bytes | memoryview, *, mtime: float | None = None
    ) -> bool: ...

    async def put_stream(
        self,
        name: str,
        pieces: AsyncIterable[bytes],
        verify: Verify | None = None,
        *,
        mtime: float | None = None,
    ) -> bool:
        data = b"".join([piece async for piece in pieces])
        if verify is not None:
            await verify(_StagedBytes(data))
        return await self.put(name, data, mtime=mtime)

    @abstractmethod
    async def get(self, name: str) -> bytes: ...

    @abstractmethod
    async def get_range(self, name: str, offset: int, length: int) -> bytes: ...

    @abstractmethod
    async def stat(self, name: str) -> ObjectStat: ...

    async def size(self, name: str) -> int:
        return (await self.stat(name)).size

    async def get_stream(
        self, name: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The default reads ranges; a backend with a native stream overrides it."""
        end = await self.size(name) if length is None else offset + length
        while offset < end:
            piece = await self.get_range(name, offset, min(PIECE, end - offset))
            if not piece:
                return
            offset += len(piece)
            yield piece

    @abstractmethod
    def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[str]: ...

    @abstractmethod
    async def delete(self, name: str) -> None: ...

    async def move(
        self, name: str, dest: Store, dest_name: str, *, mtime: float | None = None
    ) -> bool:
        if await dest.exists(dest_name):
            return False
        if mtime is None:
            mtime = (await self.stat(name)).mtime
        if not await dest.put_stream(dest_name, self.get_stream(name), mtime=mtime):
            return False
        await self.delete(name)
        return True

    async def sweep(self, cutoff: float | None = None) -> int:
        """The default stages nothing outside memory, so there is nothing to forget."""
        return 0

    async def exists(self, name: str) -> bool:
        try:
            await self.size(name)
        except ObjectNotFound:
            return False
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; the default has none."""


class StoreRoot(ABC):
    """Where a server keeps many stores: one folder (or key prefix) per repository.

    `child(prefix)` is the `Store` whose names live under `prefix` (one or two validated
    components, e.g. "repos/clinic"); `folders(prefix)` lists the child folders directly under
    `prefix`; `make_folder(prefix)` creates one, False if it existed. Folder operations are
    synchronous: they are rare (create a repository, list repositories at start) and callers
    run them in a worker thread when they are on the event loop. `shared` says whether other
    processes on other machines may write the same stores (an object store) or not (a folder
    one server owns).
    """

    shared = False

    @abstractmethod
    def child(self, prefix: str) -> Store: ...

    @abstractmethod
    def folders(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def make_folder(self, prefix: str) -> bool: ...

    @abstractmethod
    def has_folder(self, prefix: str) -> bool: ...

    def describe(self) -> str:
        """Where the stores live, for messages (a folder path or an s3:// URL)."""
        return type(self).__name__
