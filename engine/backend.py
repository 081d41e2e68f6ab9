"""The repository backend contract: what a client asks of wherever its repository lives.

Two implementations: `LocalBackend` (a repository folder through a `Store`) and, in
`engine.remote`, the HTTP client for a chunk server. Both hold only sealed packs, key objects,
the plaintext repository config and commit records; neither sees plaintext or keys.

What only a chunk server can do is declared as optional capabilities, typed `Protocol`s a
caller checks with `isinstance` (never by probing for a name): `Replicated` (per-site
replication status) and `DrillReceiver` (keeps fire-drill reports).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

from engine.commit import snapshot_id_of, snapshot_name, verify_commit
from engine.errors import ObjectNotFound, RepositoryNotFound, UsageError
from engine.ids import ChunkId, PackId, SnapshotId
from engine.pack import pack_name, verify_pack
from engine.store.base import Store

CONFIG_NAME = "config"


class Backend(ABC):
    """Contract (both implementations):

    - `missing(ids)` returns the subset the repository is not known to hold. `knows_chunks` says
      whether that answer is authoritative; a backend that cannot tell returns every id, and the
      client then relies on its own index (rebuilt from `list_packs`).
    - `put_pack` is idempotent and verifies the pack against its name before it is visible.
      `body`, when given, yields exactly `data` in pieces: the caller paces the upload with it.
    - `commit` stores a commit record under its BLAKE3 name; an authoritative backend refuses a
      record whose `refs` name chunks it does not hold.
    - Missing objects raise `ObjectNotFound`; a missing repository raises `RepositoryNotFound`.
    """

    knows_chunks: bool = False
    location: str = ""

    @property
    def bytes_uploaded(self) -> int:
        """Bytes sent over the network; a remote backend counts its sockets, a local one 0."""
        return 0

    @abstractmethod
    async def get_config(self) -> bytes: ...
    @abstractmethod
    async def put_config(self, data: bytes) -> None: ...
    @abstractmethod
    async def list_keys(self) -> list[str]: ...
    @abstractmethod
    async def get_key(self, name: str) -> bytes: ...
    @abstractmethod
    async def put_key(self, name: str, data: bytes) -> None: ...
    @abstractmethod
    async def missing(self, ids: Sequence[ChunkId]) -> set[ChunkId]: ...
    @abstractmethod
    async def put_pack(
        self, pack_id: PackId, data: bytes, body: AsyncIterable[bytes] | None = None
    ) -> None: ...
    @abstractmethod
    async def get_pack(self, pack_id: PackId) -> bytes: ...
    @abstractmethod
    async def get_pack_range(self, pack_id: PackId, offset: int, length: int) -> bytes: ...
    @abstractmethod
    def list_packs(self) -> AsyncIterator[PackId]: ...
    @abstractmethod
    async def commit(self, record: bytes) -> SnapshotId: ...
    @abstractmethod
    async def list_snapshots(self) -> list[SnapshotId]: ...
    @abstractmethod
    async def get_snapshot(self, snapshot_id: SnapshotId) -> bytes: ...

    async def get_pack_tail(self, pack_id: PackId, length: int) -> tuple[int, bytes]:
        """Return (pack size, its last `length` bytes): enough to read a trailer and manifest."""
        raise NotImplementedError

    async def has_pack(self, pack_id: PackId) -> bool:
        """Whether the repository holds this pack (without fetching it)."""
        try:
            await self.get_pack_tail(pack_id, 1)
        except ObjectNotFound:
            return False
        return True

    async def quarantine(self, kind: str, ident: str, reason: str = "") -> dict[str, Any]:
        """Take a planted or damaged object (`pack`, `snapshot` or `key`) out of the repository
        without deleting it; needs an admin token. A local repository's owner moves the file."""
        raise UsageError("quarantine needs a chunk server; in a local repository, move the file")

    async def put_event(self, name: str, data: bytes) -> None:
        """Store a sealed audit event (`engine.events`) under `events/<name>`, write-once."""
        raise UsageError("this repository keeps no audit events")

    async def list_events(self) -> list[str]:
        raise UsageError("this repository keeps no audit events")

    async def get_event(self, name: str) -> bytes:
        raise UsageError("this repository keeps no audit events")

    async def remove_key(self, name: str) -> None:
        """Take a key object out of the repository (`dicomvault key remove`). On a chunk server
        that is the admin's quarantine: the server keeps the object and logs the removal."""
        await self.quarantine("key", name, "removed by dicomvault key")

    async def heartbeat(self, info: dict[str, Any]) -> None:  # noqa: B027 - local: nobody listens
        """Tell the server this agent is alive; a local repository has nobody to tell."""

    async def close(self) -> None:  # noqa: B027
        """Release connections."""


@runtime_checkable
class Replicated(Protocol):
    """A backend whose server replicates the repository to peer sites (docs/api.md)."""

    async def replication_status(self) -> dict[str, Any] | None:
        """The server's replication status document, or None if it does not replicate."""
        ...

    async def snapshot_sites(self) -> dict[SnapshotId, dict[str, bool]] | None:
        """For each snapshot: {site name: complete there?}, this site first; None as above."""
        ...


@runtime_checkable
class DrillReceiver(Protocol):
    """A backend whose server keeps the last fire-drill report of each repository."""

    async def report_drill(self, report: dict[str, Any]) -> None: ...


class LocalBackend(Backend):
    """A repository folder on a local (or mounted) filesystem, through any `Store`."""

    knows_chunks = False

    def __init__(self, store: Store, location: str = "") -> None:
        self.store = store
        self.location = location

    async def get_config(self) -> bytes:
        try:
            return await self.store.get(CONFIG_NAME)
        except ObjectNotFound:
            raise RepositoryNotFound(f"no repository at {self.location or 'this store'}") from None

    async def put_config(self, data: bytes) -> None:
        await self.store.put(CONFIG_NAME, data)

    async def list_keys(self) -> list[str]:
        return sorted([n.removeprefix("keys/") async for n in self.store.list("keys")])

    async def get_key(self, name: str) -> bytes:
        return await self.store.get(f"keys/{name}")

    async def put_key(self, name: str, data: bytes) -> None:
        await self.store.put(f"keys/{name}", data)

    async def remove_key(self, name: str) -> None:
        await self.store.delete(f"keys/{name}")

    async def put_event(self, name: str, data: bytes) -> None:
        await self.store.put(f"events/{name}", data)

    async def list_events(self) -> list[str]:
        return sorted([n.removeprefix("events/") async for n in self.store.list("events")])

    async def get_event(self, name: str) -> bytes:
        return await self.store.get(f"events/{name}")

    async def missing(self, ids: Sequence[ChunkId]) -> set[ChunkId]:
        return set(ids)

    async def put_pack(
        self, pack_id: PackId, data: bytes, body: AsyncIterable[bytes] | None = None
    ) -> None:
        verify_pack(pack_id, data)
        await self.store.put(pack_name(pack_id), data)

    async def get_pack(self, pack_id: PackId) -> bytes:
        return await self.store.get(pack_name(pack_id))

    async def get_pack_range(self, pack_id: PackId, offset: int, length: int) -> bytes:
        return await self.store.get_range(pack_name(pack_id), offset, length)

    async def get_pack_tail(self, pack_id: PackId, length: int) -> tuple[int, bytes]:
        name = pack_name(pack_id)
        size = await self.store.size(name)
        return size, await self.store.get_range(name, max(0, size - length), length)

    async def list_packs(self) -> AsyncIterator[PackId]:
        async for name in self.store.list("packs"):
            try:
                yield PackId.parse(name.rsplit("/", 1)[-1])
            except ValueError:
                continue  # not ours; check reports stray files separately

    async def commit(self, record: bytes) -> SnapshotId:
        snapshot_id = snapshot_id_of(record)
        verify_commit(snapshot_id, record)
        await self.store.put(snapshot_name(snapshot_id), record)
        return snapshot_id

    async def list_snapshots(self) -> list[SnapshotId]:
        out = []
        async for name in self.store.list("snapshots"):
            try:
                out.append(SnapshotId.parse(name.rsplit("/", 1)[-1]))
            except ValueError:
                continue
        return out

    async def get_snapshot(self, snapshot_id: SnapshotId) -> bytes:
        try:
            return await self.store.get(snapshot_name(snapshot_id))
        except ObjectNotFound:
            raise ObjectNotFound(f"no snapshot {snapshot_id.hex()}") from None

    async def close(self) -> None:
        await self.store.close()
