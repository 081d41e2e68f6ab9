"""Several nodes on one store: how a node learns what the other nodes stored.

The LMDB index is a per-node cache. This module owns the pack log each node writes beside the
packs (`packlog/<stamp>-<pack id>`: one small object per accepted pack, written before the
upload is acknowledged, holding the pack's manifest entries) and the catch-up that reads it: a
node that meets a chunk or pack its index lacks lists the log after its cursor (less a window
for clock skew between nodes), and indexes each pack it does not know whose bytes are in the
store, without reading the pack. Commits are caught up by listing `snapshots/`, token hashes by
reading `tokens/<hash>` from the site store. Must not know HTTP or decide who may do what.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.clock import SYSTEM, Clock
from engine.commit import CommitRecord
from engine.errors import DicomvaultError, FormatError, ObjectNotFound
from engine.ids import ID_SIZE, ChunkId, PackId, SnapshotId
from engine.pack import ManifestEntry, pack_name
from engine.store.base import Store
from server.index import ServerIndex
from server.reindex import snapshot_summary
from server.repos import Repository

log = logging.getLogger(__name__)

PACKLOG = "packlog"
TOKENS = "tokens"  # in the site store: one object per token hash (hex), the token's JSON doc
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
    started: float = float("-inf")  # monotonic start of the last catch-up
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class CatchUpReport:
    listed: int = 0
    packs: int = 0
    chunks: int = 0
    requests: int = 0


class CatchUp:
    """One per node (the app's), holding each repository's cursor into the pack log."""

    def __init__(self, index: ServerIndex, clock: Clock = SYSTEM) -> None:
        self.index, self.clock = index, clock
        self._cursors: dict[str, _RepoCursor] = {}
        self.total = CatchUpReport()  # since start, for /metrics and tests

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
            if cursor.started >= asked - fresh_for:
                return CatchUpReport()  # one that started after we asked has run meanwhile
            cursor.started = self.clock.monotonic()
            report = await self._read_log(repo, cursor)
        for name in ("listed", "packs", "chunks", "requests"):
            setattr(self.total, name, getattr(self.total, name) + getattr(report, name))
        return report

    async def _read_log(self, repo: Repository, cursor: _RepoCursor) -> CatchUpReport:
        report = CatchUpReport(requests=1)
        after = None if cursor.seen is None else entry_name(cursor.seen - WINDOW, PackId(bytes(32)))
        async for name in repo.store.list(PACKLOG, start_after=after):
            report.listed += 1
            parsed = _parse_name(name)
            if parsed is None:
                continue
            stamp, pack_id = parsed
            cursor.seen = max(cursor.seen or stamp, stamp)
            if not await asyncio.to_thread(self.index.has_pack, repo.name, pack_id):
                await self._index_entry(repo, name, pack_id, report)
        report.requests += report.listed // 1000
        if report.packs:
            log.info("%s: caught up %d packs from the pack log", repo.name, report.packs)
        return report

    async def _index_entry(
        self, repo: Repository, name: str, pack_id: PackId, report: CatchUpReport
    ) -> None:
        try:
            if not await repo.store.exists(pack_name(pack_id)):  # quarantined since
                return
            size, mtime, entries = decode_entry(await repo.store.get(name))
        except (ObjectNotFound, FormatError) as e:
            log.warning("%s: skipping pack log entry %s: %s", repo.name, name, e)
            return
        finally:
            report.requests += 2
        await asyncio.to_thread(self.index.add_pack, repo.name, pack_id, size, mtime, entries)
        report.packs += 1
        report.chunks += len(entries)

    async def snapshots(self, repo: Repository) -> int:
        """Index the commit records other nodes stored (one listing of `snapshots/`)."""
        if not repo.shared:
            return 0
        known = {
            sid.hex() for sid, _ in await asyncio.to_thread(list, self.index.snapshots(repo.name))
        }
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
        if skip is None or digest not in skip:
            await publish_token(site, digest, doc)
    return {digest for digest, _ in rows}


async def fetch_token(index: ServerIndex, site: Store, digest: bytes) -> bool:
    """Cache a token another node minted; False if the store has none by that hash."""
    try:
        doc = json.loads(await site.get(f"{TOKENS}/{digest.hex()}"))
    except ObjectNotFound:
        return False
    await asyncio.to_thread(index.put_token, digest, doc)
    return True
