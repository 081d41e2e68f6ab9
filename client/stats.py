"""`dicomvault stats`: what a repository holds and what it could give back.

Owns the accounting: the bytes the snapshots' files amount to (`files_bytes`, every copy, as
restores would write them), the unique raw bytes they are made of (`raw_bytes`, each chunk
once) and per DICOM modality (a chunk counts for the first modality seen holding it), the bytes
stored in packs, the deduplication ratio (files bytes ÷ stored bytes), what a prune with
`--max-unused 0%` would reclaim, and what is scheduled for deletion and not yet destroyed. One
streaming pass over the catalogues; seen chunks go to the same on-disk set prune uses, so memory
stays flat. Must not change the repository: it takes no lock, and a chunk server is only told
the figures (`StatsReceiver`) so the provider sees them per repository.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.prune import LiveSet, refresh, usage
from client.repository import Repository
from client.restore import catalogue
from engine.prune_plan import MaxUnused, plan

NOT_DICOM = "(not DICOM)"


@dataclass
class Stats:
    snapshots: int = 0
    files: int = 0
    files_bytes: int = 0
    raw_bytes: int = 0
    chunks: int = 0
    stored_bytes: int = 0
    packs: int = 0
    reclaimable_bytes: int = 0
    pending_deletion_bytes: int = 0
    pending_deletion_objects: int = 0
    modalities: dict[str, int] = field(default_factory=dict)

    @property
    def dedup_ratio(self) -> float:
        return round(self.files_bytes / self.stored_bytes, 3) if self.stored_bytes else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "snapshots": self.snapshots,
            "files": self.files,
            "files_bytes": self.files_bytes,
            "raw_bytes": self.raw_bytes,
            "chunks": self.chunks,
            "stored_bytes": self.stored_bytes,
            "packs": self.packs,
            "dedup_ratio": self.dedup_ratio,
            "reclaimable_bytes": self.reclaimable_bytes,
            "pending_deletion_bytes": self.pending_deletion_bytes,
            "pending_deletion_objects": self.pending_deletion_objects,
            "modalities": dict(sorted(self.modalities.items())),
        }


async def stats(repo: Repository) -> Stats:
    out = Stats()
    for lost in await refresh(repo):  # counted nowhere: say so rather than skip it quietly
        repo.warn(f"pack {lost.hex()} is listed but no site can read it (`dicomvault check`)")
    seen = LiveSet(Path(repo.index.env.path()).parent)
    try:
        snapshots = await repo.snapshots()
        out.snapshots = len(snapshots)
        for _, _, body in snapshots:
            for (_, raw), new in zip(body.tree, seen.add_new(c for c, _ in body.tree), strict=True):
                out.raw_bytes += raw if new else 0
            async for entry in catalogue(repo, body):
                if entry.type != "file":
                    continue
                out.files += 1
                out.files_bytes += entry.size
                modality = (entry.dicom or {}).get("Modality") or NOT_DICOM
                fresh = seen.add_new(c for c, _ in entry.chunks)
                added = sum(n for (_, n), new in zip(entry.chunks, fresh, strict=True) if new)
                out.raw_bytes += added
                if added:
                    out.modalities[modality] = out.modalities.get(modality, 0) + added
        out.chunks = seen.count
        p = plan(list(usage(repo, seen)), MaxUnused(0.0))
    finally:
        seen.close()
    out.packs, out.stored_bytes = p.packs, p.bytes_total
    out.reclaimable_bytes = p.bytes_deleted + p.bytes_repacked - p.bytes_rewritten
    for doc in await repo.backend.pending_deletions():
        out.pending_deletion_objects += 1
        out.pending_deletion_bytes += int(doc.get("size") or 0)
    return out
