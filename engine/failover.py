"""`FailoverBackend`: one repository at several sites; the calls go to the site in use, and
move on to the next when it is lost (docs/design.md §17).

Each site is a whole backend (a `RetryingBackend` around a `RemoteBackend`), so an outage is
first retried there for its `--retry-for` grace; only `Unreachable` after that, or `NotPrimary`
(the site does not take writes: a replica, or a fenced old primary), moves the call on to the
next site, which then stays in use. When every site refuses a write with `NotPrimary`, the call
fails with a `TransientError`: nobody takes backups until an operator promotes a peer
(`dicomvault-server promote`), so an uploader keeps its packs and retries. Must not decide
which site is primary; the sites' generations do.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from engine.backend import Backend, DrillReceiver, Pruning, Replicated, StatsReceiver
from engine.errors import TransientError, Unreachable
from engine.ids import ChunkId, PackId, SnapshotId
from engine.protocol.errors import NotPrimary

T = TypeVar("T")
log = logging.getLogger(__name__)


class NoPrimary(TransientError):
    """No site takes the practice's writes now: the primary is lost and no peer has been
    promoted yet (`dicomvault-server promote`); backups wait and retry."""


class FailoverBackend(Backend, Replicated, DrillReceiver, Pruning, StatsReceiver):
    def __init__(self, sites: Sequence[Backend], start: int = 0) -> None:
        self.sites, self.current = list(sites), start
        self.knows_chunks = all(s.knows_chunks for s in sites)

    @property
    def location(self) -> str:  # type: ignore[override]
        return self.sites[self.current].location

    @property
    def bytes_uploaded(self) -> int:
        return sum(s.bytes_uploaded for s in self.sites)

    async def _each(self, what: str, call: Callable[[Backend], Awaitable[T]]) -> T:
        """`call` on the site in use, then on each other in turn while it is lost."""
        refused: NotPrimary | None = None
        last: Exception | None = None
        for step in range(len(self.sites)):
            index = (self.current + step) % len(self.sites)
            try:
                result = await call(self.sites[index])
            except NotPrimary as e:
                refused = e
            except Unreachable as e:
                last = e
            else:
                if index != self.current:
                    log.warning("%s: %s lost; using %s", what, self.location,
                                self.sites[index].location)  # fmt: skip
                    self.current = index
                return result
        if refused is not None:
            raise NoPrimary(f"{what}: no site takes backups now ({refused})")
        assert last is not None
        raise last

    async def get_config(self) -> bytes:
        return await self._each("config", lambda b: b.get_config())

    async def put_config(self, data: bytes) -> None:
        await self._each("put config", lambda b: b.put_config(data))

    async def list_keys(self) -> list[str]:
        return await self._each("list keys", lambda b: b.list_keys())

    async def get_key(self, name: str) -> bytes:
        return await self._each("get key", lambda b: b.get_key(name))

    async def put_key(self, name: str, data: bytes) -> None:
        await self._each("put key", lambda b: b.put_key(name, data))

    async def remove_key(self, name: str) -> None:
        await self._each("remove key", lambda b: b.remove_key(name))

    async def put_event(self, name: str, data: bytes) -> None:
        await self._each("put event", lambda b: b.put_event(name, data))

    async def list_events(self) -> list[str]:
        return await self._each("list events", lambda b: b.list_events())

    async def get_event(self, name: str) -> bytes:
        return await self._each("get event", lambda b: b.get_event(name))

    async def missing(self, ids: Sequence[ChunkId]) -> set[ChunkId]:
        return await self._each("missing", lambda b: b.missing(ids))

    async def put_pack(
        self, pack_id: PackId, data: bytes, body: AsyncIterable[bytes] | None = None
    ) -> None:
        # A paced body is consumed by the first try; a retry elsewhere sends `data` unpaced.
        tries: list[Backend] = []

        async def put(b: Backend) -> None:
            tries.append(b)
            await b.put_pack(pack_id, data, body if len(tries) == 1 else None)

        await self._each(f"pack {pack_id.short()}", put)

    async def get_pack(self, pack_id: PackId) -> bytes:
        return await self._each("get pack", lambda b: b.get_pack(pack_id))

    async def get_pack_range(self, pack_id: PackId, offset: int, length: int) -> bytes:
        return await self._each("get pack", lambda b: b.get_pack_range(pack_id, offset, length))

    async def get_pack_tail(self, pack_id: PackId, length: int) -> tuple[int, bytes]:
        return await self._each("get pack", lambda b: b.get_pack_tail(pack_id, length))

    async def has_pack(self, pack_id: PackId) -> bool:
        return await self._each("has pack", lambda b: b.has_pack(pack_id))

    async def list_packs(self) -> AsyncIterator[PackId]:
        async def collect(b: Backend) -> list[PackId]:
            return [p async for p in b.list_packs()]

        for pack_id in await self._each("list packs", collect):
            yield pack_id

    async def commit(self, record: bytes) -> SnapshotId:
        return await self._each("commit", lambda b: b.commit(record))

    async def list_snapshots(self) -> list[SnapshotId]:
        return await self._each("list snapshots", lambda b: b.list_snapshots())

    async def get_snapshot(self, snapshot_id: SnapshotId) -> bytes:
        return await self._each("get snapshot", lambda b: b.get_snapshot(snapshot_id))

    async def quarantine(self, kind: str, ident: str, reason: str = "") -> dict[str, Any]:
        return await self.sites[self.current].quarantine(kind, ident, reason)

    # Deletions and the prune protocol (docs/design.md §14) act on the site in use: they are
    # the primary's, and a replica or a fenced site refuses them (`NotPrimary`).

    async def forget(self, snapshot_ids: Sequence[SnapshotId]) -> list[dict[str, Any]]:
        return await self._each("forget", lambda b: b.forget(snapshot_ids))

    async def pending_deletions(self) -> list[dict[str, Any]]:
        return await self._each("deletions", lambda b: b.pending_deletions())

    async def undelete(self, names: Sequence[str] | None) -> list[dict[str, Any]]:
        return await self._each("undelete", lambda b: b.undelete(names))

    def _pruning(self, b: Backend) -> Pruning:
        if not isinstance(b, Pruning):
            raise TypeError(f"{b.location} does not prune")  # every chunk-server site does
        return b

    async def generation(self) -> int:
        return await self._each("generation", lambda b: self._pruning(b).generation())

    async def commit_at(self, record: bytes, generation: int, full: bool) -> SnapshotId:
        return await self._each(
            "commit", lambda b: self._pruning(b).commit_at(record, generation, full)
        )

    async def prune_lock(self, holder: str, ttl: float) -> dict[str, Any]:
        return await self._each("prune lock", lambda b: self._pruning(b).prune_lock(holder, ttl))

    async def prune_release(self, holder: str) -> None:
        await self._each("prune unlock", lambda b: self._pruning(b).prune_release(holder))

    async def prune_schedule(self, holder: str, packs: Sequence[PackId]) -> dict[str, Any]:
        return await self._each(
            "prune schedule", lambda b: self._pruning(b).prune_schedule(holder, packs)
        )

    async def report_stats(self, stats: dict[str, Any]) -> None:
        site = self.sites[self.current]
        if isinstance(site, StatsReceiver):
            await site.report_stats(stats)

    async def heartbeat(self, info: dict[str, Any]) -> None:
        await self._each("heartbeat", lambda b: b.heartbeat(info))

    async def replication_status(self) -> dict[str, Any] | None:
        site = self.sites[self.current]
        return await site.replication_status() if isinstance(site, Replicated) else None

    async def snapshot_sites(self) -> dict[SnapshotId, dict[str, bool]] | None:
        site = self.sites[self.current]
        return await site.snapshot_sites() if isinstance(site, Replicated) else None

    async def report_drill(self, report: dict[str, Any]) -> None:
        site = self.sites[self.current]
        if isinstance(site, DrillReceiver):
            await site.report_drill(report)

    async def close(self) -> None:
        for site in self.sites:
            await site.close()
