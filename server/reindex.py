"""Rebuild the server index's cache (chunks, packs, snapshots) from stored packs and commits,
read through each repository's Store.

Owns the proof of invariant 3 on the server: the index holds nothing that the repository folders
cannot reproduce. Reads each pack's trailer and manifest only (not its blobs) unless asked to
verify hashes. Must not modify packs, commit records, tokens or heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial

import blake3

from engine.commit import CommitRecord
from engine.errors import DicomvaultError
from engine.ids import PackId, SnapshotId
from engine.pack import read_pack_info_ranged
from server.deletion import PACK as PACK_DELETION
from server.deletion import SNAPSHOT as SNAPSHOT_DELETION
from server.deletion import Deletions
from server.index import ServerIndex
from server.repos import Repositories, Repository

log = logging.getLogger(__name__)


@dataclass
class ReindexReport:
    repositories: int = 0
    packs: int = 0
    chunks: int = 0
    snapshots: int = 0
    bad: int = 0


def snapshot_summary(record: CommitRecord, received: float) -> dict[str, object]:
    return {"time": record.time, "agent": record.agent, "received": received}


async def _hash_of(repo: Repository, name: str) -> bytes:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    async for piece in repo.store.get_stream(name):
        await asyncio.to_thread(hasher.update, piece)
    return hasher.digest()


async def _index_pack(repo: Repository, index: ServerIndex, name: str, verify: bool) -> int:
    """Index one stored pack from its trailer and manifest; return its chunk count."""
    pack_id = PackId.parse(name.rsplit("/", 1)[-1])
    if Deletions(index).is_scheduled(repo.name, PACK_DELETION, pack_id.hex()):
        return 0  # a prune scheduled it: out of the index until purged or revived
    stat = await repo.store.stat(name)
    info = await read_pack_info_ranged(partial(repo.store.get_range, name), stat.size)
    if verify and await _hash_of(repo, name) != pack_id:
        raise DicomvaultError("content does not match its name")
    add = partial(index.add_pack, repo.name, pack_id, info.size, stat.mtime, info.entries)
    await asyncio.to_thread(add)
    return len(info.entries)


async def index_snapshot(repo: Repository, index: ServerIndex, name: str) -> None:
    snapshot_id = SnapshotId.parse(name.rsplit("/", 1)[-1])
    if Deletions(index).is_scheduled(repo.name, SNAPSHOT_DELETION, snapshot_id.hex()):
        return  # forgotten, within its undelete window: it stays out of listings
    record = CommitRecord.decode(await repo.store.get(name))
    summary = snapshot_summary(record, (await repo.store.stat(name)).mtime)
    await asyncio.to_thread(index.add_snapshot, repo.name, snapshot_id, summary)


async def _reindex_packs(
    repo: Repository, index: ServerIndex, verify: bool, report: ReindexReport
) -> None:
    async for name in repo.store.list("packs"):
        try:
            report.chunks += await _index_pack(repo, index, name, verify)
        except (ValueError, DicomvaultError) as e:
            log.warning("%s: skipping pack %s: %s", repo.name, name, e)
            report.bad += 1
            continue
        report.packs += 1


async def _reindex_snapshots(repo: Repository, index: ServerIndex, report: ReindexReport) -> None:
    async for name in repo.store.list("snapshots"):
        try:
            await index_snapshot(repo, index, name)
        except (ValueError, DicomvaultError) as e:
            log.warning("%s: skipping snapshot %s: %s", repo.name, name, e)
            report.bad += 1
            continue
        report.snapshots += 1


async def reindex_repository(
    repo: Repository,
    index: ServerIndex,
    *,
    verify: bool = False,
    report: ReindexReport | None = None,
) -> ReindexReport:
    """Drop and rebuild one repository's cache rows."""
    report = report or ReindexReport()
    await asyncio.to_thread(index.drop_repo_cache, repo.name)
    await _reindex_packs(repo, index, verify, report)
    await _reindex_snapshots(repo, index, report)
    report.repositories += 1
    return report


async def reindex(
    repos: Repositories, index: ServerIndex, *, verify: bool = False
) -> ReindexReport:
    """Drop and rebuild each repository's cache rows; tokens and heartbeats are kept."""
    report = ReindexReport()
    for name in repos.names():
        await reindex_repository(repos.get(name), index, verify=verify, report=report)
    return report
