"""Several nodes on one store: how a node learns what the other nodes stored.

The LMDB index is a per-node cache. This module owns the pack log each node writes beside the
packs (`packlog/<stamp>-<pack id>`: one small object per accepted pack, written before the
upload is acknowledged, holding the pack's manifest entries) and the catch-up that reads it: a
node that meets a chunk or pack its index lacks lists the log after its cursor (less a window
for clock skew between nodes), and indexes each pack it does not know whose bytes are in the
store, without reading the pack. Old entries are folded into segments (`packseg/`), then
deleted; every catch-up lists the segments after the log, so none is missed. Commits are
caught up by listing `snapshots/`, token hashes by
reading `tokens/<hash>` from the site store. What this node holds scheduled for deletion is
never indexed or listed again (server.deletion_shared keeps those schedules in step). Must
not know HTTP or decide who may do what.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from engine.clock import SYSTEM, Clock
from engine.commit import CommitRecord
from engine.errors import DicomvaultError, FormatError, ObjectNotFound
from engine.ids import ID_SIZE, ChunkId, PackId, SnapshotId
from engine.pack import ManifestEntry, pack_name
from engine.store.base import Store
from server.deletion import PACK as PACK_KIND
from server.deletion import SNAPSHOT as SNAP_KIND
from server.deletion import Deletions
from server.index import ServerIndex
from server.reindex import snapshot_summary
from server.repos import Repository

log = logging.getLogger(__name__)

PACKLOG = "packlog"
TOKENS = "tokens"  # in the site store: one object per token hash (hex), the token's JSON doc
FETCHED = "fetched"  # marks a cached token doc another node published
# Pack log entry, version 1: magic ‖ version u8 ‖ pack size u64 ‖ stored time f64 ‖ count u32,
# then per chunk: chunk id (32) ‖ offset u32 ‖ length u32 (40 bytes, as the index's rows).
MAGIC = b"DVPL"
_HEAD = struct.Struct("<4sBQdI")
_ENTRY = struct.Struct(f"<{ID_SIZE}sII")
VERSION = 1
# Entries are named by the writing node's clock: a node lists from its cursor less this much,
# so a node whose clock lags by less than the window, or whose write was slow, is still seen.
WINDOW = 60.0
# A missing-query that finds ids absent catches up at most this often per repository: an
# answer this stale costs only a re-upload, which intake dedups. Commits and pack reads always
# catch up.
MISSING_EVERY = 2.0
PACKSEG = "packseg"
SEGMENT = 1000  # log entries folded into one segment object
PARALLEL = 16  # small reads in flight during a catch-up
LIST_INSTEAD_OF_HEAD = 64  # more unknown packs than this: list packs/ rather than HEAD each
_ZERO = PackId(bytes(ID_SIZE))
# Segment, version 1: magic ‖ version u8 ‖ count u32, then per pack: pack id (32) ‖ entry
# length u32 ‖ the pack's log entry (above).
SEG_MAGIC = b"DVPS"
_SEG_HEAD = struct.Struct("<4sBI")
_SEG_ROW = struct.Struct(f"<{ID_SIZE}sI")
T = TypeVar("T")


def entry_name(stamp: float, pack_id: PackId) -> str:
    """`packlog/<µs since the epoch, 16 hex digits>-<pack id>`: sorted by time, then pack."""
    return f"{PACKLOG}/{int(stamp * 1e6):016x}-{pack_id.hex()}"


def encode_entry(size: int, mtime: float, entries: Sequence[ManifestEntry]) -> bytes:
    head = _HEAD.pack(MAGIC, VERSION, size, mtime, len(entries))
    return head + b"".join(_ENTRY.pack(e.chunk_id, e.offset, e.length) for e in entries)


def decode_entry(data: bytes) -> tuple[int, float, list[ManifestEntry]]:
    if len(data) < _HEAD.size:
        raise FormatError("pack log entry too short")
    magic, version, size, mtime, count = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION or len(data) != _HEAD.size + count * _ENTRY.size:
        raise FormatError("not a version 1 pack log entry")
    rows = _ENTRY.iter_unpack(data[_HEAD.size :])
    return size, mtime, [ManifestEntry(ChunkId(c), o, n) for c, o, n in rows]


def segment_name(first: float, last: float) -> str:
    """`packseg/<last stamp>-<first stamp>`: sorted by the newest entry each covers."""
    return f"{PACKSEG}/{int(last * 1e6):016x}-{int(first * 1e6):016x}"


def _segment_range(name: str) -> tuple[float, float] | None:
    last, _, first = name.rsplit("/", 1)[-1].partition("-")
    try:
        return int(first, 16) / 1e6, int(last, 16) / 1e6
    except ValueError:
        return None


def encode_segment(rows: Sequence[tuple[PackId, bytes]]) -> bytes:
    parts = [_SEG_HEAD.pack(SEG_MAGIC, VERSION, len(rows))]
    for pack_id, entry in rows:
        parts += [_SEG_ROW.pack(pack_id, len(entry)), entry]
    return b"".join(parts)


def decode_segment(data: bytes) -> list[tuple[PackId, bytes]]:
    magic, version, count = _SEG_HEAD.unpack_from(data)
    if magic != SEG_MAGIC or version != VERSION:
        raise FormatError("not a version 1 pack log segment")
    rows, at = [], _SEG_HEAD.size
    for _ in range(count):
        pack, length = _SEG_ROW.unpack_from(data, at)
        at += _SEG_ROW.size
        rows.append((PackId(pack), data[at : at + length]))
        at += length
    return rows


def _segments_after(segmented: float) -> str | None:
    """The listing start that skips every segment whose newest entry is at most `segmented`."""
    return f"{PACKSEG}/{int(segmented * 1e6):016x}-{'f' * 16}" if segmented else None


async def _get_or_none(store: Store, name: str) -> bytes | None:
    """A log entry, or None if it was folded into a segment and deleted since it was listed."""
    try:
        return await store.get(name)
    except ObjectNotFound:
        return None


async def _delete_quietly(store: Store, name: str) -> None:
    with contextlib.suppress(ObjectNotFound):  # another node folded it as well
        await store.delete(name)


def _parse_name(name: str) -> tuple[float, PackId] | None:
    stamp, _, pack = name.rsplit("/", 1)[-1].partition("-")
    try:
        return int(stamp, 16) / 1e6, PackId.parse(pack)
    except ValueError:
        return None


async def log_pack(
    repo: Repository,
    pack_id: PackId,
    size: int,
    mtime: float,
    entries: Sequence[ManifestEntry],
    clock: Clock = SYSTEM,
) -> None:
    """Write a pack's log entry after the pack is stored, before it is acknowledged, stamped
    with the time of writing (so a slow upload is not logged in the past). Only for a store
    other nodes share: a folder one server owns needs no log."""
    if not repo.shared:
        return
    data = await asyncio.to_thread(encode_entry, size, mtime, entries)
    await repo.store.put(entry_name(clock.time(), pack_id), data, mtime=mtime)


@dataclass
class _RepoCursor:
    seen: float | None = None  # the newest entry stamp read; None: never caught up
    segmented: float = 0.0  # stamp up to which segments cover the log (0: none known)
    started: float = float("-inf")  # monotonic start of the last catch-up
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class CatchUpReport:
    listed: int = 0
    packs: int = 0
    chunks: int = 0
    requests: int = 0
    segments_read: int = 0
    segments_written: int = 0
    entries_deleted: int = 0  # log entries removed once folded into a segment
    # The names under packs/ when this catch-up listed them (not a figure; not added up).
    stored: set[str] | None = field(default=None, repr=False, compare=False)

    FIGURES = (
        "listed",
        "packs",
        "chunks",
        "requests",
        "segments_read",
        "segments_written",
        "entries_deleted",
    )

    def add(self, other: CatchUpReport) -> None:
        for name in self.FIGURES:
            setattr(self, name, getattr(self, name) + getattr(other, name))


async def _bounded(calls: Sequence[Callable[[], Awaitable[T]]], limit: int = PARALLEL) -> list[T]:
    """Run `calls` at most `limit` at a time (small GETs and HEADs against the store)."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


class CatchUp:
    """One per node (the app's), holding each repository's cursor into the pack log."""

    def __init__(self, index: ServerIndex, clock: Clock = SYSTEM, segment: int = SEGMENT) -> None:
        self.index, self.clock, self.segment = index, clock, segment
        self._cursors: dict[str, _RepoCursor] = {}
        self.total = CatchUpReport()  # since start, for /metrics, tests and benchmarks

    async def missing(
        self, repo: Repository, ids: Iterable[bytes], *, force: bool = False
    ) -> list[bytes]:
        """The ids neither the index nor, after a catch-up, the pack log knows. Without
        `force` (a missing-query) a catch-up runs at most every `MISSING_EVERY` seconds."""
        absent = await asyncio.to_thread(self.index.missing, repo.name, ids)
        if absent and repo.shared:
            await self.packs(repo, fresh_for=0.0 if force else MISSING_EVERY)
            absent = await asyncio.to_thread(self.index.missing, repo.name, absent)
        return absent

    async def has_pack(self, repo: Repository, pack_id: PackId) -> bool:
        if await asyncio.to_thread(self.index.has_pack, repo.name, pack_id):
            return True
        if not repo.shared:
            return False
        await self.packs(repo)
        return await asyncio.to_thread(self.index.has_pack, repo.name, pack_id)

    async def packs(self, repo: Repository, fresh_for: float = 0.0) -> CatchUpReport:
        """Index the packs other nodes logged since this node's cursor. Callers that arrive
        while a catch-up runs share the next one that starts after they asked; with
        `fresh_for`, one that started that recently is enough."""
        if not repo.shared:
            return CatchUpReport()
        cursor = self._cursors.setdefault(repo.name, _RepoCursor())
        asked = self.clock.monotonic()
        async with cursor.lock:
            if cursor.started > asked - fresh_for:
                return CatchUpReport()  # one that started after we asked has run meanwhile
            cursor.started = self.clock.monotonic()
            report = CatchUpReport()
            if cursor.seen is None:
                await self._read_segments(repo, cursor, report)
            # The log, then the segments written since: an entry deleted before the log's
            # listing (or before its GET) was folded, and its segment put, before that
            # deletion, so the segment listing that follows sees it (design §3.1.3).
            await self._read_log(repo, cursor, report)
            await self._read_segments(repo, cursor, report)
            await self._write_segments(repo, cursor, report)
        self.total.add(report)
        if report.packs:
            log.info("%s: caught up %d packs from the store", repo.name, report.packs)
        return report

    # -- segments: the log's old entries, a thousand to an object -------------------------

    async def _read_segments(
        self, repo: Repository, cursor: _RepoCursor, report: CatchUpReport
    ) -> None:
        """Index the segments whose newest entry is past `cursor.segmented` (all, at first)."""
        after = _segments_after(cursor.segmented)
        names = [n async for n in repo.store.list(PACKSEG, start_after=after)]
        report.requests += 1 + len(names) // 1000
        for name in names:
            covered = _segment_range(name)
            if covered is None or covered[1] <= cursor.segmented:
                continue
            rows = decode_segment(await repo.store.get(name))
            report.requests += 1
            report.segments_read += 1
            await self._index_rows(repo, rows, report)
            cursor.segmented = max(cursor.segmented, covered[1])
            cursor.seen = max(cursor.seen or 0.0, covered[1])

    async def _write_segments(
        self, repo: Repository, cursor: _RepoCursor, report: CatchUpReport
    ) -> None:
        """Fold the log's entries older than two windows into segments of `SEGMENT`: every
        node applies the same rule to the same names, so racing nodes write the same
        segment (write-once), and a fresh node reads a segment per thousand packs."""
        if cursor.seen is None or cursor.seen - cursor.segmented < 2 * WINDOW:
            return
        horizon = self.clock.time() - 2 * WINDOW
        after = entry_name(cursor.segmented, _ZERO) if cursor.segmented else None
        batch: list[tuple[float, str]] = []
        async for name in repo.store.list(PACKLOG, start_after=after):
            parsed = _parse_name(name)
            if parsed is None or parsed[0] > horizon:
                break
            batch.append((parsed[0], name))
            if len(batch) == self.segment:
                await self._fold(repo, cursor, batch, report)
                batch = []

    async def _fold(
        self,
        repo: Repository,
        cursor: _RepoCursor,
        batch: list[tuple[float, str]],
        report: CatchUpReport,
    ) -> None:
        """Write one segment of `batch`, then delete the entries it holds: after the put, so
        whoever misses a deleted entry in the log finds it in a segment listed later."""
        datas = await _bounded([partial(_get_or_none, repo.store, name) for _, name in batch])
        report.requests += len(batch) + 1
        rows, names = [], {}
        for (_, name), data in zip(batch, datas, strict=True):
            parsed = _parse_name(name)
            assert parsed is not None
            names[parsed[1]] = name
            if data is not None:  # None: folded and deleted by another node just now
                rows.append((parsed[1], data))
        first, last = batch[0][0], batch[-1][0]
        if not rows:  # all folded into another node's segment and deleted meanwhile
            cursor.segmented = last
            return
        seg = segment_name(first, last)
        if not await repo.store.put(seg, encode_segment(rows)):
            # Another node wrote this segment first: delete only what it holds.
            rows = decode_segment(await repo.store.get(seg))
            report.requests += 1
        else:
            report.segments_written += 1
        cursor.segmented = last  # only once the segment is stored: a failed put folds again
        folded = [names[p] for p, _ in rows if p in names]
        await _bounded([partial(_delete_quietly, repo.store, name) for name in folded])
        report.requests += len(folded)
        report.entries_deleted += len(folded)

    # -- the log after the cursor ------------------------------------------------------------

    async def _read_log(self, repo: Repository, cursor: _RepoCursor, report: CatchUpReport) -> None:
        after = None if cursor.seen is None else entry_name(cursor.seen - WINDOW, _ZERO)
        listed: list[tuple[str, PackId]] = []
        async for name in repo.store.list(PACKLOG, start_after=after):
            parsed = _parse_name(name)
            if parsed is not None:
                cursor.seen = max(cursor.seen or parsed[0], parsed[0])
                listed.append((name, parsed[1]))
        report.listed += len(listed)
        report.requests += 1 + len(listed) // 1000
        known = await self._known(repo, [p for _, p in listed])
        unknown = [(name, p) for name, p in listed if p not in known]
        datas = await _bounded([partial(_get_or_none, repo.store, name) for name, _ in unknown])
        report.requests += len(unknown)
        rows = [(p, d) for (_, p), d in zip(unknown, datas, strict=True) if d is not None]
        await self._index_rows(repo, rows, report)

    async def _known(self, repo: Repository, packs: Sequence[PackId]) -> set[PackId]:
        """The packs of `packs` this index holds, in one worker-thread hop."""
        has = self.index.has_pack
        return await asyncio.to_thread(lambda: {p for p in packs if has(repo.name, p)})

    async def _index_rows(
        self, repo: Repository, rows: Sequence[tuple[PackId, bytes]], report: CatchUpReport
    ) -> None:
        """Index the entries of packs this index lacks and the store still holds (not
        quarantined since): a HEAD each for a few, one listing of `packs/` for many."""
        known = await self._known(repo, [p for p, _ in rows])
        known |= await asyncio.to_thread(self._scheduled, repo.name, PACK_KIND)
        new = [(p, d) for p, d in rows if p not in known]
        stored = await self._stored(repo, [p for p, _ in new], report)
        decoded = []
        for pack_id, data in new:
            if pack_id not in stored:
                continue
            try:
                decoded.append((pack_id, *decode_entry(data)))
            except FormatError as e:
                log.warning(
                    "%s: skipping the log entry of pack %s: %s", repo.name, pack_id.hex(), e
                )
        await asyncio.to_thread(self.index.add_packs, repo.name, decoded)
        report.packs += len(decoded)
        report.chunks += sum(len(entries) for *_, entries in decoded)

    def _scheduled(self, repo: str, kind: str) -> set[Any]:
        """What this node holds scheduled for deletion (server.deletion): catch-up must not
        index it again, or list it (docs/design.md §14, several nodes)."""
        parse = PackId.parse if kind == PACK_KIND else SnapshotId.parse
        return {parse(d["id"]) for d in Deletions(self.index).pending(repo) if d["kind"] == kind}

    async def _stored(
        self, repo: Repository, packs: Sequence[PackId], report: CatchUpReport
    ) -> set[PackId]:
        if len(packs) <= LIST_INSTEAD_OF_HEAD:
            found = await _bounded([partial(repo.store.exists, pack_name(p)) for p in packs])
            report.requests += len(packs)
            return {p for p, ok in zip(packs, found, strict=True) if ok}
        if report.stored is None:  # listed once per catch-up, however many segments
            report.stored = {name async for name in repo.store.list("packs")}
            report.requests += 1 + len(report.stored) // 1000
        return {p for p in packs if pack_name(p) in report.stored}

    async def snapshots(self, repo: Repository) -> int:
        """Index the commit records other nodes stored (one listing of `snapshots/`)."""
        if not repo.shared:
            return 0
        known = {
            sid.hex() for sid, _ in await asyncio.to_thread(list, self.index.snapshots(repo.name))
        }
        known |= {s.hex() for s in await asyncio.to_thread(self._scheduled, repo.name, SNAP_KIND)}
        added = 0
        async for name in repo.store.list("snapshots"):
            ident = name.rsplit("/", 1)[-1]
            if ident in known:
                continue
            try:
                sid = SnapshotId.parse(ident)
                record = CommitRecord.decode(await repo.store.get(name))
                received = (await repo.store.stat(name)).mtime
            except (ValueError, DicomvaultError) as e:
                log.warning("%s: skipping snapshot %s: %s", repo.name, ident, e)
                continue
            summary = snapshot_summary(record, received)
            await asyncio.to_thread(self.index.add_snapshot, repo.name, sid, summary)
            added += 1
        return added


async def publish_token(site: Store, digest: bytes, doc: dict[str, Any]) -> bool:
    """Put one token's doc into the site store, replacing an older doc (`grant_heal` adds a
    right to a minted token); False if the store already held exactly this doc."""
    name, data = f"{TOKENS}/{digest.hex()}", json.dumps(doc, sort_keys=True).encode()
    if await site.put(name, data):
        return True
    if await site.get(name) == data:
        return False
    await site.delete(name)
    return await site.put(name, data)


async def publish_tokens(
    index: ServerIndex, site: Store, skip: set[bytes] | None = None
) -> set[bytes]:
    """Publish every token hash of this node's index not in `skip`; return those it holds."""
    rows = await asyncio.to_thread(index.tokens)
    for digest, doc in rows:
        # Fetched from the store: another node's to publish (and to revoke).
        if (skip is None or digest not in skip) and not doc.get(FETCHED):
            await publish_token(site, digest, doc)
    return {digest for digest, _ in rows}


async def fetch_token(index: ServerIndex, site: Store, digest: bytes) -> bool:
    """Cache a token another node minted; False if the store has none by that hash."""
    try:
        doc = json.loads(await site.get(f"{TOKENS}/{digest.hex()}"))
    except ObjectNotFound:
        return False
    await asyncio.to_thread(index.put_token, digest, {**doc, FETCHED: True})
    return True


async def recheck_token(
    index: ServerIndex, site: Store, digest: bytes, doc: dict[str, Any], now: float, grace: float
) -> bool:
    """Drop a cached token the site store no longer holds (revoked through another node);
    False if dropped. A token minted here less than `grace` ago may not be published yet."""
    try:
        await site.stat(f"{TOKENS}/{digest.hex()}")
    except ObjectNotFound:
        if now - float(doc.get("created", now)) < grace:
            return True
        await asyncio.to_thread(index.delete_token, digest)
        return False
    return True


async def revoke_tokens(site: Store, digests: Iterable[bytes]) -> None:
    """Take revoked token hashes out of the site store, so the other nodes drop them too."""
    for digest in digests:
        with contextlib.suppress(ObjectNotFound):
            await site.delete(f"{TOKENS}/{digest.hex()}")
