"""`FailoverBackend`: one repository at several sites (the primary chunk server, its replication
peer, a local copy), and the one place that decides which site answers a call (docs/design.md
§17, §13).

Each site is a whole backend (for a backup, a `RetryingBackend` around a `RemoteBackend`), so
an outage is first retried there for its `--retry-for` grace. Two rules, by what is asked:

- **Site in use** (listings, `missing`, commits, the prune protocol, forget/undelete,
  heartbeats and every write): only `Unreachable` after the site's grace, or `NotPrimary` (a
  replica, or a fenced old primary), moves the call on to the next site, which then stays in
  use. When every site refuses a write with `NotPrimary`, the call fails with `NoPrimary`, a
  `TransientError`: nobody takes backups until an operator promotes a peer, so an uploader
  keeps its packs and retries. A listing never comes from a site that is not in use: a lagging
  peer's listing would make a prune mark a recent snapshot's chunks dead.
- **Same everywhere** (packs and ranged or tail reads of them, commit records, key objects,
  events, the config: named by their content or written once): a read that fails at the site
  in use for any reason (not found, a 5xx, a whole pack or commit record that does not match
  its name, a chunk the caller's `read_checked` check refuses) is served by the next site that
  has it, and the site in use stays in use: a pack the primary lost must not move a practice's
  backups to the peer. A site's retries are spent only on no answer at all (`Unreachable`, which
  passes a lost site over for good, as by any call) or when no site serves the object now.
  Each such read is kept as a `Detour` (`detours`), so `check` can name the damaged site.

`read_only=True` (dicom-serve) is the same backend for a reader that never prunes: listings
(and the prune generation) fall back like the objects above, every write but a sealed audit
event is refused with `ReadOnly`, and an event goes to the first site that takes it. Must not
decide which site is primary; the sites' generations do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from engine.backend import (
    Backend,
    Detour,
    DrillReceiver,
    Pruning,
    Replicated,
    ServedElsewhere,
    StatsReceiver,
)
from engine.commit import verify_commit
from engine.errors import (
    IntegrityError,
    PermissionDenied,
    RepositoryNotFound,
    StoreError,
    TransientError,
    Unreachable,
)
from engine.ids import ChunkId, PackId, SnapshotId
from engine.pack import verify_pack
from engine.protocol.errors import NotPrimary
from engine.retry import RetryingBackend

T = TypeVar("T")
U = TypeVar("U")
log = logging.getLogger(__name__)
# What a site may answer for an object that another site can still serve.
ELSEWHERE = (StoreError, IntegrityError, RepositoryNotFound)


class NoPrimary(TransientError):
    """No site takes the practice's writes now: the primary is lost and no peer has been
    promoted yet (`dicomvault-server promote`); backups wait and retry."""


class ReadOnly(PermissionDenied):
    """These sites are open read-only (dicom-serve): nothing is written but audit events."""


class FailoverBackend(Backend, Replicated, DrillReceiver, Pruning, StatsReceiver, ServedElsewhere):
    def __init__(
        self, sites: Sequence[Backend], start: int = 0, *, read_only: bool = False
    ) -> None:
        if not sites:
            raise ValueError("no sites")
        self.sites, self.current, self.read_only = list(sites), start, read_only
        # Read-only: no uploads, so the client relies on its own index to locate chunks.
        self.knows_chunks = not read_only and all(s.knows_chunks for s in sites)
        self.served_elsewhere = 0  # reads the site in use failed and another site served
        self._detours: dict[tuple[str, str], Detour] = {}  # (what, failing site): the last
        self._told: set[str] = set()

    @property
    def location(self) -> str:  # type: ignore[override]
        return self.sites[self.current].location

    @property
    def bytes_uploaded(self) -> int:
        return sum(s.bytes_uploaded for s in self.sites)

    def _order(self) -> list[int]:
        return [(self.current + step) % len(self.sites) for step in range(len(self.sites))]

    def _use(self, index: int, what: str) -> None:
        if index != self.current:
            log.warning("%s: %s lost; using %s", what, self.location, self.sites[index].location)
            self.current = index

    async def _each(self, what: str, call: Callable[[Backend], Awaitable[T]]) -> T:
        """The site in use, then each other in turn while it is lost or not primary."""
        refused: NotPrimary | None = None
        last: Exception | None = None
        for index in self._order():
            try:
                result = await call(self.sites[index])
            except NotPrimary as e:
                refused = e
            except Unreachable as e:
                last = e
            else:
                self._use(index, what)
                return result
        if refused is not None:
            raise NoPrimary(f"{what}: no site takes backups now ({refused})")
        assert last is not None
        raise last

    async def _any(self, what: str, call: Callable[[Backend], Awaitable[T]]) -> T:
        """An object that is the same at every site: the site in use, then each other on any
        failure (a failed check included). Only a lost site is passed over for good; all
        failing, the first site that answered says why (else the site in use)."""
        failed: list[tuple[str, Exception]] = []  # (site, why), of the sites that answered
        lost: list[Exception] = []
        for index in self._order():
            site = self.sites[index]
            try:
                result = await _once_then_patiently(site, call)
            except Unreachable as e:
                lost.append(e)
                continue
            except ELSEWHERE as e:
                if not failed:
                    self._use(index, what)
                failed.append((site.location, e))
                self._tell(what, f"{site.location}: {e}")  # e names the object
                continue
            if not failed:
                self._use(index, what)
            else:
                self._served(what, failed, site.location)
            return result
        if any(isinstance(e, TransientError) for _, e in failed):
            return await call(self.sites[self.current])  # no site has it now: its retries
        raise (failed[0][1] if failed else lost[0])

    def _served(self, what: str, failed: list[tuple[str, Exception]], by: str) -> None:
        self.served_elsewhere += 1
        self._tell(f"{what} served", f"{what}: read from {by}")
        for where, e in failed:
            self._detours.pop((what, where), None)  # re-seen: last in the order of `seen`
            self._detours[(what, where)] = Detour(what, where, str(e), by, self.served_elsewhere)

    def detours(self, since: int = 0) -> list[Detour]:
        return [d for d in self._detours.values() if d.seen > since]

    async def read_checked(
        self,
        what: str,
        read: Callable[[Backend], Awaitable[T]],
        check: Callable[[T], Awaitable[U]],
    ) -> U:
        async def checked(b: Backend) -> U:
            return await check(await read(b))

        return await self._any(what, checked)

    def _tell(self, key: str, message: str) -> None:
        """Warn once per object: a restore reads a lost pack's every chunk."""
        if key not in self._told:
            self._told.add(key)
            log.warning("%s", message)

    async def _listing(self, what: str, call: Callable[[Backend], Awaitable[T]]) -> T:
        """A listing or other state: the site in use only (read-only: any site)."""
        return await (self._any if self.read_only else self._each)(what, call)

    async def _write(self, what: str, call: Callable[[Backend], Awaitable[T]]) -> T:
        if self.read_only:
            raise ReadOnly(f"{what}: these sites are open read-only")
        return await self._each(what, call)

    async def get_config(self) -> bytes:
        return await self._any("config", lambda b: b.get_config())

    async def put_config(self, data: bytes) -> None:
        await self._write("put config", lambda b: b.put_config(data))

    async def list_keys(self) -> list[str]:
        return await self._listing("list keys", lambda b: b.list_keys())

    async def get_key(self, name: str) -> bytes:
        return await self._any(f"key {name}", lambda b: b.get_key(name))

    async def put_key(self, name: str, data: bytes) -> None:
        await self._write("put key", lambda b: b.put_key(name, data))

    async def remove_key(self, name: str) -> None:
        await self._write("remove key", lambda b: b.remove_key(name))

    async def put_event(self, name: str, data: bytes) -> None:
        # Sealed and write-once: a read-only reader's one write, to the first site that takes it.
        put = self._any if self.read_only else self._each
        await put(f"put event {name}", lambda b: b.put_event(name, data))

    async def list_events(self) -> list[str]:
        return await self._listing("list events", lambda b: b.list_events())

    async def get_event(self, name: str) -> bytes:
        return await self._any(f"event {name}", lambda b: b.get_event(name))

    async def missing(self, ids: Sequence[ChunkId]) -> set[ChunkId]:
        if self.read_only:
            return set(ids)  # knows_chunks is False: nothing is asked
        return await self._each("missing", lambda b: b.missing(ids))

    async def put_pack(
        self, pack_id: PackId, data: bytes | memoryview, body: AsyncIterable[bytes] | None = None
    ) -> None:
        # A paced body is consumed by the first try; a retry elsewhere sends `data` unpaced.
        tries: list[Backend] = []

        async def put(b: Backend) -> None:
            tries.append(b)
            await b.put_pack(pack_id, data, body if len(tries) == 1 else None)

        await self._write(f"pack {pack_id.short()}", put)

    async def get_pack(self, pack_id: PackId) -> bytes:
        async def verified(data: bytes) -> bytes:
            await asyncio.to_thread(verify_pack, pack_id, data)
            return data

        return await self.read_checked(
            f"pack {pack_id.short()}", lambda b: b.get_pack(pack_id), verified
        )

    async def get_pack_range(self, pack_id: PackId, offset: int, length: int) -> bytes:
        return await self._any(
            f"pack {pack_id.short()}", lambda b: b.get_pack_range(pack_id, offset, length)
        )

    async def get_pack_tail(self, pack_id: PackId, length: int) -> tuple[int, bytes]:
        return await self._any(
            f"pack {pack_id.short()}", lambda b: b.get_pack_tail(pack_id, length)
        )

    async def has_pack(self, pack_id: PackId) -> bool:
        return await self._listing("has pack", lambda b: b.has_pack(pack_id))

    async def list_packs(self) -> AsyncIterator[PackId]:
        async def collect(b: Backend) -> list[PackId]:
            return [p async for p in b.list_packs()]

        for pack_id in await self._listing("list packs", collect):
            yield pack_id

    async def commit(self, record: bytes) -> SnapshotId:
        return await self._write("commit", lambda b: b.commit(record))

    async def list_snapshots(self) -> list[SnapshotId]:
        return await self._listing("list snapshots", lambda b: b.list_snapshots())

    async def get_snapshot(self, snapshot_id: SnapshotId) -> bytes:
        async def verified(record: bytes) -> bytes:
            verify_commit(snapshot_id, record)
            return record

        return await self.read_checked(
            f"snapshot {snapshot_id.short()}", lambda b: b.get_snapshot(snapshot_id), verified
        )

    async def quarantine(self, kind: str, ident: str, reason: str = "") -> dict[str, Any]:
        if self.read_only:
            raise ReadOnly("quarantine: these sites are open read-only")
        return await self.sites[self.current].quarantine(kind, ident, reason)

    # Deletions and the prune protocol (docs/design.md §14) act on the site in use: they are
    # the primary's, and a replica or a fenced site refuses them (`NotPrimary`).

    async def forget(self, snapshot_ids: Sequence[SnapshotId]) -> list[dict[str, Any]]:
        return await self._write("forget", lambda b: b.forget(snapshot_ids))

    async def pending_deletions(self) -> list[dict[str, Any]]:
        return await self._listing("deletions", lambda b: b.pending_deletions())

    async def undelete(self, names: Sequence[str] | None) -> list[dict[str, Any]]:
        return await self._write("undelete", lambda b: b.undelete(names))

    def _pruning(self, b: Backend) -> Pruning:
        if not isinstance(b, Pruning):
            raise TypeError(f"{b.location} does not prune")  # every chunk-server site does
        return b

    async def generation(self) -> int:
        return await self._listing("generation", lambda b: self._pruning(b).generation())

    async def commit_at(self, record: bytes, generation: int, full: bool) -> SnapshotId:
        return await self._write(
            "commit", lambda b: self._pruning(b).commit_at(record, generation, full)
        )

    async def prune_lock(self, holder: str, ttl: float) -> dict[str, Any]:
        return await self._write("prune lock", lambda b: self._pruning(b).prune_lock(holder, ttl))

    async def prune_release(self, holder: str) -> None:
        await self._write("prune unlock", lambda b: self._pruning(b).prune_release(holder))

    async def prune_schedule(self, holder: str, packs: Sequence[PackId]) -> dict[str, Any]:
        return await self._write(
            "prune schedule", lambda b: self._pruning(b).prune_schedule(holder, packs)
        )

    async def report_stats(self, stats: dict[str, Any]) -> None:
        site = self.sites[self.current]
        if isinstance(site, StatsReceiver) and not self.read_only:
            await site.report_stats(stats)

    async def heartbeat(self, info: dict[str, Any]) -> None:
        await self._write("heartbeat", lambda b: b.heartbeat(info))

    async def replication_status(self) -> dict[str, Any] | None:
        site = self.sites[self.current]
        return await site.replication_status() if isinstance(site, Replicated) else None

    async def snapshot_sites(self) -> dict[SnapshotId, dict[str, bool]] | None:
        site = self.sites[self.current]
        return await site.snapshot_sites() if isinstance(site, Replicated) else None

    async def report_drill(self, report: dict[str, Any]) -> None:
        site = self.sites[self.current]
        if isinstance(site, DrillReceiver) and not self.read_only:
            await site.report_drill(report)

    async def close(self) -> None:
        for site in self.sites:
            await site.close()


async def _once_then_patiently(site: Backend, call: Callable[[Backend], Awaitable[T]]) -> T:
    """`call` at `site` without its retries (a peer that holds the object beats minutes of
    them on a 5xx); only no answer at all is retried for the site's grace, which decides
    whether the site is lost."""
    once = site.inner if isinstance(site, RetryingBackend) else site
    try:
        return await call(once)
    except Unreachable:
        if once is site:
            raise
    return await call(site)
