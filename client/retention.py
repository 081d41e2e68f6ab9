"""Clinical retention at forget time: no instance still under retention becomes unreachable.

Owns finding, among the snapshots a forget removes, the DICOM instances whose keep-until date
(`engine.retention`) has not passed and that no kept snapshot holds (by content: the same chunk
list), and writing them into one **retention snapshot**: a catalogue of just those instances,
under `retention/<snapshot id>/<original path>`, pointing at their existing chunks. Only the
catalogue is new; no image data is read or sent. The snapshot is an ordinary one (`find`,
`restore --study` and `snapshots` see it), tagged `retention` and with its origin in `sources`.
Must not schedule deletions itself (`client/cli_forget.py` does, after this).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import blake3

from client.prune import LiveSet
from client.repository import Repository, now_rfc3339
from client.restore import catalogue
from engine import blob
from engine.blob import Content, Hint
from engine.catalogue import Entry, SnapshotBody
from engine.ids import ChunkId, SnapshotId
from engine.packer import BackendSink, Packer
from engine.retention import RetentionPolicy

TAG = "retention"
HOST = "retention"


@dataclass
class Protected:
    instances: int = 0
    bytes: int = 0
    snapshot: str | None = None
    from_snapshots: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "instances": self.instances,
            "bytes": self.bytes,
            "snapshot": self.snapshot,
            "from_snapshots": self.from_snapshots,
        }


def _content_key(entry: Entry) -> ChunkId:
    h = blake3.blake3()
    for cid, _ in entry.chunks:
        h.update(cid)
    return ChunkId(h.digest())


def _day(body: SnapshotBody) -> date:
    return datetime.fromisoformat(body.time).astimezone(UTC).date()


async def protect(
    repo: Repository,
    removed: list[SnapshotId],
    kept: list[SnapshotId],
    policy: RetentionPolicy,
    today: date,
    *,
    source: str,
    dry_run: bool,
) -> Protected:
    """Collect what the removal would make unreachable while under retention; unless a dry
    run, write the retention snapshot holding it."""
    bodies = {sid: body for sid, _, body in await repo.snapshots()}
    out = Protected()
    held = LiveSet(Path(repo.index.env.path()).parent)
    try:
        for sid in kept:
            async for e in catalogue(repo, bodies[sid]):
                if e.type == "file":
                    held.add([_content_key(e)])
        collected: list[Entry] = []
        for sid in sorted(removed, key=lambda s: (bodies[s].time, s.hex())):
            first_seen = _day(bodies[sid])
            async for e in catalogue(repo, bodies[sid]):
                if e.type != "file" or not e.dicom:
                    continue
                if policy.keep_until(e.dicom, first_seen) < today:
                    continue
                if not held.add_new([_content_key(e)])[0]:
                    continue  # a kept snapshot holds it, or it is collected already
                e.path = f"{TAG}/{sid.hex()[:16]}/{e.path.lstrip('/')}"
                collected.append(e)
                if sid.hex() not in out.from_snapshots:
                    out.from_snapshots.append(sid.hex())
    finally:
        held.close()
    out.instances = len(collected)
    out.bytes = sum(e.size for e in collected)
    if collected and not dry_run:
        out.snapshot = (await _write(repo, collected, source, len(out.from_snapshots))).hex()
    return out


def _with_parents(entries: list[Entry]) -> list[Entry]:
    """The entries and a folder entry for each of their parents, parents first."""
    folders: set[str] = set()
    for e in entries:
        parts = e.path.split("/")[:-1]
        folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    dirs = [Entry(f, "dir", 0o755, 0) for f in folders]
    return sorted(dirs + entries, key=lambda e: e.path.split("/"))


async def _write(repo: Repository, entries: list[Entry], source: str, forgotten: int) -> SnapshotId:
    """Seal the catalogue like a backup's, upload its chunks (only they are new), commit."""
    await repo.reconcile()
    put = repo.backend.put_pack
    packer = Packer(repo.key, repo.index, BackendSink(put))
    tree: list[tuple[ChunkId, int]] = []
    with tempfile.TemporaryFile() as f:
        for e in _with_parents(entries):
            f.write(e.encode())
        size = f.tell()
        f.seek(0)
        pieces = list(repo.chunker.cut_stream(f, size, 0, 0))
    new = []
    for piece in pieces:
        cid = repo.key.chunk_id(piece.data)
        tree.append((cid, len(piece.data)))
        if cid not in repo.index:
            new.append((cid, piece.data))
    absent = await repo.backend.missing([c for c, _ in new]) if new else set()
    for cid, data in new:
        if cid in absent and cid not in packer:
            sealed = blob.seal(repo.key, cid, data, Hint(Content.TREE))
            packer.add(cid, sealed, len(data), Content.TREE)
    await packer.flush()
    files = [e for e in entries if e.type == "file"]
    body = SnapshotBody(
        now_rfc3339(),
        HOST,
        [TAG],
        tree,
        {"files": len(files), "dirs": 0, "bytes": sum(e.size for e in files)},
        [TAG],
        [f"retention policy {source}: {len(files)} instances from {forgotten} forgotten snapshots"],
    )

    def every() -> list[ChunkId]:
        out = dict.fromkeys(c for c, _ in tree)
        for e in files:
            out.update(dict.fromkeys(c for c, _ in e.chunks))
        return list(out)

    return await repo.commit(body, None, [c for c, _ in tree], HOST, every)
