"""Repository check: structure always, every byte with `read_data`.

Structure: every pack's trailer and manifest parse, every snapshot opens, and every chunk a
catalogue names is in some pack. Read-data: every pack is read in windows of whole blobs (never
whole, so memory does not grow with pack size), hashed against its name, and every blob is
decrypted, decoded and checked against its chunk id. Each problem names the pack or
snapshot it concerns. With several sites, an object one site lost or holds damaged that another
served is a problem too (`Detour`): the data is safe, but that site needs repair. Reports packs
checked (and bytes read) to a `Progress` as it goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import blake3

from client.progress import Progress
from client.repository import Repository, pack_named
from client.restore import catalogue
from engine import blob
from engine.backend import Backend, Detour, ServedElsewhere
from engine.errors import DicomvaultError, IntegrityError
from engine.ids import ChunkId, PackId
from engine.keys import MasterKey
from engine.pack import ManifestEntry
from engine.packer import read_manifest

READ_CONCURRENCY = 4  # packs read at once
PACK_WINDOW = 4 * 1024 * 1024  # bytes of a pack read, hashed and opened at once


@dataclass
class CheckReport:
    packs: int = 0
    snapshots: int = 0
    chunks_referenced: int = 0
    bytes_verified: int = 0
    problems: list[str] = field(default_factory=list)
    # Objects a site failed and another served: safe, but that site needs repair (a problem).
    sites_damaged: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def check(
    repo: Repository, *, read_data: bool = False, progress: Progress | None = None
) -> CheckReport:
    report = CheckReport()
    backend = repo.backend
    mark = backend.served_elsewhere if isinstance(backend, ServedElsewhere) else 0
    packs = [p async for p in backend.list_packs()]
    report.packs = len(packs)
    if progress is not None:
        progress.set_total(len(packs))
    await _packs(repo, packs, report, read_data, progress)
    await _snapshots(repo, report, set(packs))
    if isinstance(backend, ServedElsewhere):
        _detours(backend.detours(since=mark), packs, report)
    return report


def _detours(detours: list[Detour], packs: list[PackId], report: CheckReport) -> None:
    """A pack (or record) one site lost or holds damaged and another served: restorable, so
    not lost, but the first site is damaged; named plainly, with both sites (a problem)."""
    named = {f"pack {p.short()}": f"pack {p.hex()}" for p in packs}
    for d in detours:
        what = named.get(d.what, d.what)
        report.sites_damaged.append(
            {"object": what, "site": d.site, "error": d.error, "served_by": d.served_by}
        )
        report.problems.append(
            f"{what}: lost or damaged at {d.site} ({d.error}); {d.served_by} served it, so the "
            f"data is safe there, but {d.site} needs repair (its scrub heals it from the peer)"
        )


async def _packs(
    repo: Repository,
    packs: list[PackId],
    report: CheckReport,
    read: bool,
    progress: Progress | None,
) -> None:
    sem = asyncio.Semaphore(READ_CONCURRENCY)
    done = [0, 0]  # packs, bytes

    async def one(pack_id: PackId) -> None:
        async with sem:
            try:
                if read:
                    size = await _read_pack(repo, pack_id, report)
                else:
                    size, entries = await read_manifest(repo.backend, pack_id)
                    if not repo.index.has_pack(pack_id):
                        repo.index.add_pack(pack_id, size, entries)
                done[1] += size
            except DicomvaultError as e:
                report.problems.append(pack_named(pack_id, str(e)))
            done[0] += 1
            if progress is not None:
                progress.update(done[0], done[1], pack_id.short())

    await asyncio.gather(*(one(p) for p in packs))


def _held(repo: Repository, chunk_id: ChunkId, present: set[PackId]) -> bool:
    """Whether some pack the backend still lists holds the chunk (any of its locations)."""
    loc = repo.index.lookup(chunk_id)
    locations = ([loc] if loc is not None else []) + repo.index.others(chunk_id)
    return any(o.pack_id in present for o in locations)


def _suspect(repo: Repository, chunks: list[tuple[ChunkId, int]], present: set[PackId]) -> str:
    """Where a missing chunk most likely was: the pack holding the same file's other chunks
    (a chunk id damaged in that pack's manifest leaves the chunk in no manifest at all)."""
    for chunk_id, _ in chunks:
        loc = repo.index.lookup(chunk_id)
        if loc is not None and loc.pack_id in present:
            return (
                f" (the file's other chunks are in pack {loc.pack_id.hex()}: its manifest may "
                "be damaged; check --read-data verifies it)"
            )
    return " (a damaged pack manifest or a removed pack; check --read-data names a damaged pack)"


async def _read_pack(repo: Repository, pack_id: PackId, report: CheckReport) -> int:
    """Verify every byte of a pack; with several sites, a pack that fails at one is read at
    the next (`Backend.read_checked`, docs/design.md §17)."""

    async def site(backend: Backend) -> Backend:
        return backend

    async def streamed(backend: Backend) -> tuple[int, list[ManifestEntry]]:
        return await _stream_pack(repo.key, backend, pack_id)

    size, entries = await repo.backend.read_checked(f"pack {pack_id.short()}", site, streamed)
    report.bytes_verified += size
    if not repo.index.has_pack(pack_id):
        repo.index.add_pack(pack_id, size, entries)
    return size


async def _stream_pack(
    key: MasterKey, backend: Backend, pack_id: PackId
) -> tuple[int, list[ManifestEntry]]:
    """Read a pack as a stream of windows of whole blobs, never whole: each window is hashed
    into the pack's BLAKE3 and its blobs opened (decrypted, decoded, checked against their
    chunk ids) in one worker-thread call, so memory per pack is one window and its blobs."""
    size, entries = await read_manifest(backend, pack_id)
    hasher = blake3.blake3()
    failures: list[DicomvaultError] = []

    def take(data: bytes, start: int, group: list[ManifestEntry]) -> None:
        hasher.update(data)
        view = memoryview(data)
        for e in group:
            try:
                blob.open_blob(key, e.chunk_id, view[e.offset - start : _end(e) - start])
            except DicomvaultError as err:
                failures.append(err)

    cursor = 0
    for group in _windows(entries):
        end = _end(group[-1])
        data = await backend.get_pack_range(pack_id, cursor, end - cursor)
        await asyncio.to_thread(take, data, cursor, group)
        cursor = end
    take(await backend.get_pack_range(pack_id, cursor, size - cursor), cursor, [])
    if hasher.digest() != pack_id:  # first: a damaged pack is named as such, not by a blob
        raise IntegrityError(f"pack {pack_id.hex()}: content does not match its name")
    if failures:
        raise failures[0]
    return size, entries


def _end(e: ManifestEntry) -> int:
    return e.offset + e.length


def _windows(entries: list[ManifestEntry]) -> Iterator[list[ManifestEntry]]:
    """The entries in pack order, grouped into runs of at most PACK_WINDOW bytes (a larger blob
    alone)."""
    group: list[ManifestEntry] = []
    for e in sorted(entries, key=lambda e: e.offset):
        if group and _end(e) - group[0].offset > PACK_WINDOW:
            yield group
            group = []
        group.append(e)
    if group:
        yield group


async def _snapshots(repo: Repository, report: CheckReport, present: set[PackId]) -> None:
    for sid in await repo.backend.list_snapshots():
        report.snapshots += 1
        try:
            _, body = await repo.load_snapshot(sid)
            async for entry in catalogue(repo, body):
                report.chunks_referenced += len(entry.chunks)
                missing = [c for c, _ in entry.chunks if not _held(repo, c, present)]
                for chunk_id in missing:
                    report.problems.append(
                        f"snapshot {sid.hex()}: {entry.path} needs chunk {chunk_id.hex()}, "
                        "which is in no pack" + _suspect(repo, entry.chunks, present)
                    )
        except DicomvaultError as e:
            report.problems.append(str(e) if sid.hex() in str(e) else f"snapshot {sid.hex()}: {e}")
