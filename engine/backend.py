"""The repository backend contract: what a client asks of wherever its repository lives.

Two implementations: `LocalBackend` (a repository folder through a `Store`) and, in
`engine.remote`, the HTTP client for a chunk server. Both hold only sealed packs, key objects,
the plaintext repository config and commit records; neither sees plaintext or keys.

What only a chunk server can do is declared as optional capabilities, typed `Protocol`s a
caller checks with `isinstance` (never by probing for a name): `Replicated` (per-site
replication status), `DrillReceiver` (keeps fire-drill reports) and `ServedElsewhere` (several
sites: which reads one failed and another served, `Detour`). `Pruning` (the prune
protocol, docs/design.md §14) is implemented by both: a local folder keeps its lock and
generation in write-once `locks/generation/<n>` objects and its removed objects in `trash/`;
a local commit waits while a prune holds the lock, and one that raced a prune's start is taken
back and made again listing every chunk, bringing back from trash what it needs.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from engine.clock import SYSTEM, Clock
from engine.commit import CommitRecord, snapshot_id_of, snapshot_name, verify_commit
from engine.errors import NotFound, ObjectNotFound, RepositoryNotFound, UsageError
from engine.ids import ChunkId, PackId, SnapshotId
from engine.pack import pack_name, read_pack_info_ranged, verify_pack
from engine.protocol.errors import FullRefsRequired, PruneLocked
from engine.prunelog import GENERATIONS, PruneLog, live
from engine.store.base import Store

T = TypeVar("T")
U = TypeVar("U")
CONFIG_NAME = "config"
TRASH = "trash/snapshots"  # a local repository's forgotten commit records
TRASH_PACKS = "trash/packs"  # and the packs its prunes removed
COMMIT_POLL = 1.0  # seconds between a local commit's looks at a prune lock
COMMIT_WAIT = 6 * 3600.0  # a local commit waits this long for a prune, then fails (exit 14)
UNDELETE_WINDOW = 14 * 86_400.0  # a chunk server's default; its provider may set more


class Backend(ABC):
    """Contract (both implementations):

    - `missing(ids)` returns the subset the repository is not known to hold. `knows_chunks` says
      whether that answer is authoritative; a backend that cannot tell returns every id, and the
      client then relies on its own index (rebuilt from `list_packs`).
    - `put_pack` is idempotent and verifies the pack against its name before it is visible.
      `body`, when given, yields exactly `data` in pieces: the caller paces the upload with it
      (the client's uploader passes a view of the mapped spool file as `data`).
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
        self, pack_id: PackId, data: bytes | memoryview, body: AsyncIterable[bytes] | None = None
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

    async def read_checked(
        self,
        what: str,
        read: Callable[[Backend], Awaitable[T]],
        check: Callable[[T], Awaitable[U]],
    ) -> U:
        """`check(read(self))`, for a read of an object that is the same wherever it is held
        (a pack range the caller authenticates with the key): a backend with several sites
        reads it at the next when `check` fails (`engine.failover`, docs/design.md §17)."""
        return await check(await read(self))

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

    # Deletions that can be undone (docs/design.md §14): each returns one document per object,
    # {kind, id, scheduled, purge_after, time}, times in unix seconds.

    async def forget(self, snapshot_ids: Sequence[SnapshotId]) -> list[dict[str, Any]]:
        """Schedule snapshots for deletion, all or none (`NotFound` for an unknown one): they
        leave every listing at once and are destroyed only after the undelete window."""
        raise NotImplementedError

    async def pending_deletions(self) -> list[dict[str, Any]]:
        """What is scheduled for deletion and not yet destroyed."""
        raise NotImplementedError

    async def undelete(self, names: Sequence[str] | None) -> list[dict[str, Any]]:
        """Bring back scheduled snapshots by id or unique prefix (None: every one)."""
        raise NotImplementedError

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
class Pruning(Protocol):
    """Deleting packs safely while others back up (docs/design.md §14)."""

    async def generation(self) -> int:
        """The repository's prune generation: it changes whenever packs may have gone."""
        ...

    async def commit_at(self, record: bytes, generation: int, full: bool) -> SnapshotId:
        """Commit from a client reconciled at `generation`; `full`: `refs` lists every chunk.
        `FullRefsRequired` when a prune ran or runs: commit again with `full`."""
        ...

    async def prune_lock(self, holder: str, ttl: float) -> dict[str, Any]:
        """Take or renew the one prune lock ({holder, since, expires, generation});
        `PruneLocked` while another holder's lives."""
        ...

    async def prune_release(self, holder: str) -> None: ...

    async def prune_schedule(self, holder: str, packs: Sequence[PackId]) -> dict[str, Any]:
        """Schedule dead packs for deletion: {scheduled, kept, absent} (pack id hex lists)."""
        ...


@dataclass(frozen=True, slots=True)
class Detour:
    """A read one site failed (the object lost, damaged, a 5xx) that another site served: the
    data is safe, the failing site needs repair."""

    what: str  # the object as the read named it: "pack 1a2b3c4d", "snapshot …"
    site: str  # the location that failed
    error: str
    served_by: str  # the location that served it
    seen: int  # the reader's count of reads served elsewhere when last seen (`since`)


@runtime_checkable
class ServedElsewhere(Protocol):
    """A backend with several sites (`engine.failover`) that tells which reads it served
    from a site other than the first one asked."""

    served_elsewhere: int  # reads served elsewhere so far: a mark for `detours(since=...)`

    def detours(self, since: int = 0) -> list[Detour]:
        """One `Detour` per object and failing site seen after the mark `since`."""
        ...


@runtime_checkable
class StatsReceiver(Protocol):
    """A backend whose server keeps each repository's last `dicomvault stats` figures."""

    async def report_stats(self, stats: dict[str, Any]) -> None: ...


@runtime_checkable
class DrillReceiver(Protocol):
    """A backend whose server keeps the last fire-drill report of each repository."""

    async def report_drill(self, report: dict[str, Any]) -> None: ...


class LocalBackend(Backend, Pruning):
    """A repository folder on a local (or mounted) filesystem, through any `Store`."""

    knows_chunks = False

    def __init__(
        self, store: Store, location: str = "", clock: Clock = SYSTEM, poll: float = COMMIT_POLL
    ) -> None:
        self.store = store
        self.location = location
        self.clock, self.poll = clock, poll

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
        self, pack_id: PackId, data: bytes | memoryview, body: AsyncIterable[bytes] | None = None
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

    # A local repository keeps forgotten commit records under trash/snapshots/ (the object's
    # mtime is when it was scheduled) for the same window as a chunk server's default; the
    # owner of the folder could delete them by hand, so this protects against mistakes only.

    async def forget(self, snapshot_ids: Sequence[SnapshotId]) -> list[dict[str, Any]]:
        listed = set(await self.list_snapshots())
        for sid in snapshot_ids:
            if sid not in listed and not await self.store.exists(_trash(sid)):
                raise NotFound(f"no snapshot {sid.hex()}")
        out = []
        for sid in snapshot_ids:
            if sid in listed:
                data = await self.store.get(snapshot_name(sid))
                await self.store.put(_trash(sid), data)  # durable before the original goes
                await self.store.delete(snapshot_name(sid))
            out.append(await self._trash_doc(sid))
        return out

    async def pending_deletions(self) -> list[dict[str, Any]]:
        docs = [await self._trash_doc(sid) async for sid in self._trashed()]
        async for name in self.store.list(TRASH_PACKS):
            st = await self.store.stat(name)
            docs.append({"kind": "pack", "id": name.rsplit("/", 1)[-1], "scheduled": st.mtime,
                         "purge_after": st.mtime + UNDELETE_WINDOW, "size": st.size})  # fmt: skip
        return docs

    async def undelete(self, names: Sequence[str] | None) -> list[dict[str, Any]]:
        trashed = [sid async for sid in self._trashed()]
        chosen = trashed if names is None else [_unique_prefix(trashed, n) for n in names]
        out = []
        for sid in chosen:
            doc = await self._trash_doc(sid)
            await self.store.put(snapshot_name(sid), await self.store.get(_trash(sid)))
            await self.store.delete(_trash(sid))
            out.append(doc)
        if chosen:  # their chunks may be in packs a prune put aside since: bring all back
            async for name in self.store.list(TRASH_PACKS):
                await self._untrash(name)
        return out

    async def _untrash(self, name: str) -> None:
        """Put a trashed pack back (write-once: a copy already back wins)."""
        pack_id = PackId.parse(name.rsplit("/", 1)[-1])
        if not await self.store.move(name, self.store, pack_name(pack_id)):
            await self.store.delete(name)

    async def purge_trash(self, now: float, window: float = UNDELETE_WINDOW) -> int:
        """Delete forgotten records and pruned packs older than the window; return how many."""
        names = [_trash(sid) async for sid in self._trashed()]
        names += [name async for name in self.store.list(TRASH_PACKS)]
        done = 0
        for name in names:
            if (await self.store.stat(name)).mtime + window <= now:
                await self.store.delete(name)
                done += 1
        return done

    # The prune protocol, locally (docs/design.md §14). A folder has no server to run a commit
    # check and a schedule under one lock, so: the prune log `locks/generation/<n>` holds
    # write-once objects {holder, expires} (holder None: released); the newest is the generation
    # and the lock state. Taking, renewing, scheduling and releasing each append one. A commit
    # (1) waits while a lock lives, (2) is refused (`FullRefsRequired`) unless full when its
    # index's generation is not the newest, (3) if full, brings back from trash every pack
    # holding a chunk it names, (4) writes its record, (5) looks again: a generation appended
    # since (1) means a prune may have listed snapshots before the record existed, so the record
    # is taken back and the commit made again, full, after the prune.

    async def _log(self) -> tuple[int, dict[str, Any]]:
        """The newest prune-log entry: (generation, {holder, expires}); (0, {}) if none."""
        return await PruneLog(self.store, self.location).newest()

    def _live(self, doc: dict[str, Any]) -> bool:
        return live(doc, self.clock.time())

    async def _append(self, after: int, doc: dict[str, Any]) -> int:
        return await PruneLog(self.store, self.location).append(after, doc)

    async def generation(self) -> int:
        return (await self._log())[0]

    async def commit_at(self, record: bytes, generation: int, full: bool) -> SnapshotId:
        deadline = self.clock.monotonic() + COMMIT_WAIT
        while True:
            g0, doc = await self._log()
            if self._live(doc):
                if self.clock.monotonic() > deadline:
                    raise PruneLocked(f"a prune ({doc['holder']}) held {self.location} too long")
                await self.clock.sleep(self.poll)
                continue
            if not full and generation != g0:
                raise FullRefsRequired("a prune ran: commit again listing every chunk")
            if full:
                await self._revive(set(CommitRecord.decode(record).refs))
            sid = await self.commit(record)
            if (await self._log())[0] == g0:
                return sid
            await self.store.delete(snapshot_name(sid))  # raced a prune's start: again, full
            if not full:
                raise FullRefsRequired("a prune started: commit again listing every chunk")

    async def _revive(self, refs: set[bytes]) -> None:
        """Bring back from trash every pack holding one of `refs` (a full commit needs it)."""
        async for name in self.store.list(TRASH_PACKS):
            with contextlib.suppress(ObjectNotFound):  # another commit brought it back first
                if await self._holds_any(name, refs):
                    await self._untrash(name)

    async def _holds_any(self, name: str, refs: set[bytes]) -> bool:
        async def read(offset: int, length: int) -> bytes:
            return await self.store.get_range(name, offset, length)

        info = await read_pack_info_ranged(read, (await self.store.stat(name)).size)
        return any(bytes(e.chunk_id) in refs for e in info.entries)

    async def prune_lock(self, holder: str, ttl: float) -> dict[str, Any]:
        n, held = await self._log()
        if self._live(held) and held["holder"] != holder:
            raise PruneLocked(
                f"another prune ({held['holder']}) holds {self.location}/{GENERATIONS} until "
                f"{held['expires']:.0f}"
            )
        now = self.clock.time()
        doc = {"holder": holder, "expires": now + ttl}
        return {**doc, "since": now, "generation": await self._append(n, doc)}

    async def prune_release(self, holder: str) -> None:
        n, held = await self._log()
        if held.get("holder") != holder:
            return
        n = await self._append(n, {"holder": None, "expires": 0})
        await PruneLog(self.store, self.location).tidy(n)

    async def prune_schedule(self, holder: str, packs: Sequence[PackId]) -> dict[str, Any]:
        n, held = await self._log()
        if not self._live(held) or held["holder"] != holder:
            raise PruneLocked("this prune does not hold the lock (expired or taken): run it again")
        scheduled, absent = [], []
        for pack_id in packs:
            name, trash = pack_name(pack_id), f"{TRASH_PACKS}/{pack_id.hex()}"
            try:  # the trash's time starts the undelete window
                if not await self.store.move(name, self.store, trash, mtime=self.clock.time()):
                    await self.store.delete(name)  # an interrupted prune's copy is in trash
            except ObjectNotFound:
                absent.append(pack_id.hex())
                continue
            scheduled.append(pack_id.hex())
        generation = await self._append(n, held)
        return {"scheduled": scheduled, "kept": [], "absent": absent, "generation": generation}

    async def _trashed(self) -> AsyncIterator[SnapshotId]:
        async for name in self.store.list(TRASH):
            try:
                yield SnapshotId.parse(name.rsplit("/", 1)[-1])
            except ValueError:
                continue

    async def _trash_doc(self, sid: SnapshotId) -> dict[str, Any]:
        scheduled = (await self.store.stat(_trash(sid))).mtime
        return {
            "kind": "snapshot",
            "id": sid.hex(),
            "scheduled": scheduled,
            "purge_after": scheduled + UNDELETE_WINDOW,
        }

    async def close(self) -> None:
        await self.store.close()


def _trash(sid: SnapshotId) -> str:
    return f"{TRASH}/{sid.hex()}"


def _unique_prefix(ids: Sequence[SnapshotId], name: str) -> SnapshotId:
    found = [s for s in ids if s.hex().startswith(name.lower())]
    if len(found) != 1:
        raise NotFound(f"no unique snapshot scheduled for deletion matches {name!r}")
    return found[0]
