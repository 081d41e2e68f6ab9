"""Read a repository from several sites: each read goes to the first site that answers.

`SitesBackend` is a read-only `Backend` over the practice's repository at several places (the
primary chunk server, its replication peer, a local copy): every read tries the sites in order,
starting with the one that answered last, and moves on when a site fails or lacks the object.
The repository is the same everywhere (same config, key objects, content-addressed packs), so any
answer is as good as another. Writes nothing but its sealed audit events (`client.audit`),
to the first site that takes one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from engine.backend import Backend
from engine.errors import PermissionDenied, StoreError
from engine.ids import ChunkId, PackId, SnapshotId

T = TypeVar("T")
log = logging.getLogger(__name__)


class ReadOnly(PermissionDenied):
    """dicom-serve never writes to the repository."""


class SitesBackend(Backend):
    knows_chunks = False  # no uploads: the client relies on its own index to locate chunks

    def __init__(self, sites: Sequence[Backend]) -> None:
        if not sites:
            raise ValueError("no sites")
        self.sites = list(sites)
        self.location = " | ".join(s.location for s in sites)
        self._preferred = 0
        self.failovers = 0

    def _order(self) -> list[int]:
        n = len(self.sites)
        return [(self._preferred + i) % n for i in range(n)]

    async def _first(self, what: str, call: Callable[[Backend], Awaitable[T]]) -> T:
        errors: list[str] = []
        for i in self._order():
            try:
                result = await call(self.sites[i])
            except StoreError as e:
                errors.append(f"{self.sites[i].location}: {e}")
                log.warning("%s failed at %s: %s", what, self.sites[i].location, e)
                continue
            if i != self._preferred:
                self.failovers += 1
                self._preferred = i
            return result
        raise _combined(what, errors)

    async def get_config(self) -> bytes:
        return await self._first("config", lambda s: s.get_config())

    async def list_keys(self) -> list[str]:
        return await self._first("key list", lambda s: s.list_keys())

    async def get_key(self, name: str) -> bytes:
        return await self._first(f"key {name}", lambda s: s.get_key(name))

    async def missing(self, ids: Sequence[ChunkId]) -> set[ChunkId]:
        return set(ids)

    async def get_pack(self, pack_id: PackId) -> bytes:
        return await self._first(f"pack {pack_id.short()}", lambda s: s.get_pack(pack_id))

    async def get_pack_range(self, pack_id: PackId, offset: int, length: int) -> bytes:
        return await self._first(
            f"pack {pack_id.short()}", lambda s: s.get_pack_range(pack_id, offset, length)
        )

    async def get_pack_tail(self, pack_id: PackId, length: int) -> tuple[int, bytes]:
        return await self._first(
            f"pack {pack_id.short()}", lambda s: s.get_pack_tail(pack_id, length)
        )

    async def list_packs(self) -> AsyncIterator[PackId]:
        packs = await self._first("pack list", _collect_packs)
        for pack_id in packs:
            yield pack_id

    async def list_snapshots(self) -> list[SnapshotId]:
        return await self._first("snapshot list", lambda s: s.list_snapshots())

    async def get_snapshot(self, snapshot_id: SnapshotId) -> bytes:
        return await self._first(
            f"snapshot {snapshot_id.short()}", lambda s: s.get_snapshot(snapshot_id)
        )

    async def put_event(self, name: str, data: bytes) -> None:
        await self._first(f"event {name}", lambda s: s.put_event(name, data))

    async def list_events(self) -> list[str]:
        return await self._first("event list", lambda s: s.list_events())

    async def get_event(self, name: str) -> bytes:
        return await self._first(f"event {name}", lambda s: s.get_event(name))

    async def put_config(self, data: bytes) -> None:
        raise ReadOnly("dicom-serve is read-only")

    async def put_key(self, name: str, data: bytes) -> None:
        raise ReadOnly("dicom-serve is read-only")

    async def put_pack(
        self, pack_id: PackId, data: bytes, body: AsyncIterable[bytes] | None = None
    ) -> None:
        raise ReadOnly("dicom-serve is read-only")

    async def commit(self, record: bytes) -> SnapshotId:
        raise ReadOnly("dicom-serve is read-only")

    async def close(self) -> None:
        for site in self.sites:
            await site.close()


async def _collect_packs(site: Backend) -> list[PackId]:
    return [p async for p in site.list_packs()]


def _combined(what: str, errors: list[str]) -> StoreError:
    return StoreError(f"{what}: no site answered ({'; '.join(errors)})")
