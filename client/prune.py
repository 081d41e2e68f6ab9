"""Prune: reclaim the space of chunks no snapshot references, while others keep backing up.

Owns the client half of the prune protocol (docs/design.md §14): take the backend's prune lock
(which moves the generation and makes every concurrent commit list all its chunks), bring the
index up to date with the packs the backend lists, mark every chunk the snapshots reference in
a temporary LMDB (`LiveSet`: sorted on disk, so memory stays flat at 10⁷ chunks), count live
bytes per pack by merging that set with the index in id order, plan with
`engine.prune_plan`, repack (copying the live sealed blobs as they are into new packs, under a
new sealed header: only the client can seal one), and hand the dead packs to the backend to
schedule; the server keeps back any pack a commit received since the lock named. Every step is
idempotent, so a prune killed anywhere is finished by the next run. Must not delete anything
itself: the backend schedules, and destroys after the undelete window.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from client.heap import trim
from client.repository import Repository
from client.restore import catalogue
from engine import blob
from engine.backend import LocalBackend, Pruning
from engine.catalogue import PACK_HEADER_AD
from engine.errors import IntegrityError, ObjectNotFound, UsageError
from engine.ids import ChunkId, PackId
from engine.pack import (
    TRAILER_SIZE,
    ManifestEntry,
    header_entries,
    read_pack_info_ranged,
)
from engine.packer import BackendSink, Packer
from engine.prune_plan import MaxUnused, PackUse, Plan, plan

LOCK_TTL = 600.0  # seconds; renewed every third of it while the prune runs
SCHEDULE_BATCH = 500  # packs per schedule call (the server reads each manifest under its lock)
RANGE_MAX = 4 << 20  # bytes per ranged read of a pack being repacked
RANGE_GAP = 64 << 10  # dead bytes read through rather than starting another range


class LiveSet:
    """Chunk ids on disk (LMDB in a temp folder), iterated in id order."""

    initial_map = 64 << 20

    def __init__(self, folder: Path) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="prune-live-", dir=folder))
        # writemap: dirty pages are written in the file's mapping, not copied into buffers
        # LMDB keeps (and never frees) for its next transactions: without it a 50,000-id
        # batch into a 10⁶-id set leaves tens of MiB of anonymous memory behind. The file is
        # as large as the map (sparse), so the map starts small and doubles when full.
        self.map_size = self.initial_map
        self.env = lmdb.open(
            str(self.folder), map_size=self.map_size, max_dbs=1, sync=False, writemap=True
        )
        self.count = 0

    def add(self, ids: Iterable[ChunkId]) -> None:
        self.add_new(ids)

    def add_new(self, ids: Iterable[ChunkId]) -> list[bool]:
        """Add the ids; for each, whether it was new."""
        batch = [bytes(cid) for cid in ids]
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    out = [bool(txn.put(cid, b"", overwrite=False)) for cid in batch]
                break
            except lmdb.MapFullError:  # the transaction was aborted: grow, add it again
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)
        self.count += sum(out)
        return out

    def __contains__(self, cid: bytes) -> bool:
        with self.env.begin() as txn:
            return txn.get(bytes(cid)) is not None

    def __iter__(self) -> Iterator[bytes]:
        with self.env.begin() as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                yield bytes(key)

    def close(self) -> None:
        self.env.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class PruneReport:
    dry_run: bool
    snapshots: int = 0
    chunks_live: int = 0
    plan: Plan = field(default_factory=Plan)
    packs_written: int = 0
    bytes_written: int = 0
    scheduled: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # a concurrent backup named their chunks
    absent: list[str] = field(default_factory=list)  # gone at the server already: dropped
    bytes_reclaimed: int = 0
    duration_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "snapshots": self.snapshots,
            "chunks_live": self.chunks_live,
            **self.plan.as_json(),
            "packs_written": self.packs_written,
            "bytes_written": self.bytes_written,
            "packs_scheduled": len(self.scheduled),
            "packs_kept_for_concurrent_backups": self.kept,
            "packs_absent": self.absent,
            "bytes_reclaimed": self.bytes_reclaimed,
            "duration_s": self.duration_s,
        }


def default_holder(repo: Repository) -> str:
    """Who prunes: this machine and its cache, so a prune killed here and run again takes
    over its own lock at once, and one from another machine is refused until it expires."""
    return f"{socket.gethostname()}:{repo.index.env.path()}"


async def prune(
    repo: Repository,
    *,
    max_unused: MaxUnused,
    dry_run: bool = False,
    holder: str | None = None,
    scratch: Path | None = None,
) -> PruneReport:
    backend = repo.backend
    if not isinstance(backend, Pruning):
        raise UsageError(f"{backend.location or 'this repository'} cannot be pruned")
    start = time.monotonic()
    holder = holder or default_holder(repo)
    report = PruneReport(dry_run)
    async with _locked(backend, holder, dry_run):
        lost = await refresh(repo)
        live = LiveSet(scratch or Path(repo.index.env.path()).parent)
        try:
            report.snapshots = await _mark(repo, live)
            report.chunks_live = live.count
            report.plan = plan(list(usage(repo, live)), max_unused)
            if not dry_run:
                await _sources_readable(repo, report.plan.repack)
                await _repack(repo, report, live)
                await _schedule(repo, backend, holder, report, lost)
        finally:
            live.close()
        if isinstance(backend, LocalBackend) and not dry_run:
            await backend.purge_trash(backend.clock.time())
    report.duration_s = round(time.monotonic() - start, 3)
    return report


@contextlib.asynccontextmanager
async def _locked(backend: Pruning, holder: str, dry_run: bool) -> AsyncIterator[None]:
    """The prune lock, renewed while held; a dry run takes none (it changes nothing, and the
    lock would make every concurrent commit list all its chunks)."""
    if dry_run:
        yield
        return
    await backend.prune_lock(holder, LOCK_TTL)

    async def renew() -> None:
        while True:
            await asyncio.sleep(LOCK_TTL / 3)
            await backend.prune_lock(holder, LOCK_TTL)

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await backend.prune_release(holder)  # not on failure: the lock expires, or we retake it


async def refresh(repo: Repository) -> list[PackId]:
    """The index exactly as the backend's packs are now (after the lock: nothing is removed
    from here on but by this prune). Returns the listed packs this index lacks that no site
    can read: lost at the server. They are scheduled with the dead ones (and come back
    `absent`) unless a snapshot needs a chunk no readable pack holds: then `usage` stops
    the prune."""
    listed = {p async for p in repo.backend.list_packs()}
    repo.forget_packs(repo.index.indexed_packs() - listed)
    lost: list[PackId] = []
    await repo.sync_index(lost)
    repo.index.drop_unknown()
    return sorted(lost)


async def _mark(repo: Repository, live: LiveSet) -> int:
    """Add every chunk the snapshots reference to `live`, one snapshot and 50,000 ids at a
    time; return how many snapshots."""
    count = 0
    async for _, _, body in repo.each_snapshot():
        count += 1
        live.add(cid for cid, _ in body.tree)
        batch: list[ChunkId] = []
        async for entry in catalogue(repo, body):
            batch.extend(cid for cid, _ in entry.chunks)
            if len(batch) >= 50_000:
                live.add(batch)
                batch = []
        live.add(batch)
    return count


def usage(repo: Repository, live: LiveSet) -> Iterator[PackUse]:
    """Live and total blob bytes per pack, by merging the live set with the index (both in id
    order). A chunk's live copy is its location; copies in other packs are unused."""
    sizes = dict(repo.index.pack_sizes())
    blobs = dict.fromkeys(sizes, 0)
    used = dict.fromkeys(sizes, 0)
    marked = iter(live)
    nxt = next(marked, None)
    missing = 0
    for cid, loc, others in repo.index.locations():
        key = bytes(cid)
        while nxt is not None and nxt < key:
            missing += 1  # referenced, in no pack
            nxt = next(marked, None)
        for where in (loc, *others):
            if where.pack_id in blobs:
                blobs[where.pack_id] += where.length
        if nxt == key:
            if loc.pack_id in used:
                used[loc.pack_id] += loc.length
            else:
                missing += 1
            nxt = next(marked, None)
    missing += sum(1 for _ in marked) + (nxt is not None)
    if missing:
        raise IntegrityError(
            f"{missing} chunks that snapshots reference are in no pack: nothing was pruned "
            "(run `dicomvault check`)"
        )
    for pack_id, size in sizes.items():
        yield PackUse(pack_id, size, blobs[pack_id], used[pack_id])


async def _sources_readable(repo: Repository, sources: list[PackId]) -> None:
    """Before anything is written: every pack to repack can be read (its tail) at some site.
    A pack that holds chunks snapshots need and that no site has stops the prune here, with
    nothing changed, rather than after other packs were repacked."""
    for source in sources:
        try:
            await repo.backend.get_pack_tail(source, TRAILER_SIZE)
        except ObjectNotFound:
            raise ObjectNotFound(
                f"pack {source.hex()} holds chunks that snapshots need but is gone at "
                f"{repo.backend.location} and at every other site: nothing was pruned "
                "(run `dicomvault check`; the chunk server's scrub heals a pack from a peer)"
            ) from None


async def _repack(repo: Repository, report: PruneReport, live: LiveSet) -> None:
    """Copy each live blob whose location is a pack being repacked into new packs, sealed
    blobs as they are (their id is their associated data, so no re-encryption), then make the
    new copies the locations. Memory: one range of a source pack (`_live_blobs`), the pack
    being built, and the ids of its blobs (their locations move once it is uploaded)."""
    if not report.plan.repack:
        return
    written: set[PackId] = set()

    async def put(pack_id: PackId, data: bytes | memoryview) -> None:
        await repo.backend.put_pack(pack_id, data)
        written.add(pack_id)

    packer = Packer(repo.key, repo.index, BackendSink(put))
    sizes = dict(repo.index.pack_sizes())
    moved: list[ChunkId] = []
    for source in report.plan.repack:
        size = sizes[source]
        async for cid, sealed, raw_len, content in _live_blobs(repo, source, size, live, packer):
            packer.add(cid, sealed, raw_len, content)
            moved.append(cid)
            if packer.full:
                await packer.flush()
                _move(repo, moved, written)
                trim()
    await packer.flush()
    _move(repo, moved, written)
    report.packs_written, report.bytes_written = packer.packs_written, packer.bytes_written


async def _live_blobs(
    repo: Repository, source: PackId, size: int, live: LiveSet, packer: Packer
) -> AsyncIterator[tuple[ChunkId, bytes, int, int]]:
    """The blobs of `source` (`size` bytes, as indexed) a snapshot needs whose live copy is this
    one, not yet copied: read by ranges (`_runs`) from its manifest and sealed header, never
    the whole pack."""

    async def read(offset: int, length: int) -> bytes:
        data = await repo.backend.get_pack_range(source, offset, length)
        if len(data) != length:
            raise IntegrityError(f"pack {source.hex()} is truncated")
        return data

    info = await read_pack_info_ranged(read, size)
    sealed_header = await read(info.header_offset, info.header_len)
    header = header_entries(blob.open_plaintext(repo.key, PACK_HEADER_AD, sealed_header))
    wanted = []
    for e, kind in zip(info.entries, header, strict=True):
        loc = repo.index.lookup(e.chunk_id)
        if loc is None or loc.pack_id != source or e.chunk_id in packer:
            continue  # its live copy is elsewhere
        if e.chunk_id in live:  # else no snapshot needs it
            wanted.append((e, kind))
    for run in _runs(sorted(wanted, key=lambda w: w[0].offset)):
        start = run[0][0].offset
        data = await read(start, run[-1][0].offset + run[-1][0].length - start)
        for e, (raw_len, content) in run:
            yield e.chunk_id, data[e.offset - start : e.offset - start + e.length], raw_len, content


def _runs(
    wanted: list[tuple[ManifestEntry, tuple[int, int]]],
) -> Iterator[list[tuple[ManifestEntry, tuple[int, int]]]]:
    """Blobs in offset order grouped into ranges of at most RANGE_MAX bytes, reading through
    gaps (dead blobs) of at most RANGE_GAP rather than starting another range."""
    run: list[tuple[ManifestEntry, tuple[int, int]]] = []
    for w in wanted:
        e = w[0]
        if run:
            start, end = run[0][0].offset, run[-1][0].offset + run[-1][0].length
            if e.offset - end > RANGE_GAP or e.offset + e.length - start > RANGE_MAX:
                yield run
                run = []
        run.append(w)
    if run:
        yield run


def _move(repo: Repository, moved: list[ChunkId], written: set[PackId]) -> None:
    """The uploaded new copies of `moved` become their locations (the old ones are scheduled
    next); `moved` is emptied."""
    moves = []
    for cid in moved:
        copy = next((o for o in repo.index.others(cid) if o.pack_id in written), None)
        if copy is not None:
            moves.append((cid, copy))
    repo.index.prefer_many(moves)
    moved.clear()


async def _schedule(
    repo: Repository, backend: Pruning, holder: str, report: PruneReport, lost: list[PackId]
) -> None:
    doomed = report.plan.delete + report.plan.repack + lost
    sizes = dict(repo.index.pack_sizes())
    for i in range(0, len(doomed), SCHEDULE_BATCH):
        answer = await backend.prune_schedule(holder, doomed[i : i + SCHEDULE_BATCH])
        gone = {PackId.parse(h) for h in answer["scheduled"] + answer["absent"]}
        report.scheduled += answer["scheduled"]
        report.kept += answer["kept"]
        report.absent += answer["absent"]
        report.bytes_reclaimed += sum(sizes.get(PackId.parse(h), 0) for h in answer["scheduled"])
        repo.forget_packs(gone)
