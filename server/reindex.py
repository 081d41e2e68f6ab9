"""Rebuild the server index's cache (chunks, packs, snapshots) from stored packs and commits.

Owns the proof of invariant 3 on the server: the index holds nothing that the repository folders
cannot reproduce. Reads each pack's trailer and manifest only (not its blobs) unless asked to
verify hashes. Must not modify packs, commit records, tokens or heartbeats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from engine.commit import CommitRecord
from engine.errors import DicomvaultError
from engine.ids import PackId, SnapshotId
from engine.pack import pack_id_of
from server.index import ServerIndex
from server.intake import read_pack_info_file
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


def _ids_under(folder: Path) -> list[tuple[str, Path]]:
    if not folder.is_dir():
        return []
    return [(p.name, p) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]


def _reindex_packs(
    repo: Repository, index: ServerIndex, verify: bool, report: ReindexReport
) -> None:
    for name, path in _ids_under(repo.root / "packs"):
        try:
            pack_id = PackId.parse(name)
            info = read_pack_info_file(path)
            if verify and pack_id_of(path.read_bytes()) != pack_id:
                raise DicomvaultError("content does not match its name")
        except (ValueError, DicomvaultError) as e:
            log.warning("%s: skipping pack %s: %s", repo.name, name, e)
            report.bad += 1
            continue
        index.add_pack(repo.name, pack_id, info.size, path.stat().st_mtime, info.entries)
        report.packs += 1
        report.chunks += len(info.entries)


def _reindex_snapshots(repo: Repository, index: ServerIndex, report: ReindexReport) -> None:
    for name, path in _ids_under(repo.root / "snapshots"):
        try:
            snapshot_id = SnapshotId.parse(name)
            record = CommitRecord.decode(path.read_bytes())
        except (ValueError, DicomvaultError) as e:
            log.warning("%s: skipping snapshot %s: %s", repo.name, name, e)
            report.bad += 1
            continue
        summary = snapshot_summary(record, path.stat().st_mtime)
        index.add_snapshot(repo.name, snapshot_id, summary)
        report.snapshots += 1


def reindex_repository(
    repo: Repository,
    index: ServerIndex,
    *,
    verify: bool = False,
    report: ReindexReport | None = None,
) -> ReindexReport:
    """Drop and rebuild one repository's cache rows."""
    report = report or ReindexReport()
    index.drop_repo_cache(repo.name)
    _reindex_packs(repo, index, verify, report)
    _reindex_snapshots(repo, index, report)
    report.repositories += 1
    return report


def reindex(repos: Repositories, index: ServerIndex, *, verify: bool = False) -> ReindexReport:
    """Drop and rebuild each repository's cache rows; tokens and heartbeats are kept."""
    report = ReindexReport()
    for name in repos.names():
        reindex_repository(repos.get(name), index, verify=verify, report=report)
    return report
