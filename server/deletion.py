"""Deletions that can be undone: what forget and prune schedule, what undelete brings back, what
the purge destroys once the undelete window has passed, and the prune protocol's server half
(generation, lock, exclusion and revival; docs/design.md §14).

Owns the `deletions` table (`repo ‖ 0 ‖ kind ‖ 0 ‖ id → JSON {kind, id, scheduled,
purge_after, summary, by}`). Scheduling a snapshot takes its row out of the `snapshots` table
in the same transaction (so listings, `latest` and parents no longer see it) and keeps the
row's summary here; the commit record stays in the store untouched. Undelete puts the row
back. Scheduling a pack takes its `packs` row and the `chunks` rows pointing into it out of
the index (so `missing` reports those chunks and `GET packs/<id>` answers 404) and keeps the
chunk rows in `condemned` (chunk → where it was), so a commit that still needs a chunk revives
its pack. Only `purge_due`, run on the server's injected clock, deletes stored objects, and only
rows whose `purge_after` has passed; an object the store still locks (S3 Object Lock,
`ObjectLocked`) keeps its row, due again at the lock's date. The window is the provider's
(`undelete_days` in server.toml); nothing a practice sends can shorten it. Must not know
HTTP or the alert channels: the alert service reads `scheduled_since` like any other fact.
On a store several nodes share, these tables are this node's cache of the schedules kept in
the store (`server.deletion_shared`), like the index is of the packs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from engine.commit import CommitRecord, snapshot_name
from engine.errors import DicomvaultError, NotFound, ObjectLocked, ObjectNotFound
from engine.ids import ID_SIZE, ChunkId, PackId, SnapshotId
from engine.pack import ManifestEntry, pack_name, read_pack_info_ranged
from engine.protocol.errors import PruneLocked
from server.index import ServerIndex, prefixed
from server.repos import Repositories, Repository

SNAPSHOT = "snapshot"
PACK = "pack"
META = "meta"  # generation and prune lock rows, not deletions
DAY = 86_400.0
# What a practice's `dicomvault stats` reports (the server holds no key to count them itself).
STATS_KEYS = ("files_bytes", "raw_bytes", "stored_bytes", "dedup_ratio", "reclaimable_bytes")
_LOCATION = struct.Struct(f"<{ID_SIZE}sII")  # as server.index's chunks rows
_PACK_ROW = struct.Struct("<Qd")


async def pack_entries(repo: Repository, pack_id: PackId) -> tuple[ManifestEntry, ...]:
    """A stored pack's manifest, by two ranged reads of the store."""
    name = pack_name(pack_id)
    size = (await repo.store.stat(name)).size

    async def read(offset: int, length: int) -> bytes:
        return await repo.store.get_range(name, offset, length)

    return (await read_pack_info_ranged(read, size)).entries


async def entries_or_forget(
    deletions: Deletions, repo: Repository, pack_id: PackId
) -> tuple[ManifestEntry, ...] | None:
    """An indexed pack's manifest; None if its file is gone (purged by another node, disk
    damage, an operator's `rm`, a bucket object deleted behind the server's back): then its
    rows leave the index (`Deletions.forget_object`), so `missing` names its chunks again."""
    try:
        return await pack_entries(repo, pack_id)
    except ObjectNotFound:
        await asyncio.to_thread(deletions.forget_object, repo.name, PACK, pack_id.hex())
        return None


@dataclass(frozen=True, slots=True)
class Window:
    """The undelete window in seconds (the provider's, from server.toml)."""

    seconds: float = 14 * DAY


def _key(repo: str, kind: str, ident: str) -> bytes:
    return f"{repo}\0{kind}\0{ident}".encode()


class Deletions:
    def __init__(self, index: ServerIndex) -> None:
        self.index = index
        self.env, self.db = index.env, index.dbs["deletions"]
        self.condemned = index.dbs["condemned"]
        # One per repository: commit checks, scheduling, revival and the purge never interleave.
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, repo: str) -> asyncio.Lock:
        return self._locks.setdefault(repo, asyncio.Lock())

    # -- scheduling and undoing ------------------------------------------------------------

    def schedule_snapshots(
        self, repo: str, ids: Iterable[SnapshotId], now: float, window: Window, by: str
    ) -> list[dict[str, Any]]:
        """Schedule every snapshot for deletion, all or none: an id that is neither listed nor
        already scheduled raises `NotFound` (exit 16) before anything changes. A snapshot
        already scheduled keeps its first schedule (a repeated forget is a no-op)."""
        snaps = self.index.dbs["snapshots"]
        out = []
        with self.env.begin(write=True) as txn:
            for sid in ids:
                key = _key(repo, SNAPSHOT, sid.hex())
                old = txn.get(key, db=self.db)
                if old is not None:
                    out.append(json.loads(old))
                    continue
                row_key = repo.encode() + b"\0" + sid
                summary = txn.get(row_key, db=snaps)
                if summary is None:
                    raise NotFound(f"no snapshot {sid.hex()}")  # the transaction is aborted
                doc = {
                    "kind": SNAPSHOT,
                    "id": sid.hex(),
                    "scheduled": now,
                    "purge_after": now + window.seconds,
                    "summary": json.loads(summary),
                    "by": by,
                }
                txn.delete(row_key, db=snaps)
                txn.put(key, json.dumps(doc).encode(), db=self.db)
                out.append(doc)
        return out

    def undelete(self, repo: str, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Bring back the named scheduled snapshots (by full id or unique prefix), or all of a
        repository's when `ids` is None. Unknown names raise `NotFound` before any change.
        Scheduled packs are not named here (`revive_all_packs` brings them back)."""
        pending = [d for d in self.pending(repo) if d["kind"] == SNAPSHOT and _undoable(d)]
        chosen = pending if ids is None else [_one(pending, name) for name in ids]
        snaps = self.index.dbs["snapshots"]
        with self.env.begin(write=True) as txn:
            for doc in chosen:
                sid = SnapshotId.parse(doc["id"])
                txn.put(repo.encode() + b"\0" + sid, json.dumps(doc["summary"]).encode(), db=snaps)
                txn.delete(_key(repo, doc["kind"], doc["id"]), db=self.db)
        return chosen

    # -- reading ---------------------------------------------------------------------------

    def pending(self, repo: str) -> list[dict[str, Any]]:
        return [doc for _, doc in self._scan(repo) if doc.get("kind") != META]

    def is_scheduled(self, repo: str, kind: str, ident: str) -> bool:
        with self.env.begin(db=self.db) as txn:
            return txn.get(_key(repo, kind, ident)) is not None

    def scheduled_since(self, repo: str, since: float) -> int:
        """How many objects of the repository were scheduled at or after `since`."""
        return sum(
            1 for d in self.pending(repo) if d["kind"] == SNAPSHOT and d["scheduled"] >= since
        )

    def _scan(self, repo: str) -> Iterator[tuple[bytes, dict[str, Any]]]:
        with self.env.begin(db=self.db) as txn:
            for key, value in prefixed(txn.cursor(), repo.encode() + b"\0"):
                yield key, json.loads(value)

    # -- purging ---------------------------------------------------------------------------

    async def purge_due(
        self,
        repos: Repositories,
        now: float,
        on_destroyed: Callable[[str, dict[str, Any]], None] | None = None,
        still_scheduled: Callable[[Repository, dict[str, Any]], Awaitable[bool]] | None = None,
    ) -> list[dict[str, Any]]:
        """Destroy every scheduled object whose window has passed: the stored object first,
        then `on_destroyed(repo, doc)` (the replication queue: peers apply the deletion), then
        its row, so a purge killed anywhere is finished, and told, by the next one. An object
        `still_scheduled` denies (another node revived it) is left alone."""
        done = []
        for name in repos.names():
            repo = repos.get(name)
            for doc in self.pending(name):
                if doc["purge_after"] > now:
                    continue
                async with self.lock(name):
                    if still_scheduled is not None and not await still_scheduled(repo, doc):
                        continue
                    try:
                        destroyed = await self._purge_one(repo, doc)
                    except ObjectLocked as e:  # S3 Object Lock: not destroyed; try at its date
                        self._postpone(name, doc, e.until)
                        continue
                    if destroyed and on_destroyed is not None:
                        on_destroyed(name, doc)
                    self._drop(name, doc["kind"], doc["id"])
                done.append({**doc, "repo": name})
        return done

    async def _purge_one(self, repo: Repository, doc: dict[str, Any]) -> bool:
        if doc["kind"] == PACK:
            return await self._purge_pack(repo, PackId.parse(doc["id"]))
        # ObjectNotFound: deleted by a purge killed before it dropped the row
        with contextlib.suppress(ObjectNotFound):
            await repo.store.delete(snapshot_name(SnapshotId.parse(doc["id"])))
        return True

    def _postpone(self, repo: str, doc: dict[str, Any], until: float) -> None:
        """Keep the row of an object the store still locks, due again at its retain-until."""
        later = {**doc, "purge_after": max(until, doc["purge_after"]), "locked_until": until}
        with self.env.begin(write=True, db=self.db) as txn:
            txn.put(_key(repo, doc["kind"], doc["id"]), json.dumps(later).encode())

    async def _purge_pack(self, repo: Repository, pack_id: PackId) -> bool:
        """Condemned rows first, then the object (the row last, by the caller): a purge killed
        anywhere is finished by the next. A pack indexed again since (a client re-uploaded it)
        is left alone: only its schedule is dropped (False)."""
        if self.index.has_pack(repo.name, pack_id):
            return False
        try:
            entries = await pack_entries(repo, pack_id)
        except ObjectNotFound:  # gone, or hidden by a purge that met a lock: destroy what is left
            with contextlib.suppress(ObjectNotFound):
                await repo.store.delete(pack_name(pack_id))
            return True
        self._uncondemn(repo.name, pack_id, entries)
        with contextlib.suppress(ObjectNotFound):
            await repo.store.delete(pack_name(pack_id))
        return True

    def put_schedule(self, repo: str, doc: dict[str, Any]) -> None:
        """Record a schedule made elsewhere (another node of a shared store): a snapshot's row
        leaves `snapshots`; a pack this index does not hold only gets its row (catch-up then
        skips it)."""
        with self.env.begin(write=True) as txn:
            if doc["kind"] == SNAPSHOT:
                sid = SnapshotId.parse(doc["id"])
                txn.delete(repo.encode() + b"\0" + sid, db=self.index.dbs["snapshots"])
            txn.put(_key(repo, doc["kind"], doc["id"]), json.dumps(doc).encode(), db=self.db)

    def forget_object(self, repo: str, kind: str, ident: str) -> None:
        """An object this index still lists that is gone from the store (another node purged
        it, docs/design.md §14, several nodes; or its file was lost): its snapshot row, or its
        pack row and every chunk row pointing into it (a scan of the repository's chunk rows:
        the manifest is gone with the pack), and any schedule row."""
        prefix = repo.encode() + b"\0"
        chunks = self.index.dbs["chunks"]
        with self.env.begin(write=True) as txn:
            txn.delete(_key(repo, kind, ident), db=self.db)
            if kind == SNAPSHOT:
                txn.delete(prefix + SnapshotId.parse(ident), db=self.index.dbs["snapshots"])
                return
            pack_id = PackId.parse(ident)
            if txn.delete(prefix + pack_id, db=self.index.dbs["packs"]):
                stale = [k for k, loc in prefixed(txn.cursor(db=chunks), prefix)
                         if loc[:ID_SIZE] == pack_id]  # fmt: skip
                for key in stale:
                    txn.delete(prefix + key, db=chunks)
            for key in [k for k, loc in prefixed(txn.cursor(db=self.condemned), prefix)
                        if loc[:ID_SIZE] == pack_id]:  # fmt: skip
                txn.delete(prefix + key, db=self.condemned)

    def drop(self, repo: str, kind: str, ident: str) -> None:
        """Forget a schedule whose object is gone (purged by another node)."""
        self._drop(repo, kind, ident)

    def _drop(self, repo: str, kind: str, ident: str) -> None:
        with self.env.begin(write=True, db=self.db) as txn:
            txn.delete(_key(repo, kind, ident))

    def _uncondemn(self, repo: str, pack_id: PackId, entries: Iterable[ManifestEntry]) -> None:
        prefix = repo.encode() + b"\0"
        with self.env.begin(write=True, db=self.condemned) as txn:
            for e in entries:
                raw = txn.get(prefix + e.chunk_id)
                if raw is not None and raw[:ID_SIZE] == pack_id:
                    txn.delete(prefix + e.chunk_id)

    # -- packs (prune) ---------------------------------------------------------------------

    def schedule_pack(
        self,
        repo: str,
        pack_id: PackId,
        entries: Iterable[ManifestEntry],
        now: float,
        window: Window,
        by: str,
    ) -> dict[str, Any] | None:
        """Take a pack out of the index and schedule it, in one transaction; None if the pack
        is not indexed (already scheduled, or never here)."""
        prefix = repo.encode() + b"\0"
        chunks, packs = self.index.dbs["chunks"], self.index.dbs["packs"]
        with self.env.begin(write=True) as txn:
            row = txn.get(prefix + pack_id, db=packs)
            if row is None:
                return None
            size, arrival = _PACK_ROW.unpack(row)
            for e in entries:
                loc = txn.get(prefix + e.chunk_id, db=chunks)
                if loc is not None and loc[:ID_SIZE] == pack_id:
                    txn.delete(prefix + e.chunk_id, db=chunks)
                    txn.put(prefix + e.chunk_id, loc, db=self.condemned)
            txn.delete(prefix + pack_id, db=packs)
            doc = {"kind": PACK, "id": pack_id.hex(), "scheduled": now,
                   "purge_after": now + window.seconds, "size": size, "arrival": arrival,
                   "by": by}  # fmt: skip
            txn.put(_key(repo, PACK, pack_id.hex()), json.dumps(doc).encode(), db=self.db)
        return doc

    def revive_pack_rows(
        self, repo: str, pack_id: PackId, entries: Iterable[ManifestEntry]
    ) -> bool:
        """Put a scheduled pack back in the index (its chunk rows where none is, its `packs`
        row) and drop its schedule; False if it was not scheduled."""
        prefix = repo.encode() + b"\0"
        chunks, packs = self.index.dbs["chunks"], self.index.dbs["packs"]
        with self.env.begin(write=True) as txn:
            raw = txn.get(_key(repo, PACK, pack_id.hex()), db=self.db)
            if raw is None:
                return False
            doc = json.loads(raw)
            for e in entries:
                key = prefix + e.chunk_id
                if txn.get(key, db=chunks) is None:
                    txn.put(key, _LOCATION.pack(pack_id, e.offset, e.length), db=chunks)
                old = txn.get(key, db=self.condemned)
                if old is not None and old[:ID_SIZE] == pack_id:
                    txn.delete(key, db=self.condemned)
            txn.put(prefix + pack_id, _PACK_ROW.pack(doc["size"], doc["arrival"]), db=packs)
            txn.delete(_key(repo, PACK, pack_id.hex()), db=self.db)
        return True

    async def revive_pack(self, repo: Repository, pack_id: PackId) -> bool:
        entries = await pack_entries(repo, pack_id)
        return await asyncio.to_thread(self.revive_pack_rows, repo.name, pack_id, entries)

    def condemned_packs(self, repo: str, chunk_ids: Iterable[bytes]) -> set[PackId]:
        """The scheduled packs that held these chunks."""
        prefix = repo.encode() + b"\0"
        with self.env.begin(db=self.condemned) as txn:
            found = (txn.get(prefix + bytes(c)) for c in chunk_ids)
            return {PackId(raw[:ID_SIZE]) for raw in found if raw is not None}

    async def revive_for(self, repo: Repository, chunk_ids: list[bytes]) -> int:
        """Revive every scheduled pack holding one of `chunk_ids` (a commit needs them)."""
        packs = await asyncio.to_thread(self.condemned_packs, repo.name, chunk_ids)
        for pack_id in packs:
            await self.revive_pack(repo, pack_id)
        return len(packs)

    async def revive_all_packs(self, repo: Repository) -> int:
        """Undelete of a snapshot brings back every scheduled pack: the chunks it needs are
        among them, and a later prune schedules again what is still dead."""
        docs = [d for d in self.pending(repo.name) if d["kind"] == PACK and _undoable(d)]
        for doc in docs:
            await self.revive_pack(repo, PackId.parse(doc["id"]))
        return len(docs)

    # -- the prune protocol: generation and lock -------------------------------------------

    def _meta(self, repo: str, name: str) -> dict[str, Any] | None:
        with self.env.begin(db=self.db) as txn:
            raw = txn.get(_key(repo, META, name))
        return None if raw is None else dict(json.loads(raw))

    def _put_meta(self, repo: str, name: str, doc: dict[str, Any] | None) -> None:
        with self.env.begin(write=True, db=self.db) as txn:
            if doc is None:
                txn.delete(_key(repo, META, name))
            else:
                txn.put(_key(repo, META, name), json.dumps({"kind": META, **doc}).encode())

    def put_stats(self, repo: str, doc: dict[str, Any]) -> None:
        self._put_meta(repo, "stats", doc)

    def stats(self, repo: str) -> dict[str, Any] | None:
        doc = self._meta(repo, "stats")
        if doc is not None:
            doc.pop("kind", None)
        return doc

    def generation(self, repo: str) -> int:
        doc = self._meta(repo, "generation")
        return int(doc["generation"]) if doc else 0

    def bump(self, repo: str) -> int:
        g = self.generation(repo) + 1
        self._put_meta(repo, "generation", {"generation": g})
        return g

    def prune_lock(self, repo: str, now: float) -> dict[str, Any] | None:
        """The live prune lock, if any (an expired one counts as none)."""
        doc = self._meta(repo, "lock")
        return doc if doc is not None and doc["expires"] > now else None

    def take_lock(self, repo: str, holder: str, ttl: float, now: float) -> dict[str, Any]:
        """Take (or renew) the prune lock and bump the generation. Refused while another
        holder's lock lives; the same holder (a prune killed and run again) takes it over."""
        held = self.prune_lock(repo, now)
        if held is not None and held["holder"] != holder:
            raise PruneLocked(
                f"another prune ({held['holder']}) holds the lock until {held['expires']:.0f}"
            )
        since = held["since"] if held is not None else now
        doc = {"holder": holder, "since": since, "expires": now + ttl}
        self._put_meta(repo, "lock", doc)
        return {**doc, "generation": self.bump(repo)}

    def check_lock(self, repo: str, holder: str, now: float) -> dict[str, Any]:
        held = self.prune_lock(repo, now)
        if held is None or held["holder"] != holder:
            raise PruneLocked("this prune does not hold the lock (expired or taken): run it again")
        return held

    def release_lock(self, repo: str, holder: str) -> None:
        doc = self._meta(repo, "lock")
        if doc is not None and doc["holder"] == holder:
            self._put_meta(repo, "lock", None)

    def commit_is_stale(self, repo: str, generation: int, now: float) -> bool:
        """A commit listing only changed refs is trusted only from a client whose index was
        reconciled at the current generation, and never while a prune runs."""
        return generation < self.generation(repo) or self.prune_lock(repo, now) is not None


async def refs_since(index: ServerIndex, repo: Repository, since: float) -> set[bytes]:
    """Every chunk named by the commits received at or after `since` (during a prune these
    list every chunk of their snapshot: stale commits must)."""
    out: set[bytes] = set()
    rows = await asyncio.to_thread(lambda: list(index.snapshots(repo.name)))
    for sid, summary in rows:
        if float(summary.get("received", 0)) < since:
            continue
        try:
            record = CommitRecord.decode(await repo.store.get(snapshot_name(sid)))
        except DicomvaultError:
            continue
        out.update(bytes(r) for r in record.refs)
    return out


def chunk_ids(entries: Iterable[ManifestEntry]) -> list[ChunkId]:
    return [e.chunk_id for e in entries]


def _undoable(doc: dict[str, Any]) -> bool:
    """Not yet purged: a purge that met an Object Lock has hidden the object already and only
    waits for the store to let it destroy it (`locked_until`)."""
    return "locked_until" not in doc


def _one(pending: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [d for d in pending if d["id"].startswith(name.lower())]
    if len(found) != 1:
        raise NotFound(f"no unique snapshot scheduled for deletion matches {name!r}")
    return found[0]
