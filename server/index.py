"""The server's LMDB index: one environment under DATA/index.lmdb with named databases.

Owns which chunk lives in which pack (per repository), pack sizes and arrival times, snapshot
summaries, the intake journal (objects being stored and not yet indexed), the last heartbeat per
agent and the hashed tokens. Chunks, packs and snapshots are a cache rebuilt from stored packs and
commit records (`server.reindex`); tokens and heartbeats are not. Must not touch pack files or
know HTTP.

Keys are `repo name ‖ 0x00 ‖ id`, so one database serves every repository and a repository's rows
form one contiguous, prefix-scannable range.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from engine.commit import snapshot_name
from engine.errors import StoreError
from engine.ids import ID_SIZE, ChunkId, PackId, SnapshotId
from engine.pack import ManifestEntry, pack_name

_LOCATION = struct.Struct(f"<{ID_SIZE}sII")  # pack id ‖ offset u32 ‖ length u32: 40 bytes
_PACK = struct.Struct("<Qd")  # size u64 ‖ arrival time (unix seconds, f64)
_DBS = ("chunks", "packs", "snapshots", "intake", "heartbeats", "tokens")
CACHE_DBS = ("chunks", "packs", "snapshots")  # what reindex may drop and rebuild
# Every named table in the environment, the other modules' included (replication queue, scrub,
# drills, alerts). py-lmdb's open_db takes LMDB's write lock while holding the GIL, so opening a
# table while another thread writes can deadlock: all are opened here, once, before any thread
# runs, and the modules that own them take their handles from `ServerIndex.dbs`.
TABLES = (
    *_DBS,
    *("repl_queue", "repl_pending", "repl_acked", "repl_meta", "replicas"),
    *("scrub", "drills", "alerts"),
    *("deletions", "condemned", "retention"),
)
MAX_DBS = 32


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    pack_id: PackId
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class PackRow:
    pack_id: PackId
    size: int
    time: float


def _prefix(repo: str) -> bytes:
    return repo.encode() + b"\0"


def prefixed(cur: lmdb.Cursor, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key after `prefix`, value) of every row whose key starts with `prefix`, in key order:
    the one range scan every table of the environment uses."""
    if not cur.set_range(prefix):
        return
    for raw_key, value in cur:
        key = bytes(raw_key)  # the same object unless a transaction asked for buffers
        if not key.startswith(prefix):
            return
        yield key[len(prefix) :], bytes(value)


class ServerIndex:
    """Thin typed wrapper over the LMDB environment; every method is one transaction."""

    def __init__(self, path: Path, map_size: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        try:
            # max_readers: readers run in worker threads; lock=True keeps multi-process safe (CLI
            # `repo create` while `serve` runs).
            self.env = lmdb.open(str(path), map_size=map_size, max_dbs=MAX_DBS, max_readers=256)
        except lmdb.Error as e:
            raise StoreError(f"cannot open index {path}: {e}") from None
        self.dbs = {name: self.env.open_db(name.encode()) for name in TABLES}

    def close(self) -> None:
        self.env.close()

    # -- chunks and packs ------------------------------------------------------------------

    def add_pack(
        self, repo: str, pack_id: PackId, size: int, time: float, entries: Iterable[ManifestEntry]
    ) -> None:
        """Index one pack and all its chunks in a single write transaction."""
        p = _prefix(repo)
        with self.env.begin(write=True) as txn:
            chunks = txn.cursor(self.dbs["chunks"])
            # putmulti: one C-level loop for the ~1000s of entries of a 16 MiB pack.
            chunks.putmulti(
                (p + e.chunk_id, _LOCATION.pack(pack_id, e.offset, e.length)) for e in entries
            )
            txn.put(p + pack_id, _PACK.pack(size, time), db=self.dbs["packs"])
            txn.delete(p + pack_name(pack_id).encode(), db=self.dbs["intake"])

    def add_packs(
        self, repo: str, rows: Iterable[tuple[PackId, int, float, Iterable[ManifestEntry]]]
    ) -> None:
        """Index many packs (pack id, size, time, entries) in one write transaction: what a
        node catching up from the store learns (server.catchup), one commit for a batch."""
        p = _prefix(repo)
        with self.env.begin(write=True) as txn:
            chunks = txn.cursor(self.dbs["chunks"])
            for pack_id, size, time, entries in rows:
                chunks.putmulti(
                    (p + e.chunk_id, _LOCATION.pack(pack_id, e.offset, e.length)) for e in entries
                )
                txn.put(p + pack_id, _PACK.pack(size, time), db=self.dbs["packs"])

    # -- the intake journal: stored objects whose index rows may be missing after a crash -----

    def begin_intake(self, repo: str, name: str) -> None:
        """Journal that `name` is about to be stored; indexing it (add_pack, add_snapshot) ends
        the entry in the same transaction, so a crash between the two leaves the entry behind
        for `server.intake.complete_intakes` to finish at start."""
        with self.env.begin(write=True, db=self.dbs["intake"]) as txn:
            txn.put(_prefix(repo) + name.encode(), b"")

    def end_intake(self, repo: str, name: str) -> None:
        with self.env.begin(write=True, db=self.dbs["intake"]) as txn:
            txn.delete(_prefix(repo) + name.encode())

    def intakes(self) -> list[tuple[str, str]]:
        """Every journalled (repository, object name), in key order."""
        with self.env.begin(db=self.dbs["intake"]) as txn:
            rows = [bytes(key).split(b"\0", 1) for key in txn.cursor().iternext(values=False)]
        return [(repo.decode(), name.decode()) for repo, name in rows]

    def has_pack(self, repo: str, pack_id: PackId) -> bool:
        with self.env.begin(db=self.dbs["packs"]) as txn:
            return txn.get(_prefix(repo) + pack_id) is not None

    def missing(self, repo: str, ids: Iterable[bytes]) -> list[bytes]:
        """Return the ids not indexed for `repo`, in order, from one read transaction."""
        p = _prefix(repo)
        with self.env.begin(db=self.dbs["chunks"], buffers=True) as txn:
            get = txn.get
            return [i for i in ids if get(p + i) is None]

    def locate(self, repo: str, chunk_id: ChunkId) -> ChunkLocation | None:
        with self.env.begin(db=self.dbs["chunks"]) as txn:
            raw = txn.get(_prefix(repo) + chunk_id)
        if raw is None:
            return None
        pack, offset, length = _LOCATION.unpack(raw)
        return ChunkLocation(PackId(pack), offset, length)

    def packs(self, repo: str, after: PackId | None = None, limit: int = 10_000) -> list[PackRow]:
        """One page of a repository's packs in id order, starting after `after`."""
        p = _prefix(repo)
        out: list[PackRow] = []
        with self.env.begin(db=self.dbs["packs"]) as txn:
            cur = txn.cursor()
            start = p + after + b"\0" if after else p
            if not cur.set_range(start):
                return out
            for key, value in cur:
                if not key.startswith(p) or len(out) >= limit:
                    break
                size, time = _PACK.unpack(value)
                out.append(PackRow(PackId(key[len(p) :]), size, time))
        return out

    def counts(self) -> dict[str, int]:
        with self.env.begin() as txn:
            return {name: txn.stat(self.dbs[name])["entries"] for name in CACHE_DBS}

    # -- snapshots -------------------------------------------------------------------------

    def add_snapshot(self, repo: str, snapshot_id: SnapshotId, summary: dict[str, Any]) -> None:
        p = _prefix(repo)
        with self.env.begin(write=True) as txn:
            txn.put(p + snapshot_id, json.dumps(summary).encode(), db=self.dbs["snapshots"])
            txn.delete(p + snapshot_name(snapshot_id).encode(), db=self.dbs["intake"])

    def snapshots(self, repo: str) -> Iterator[tuple[SnapshotId, dict[str, Any]]]:
        for key, value in self._scan("snapshots", repo):
            yield SnapshotId(key), json.loads(value)

    # -- heartbeats ------------------------------------------------------------------------

    def put_heartbeat(self, repo: str, agent: str, doc: dict[str, Any]) -> None:
        with self.env.begin(write=True, db=self.dbs["heartbeats"]) as txn:
            txn.put(_prefix(repo) + agent.encode(), json.dumps(doc).encode())

    def heartbeats(self, repo: str) -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in self._scan("heartbeats", repo)]

    # -- tokens ----------------------------------------------------------------------------

    def put_token(self, token_hash: bytes, doc: dict[str, Any]) -> None:
        with self.env.begin(write=True, db=self.dbs["tokens"]) as txn:
            txn.put(token_hash, json.dumps(doc).encode())

    def get_token(self, token_hash: bytes) -> dict[str, Any] | None:
        with self.env.begin(db=self.dbs["tokens"]) as txn:
            raw = txn.get(token_hash)
        return json.loads(raw) if raw is not None else None

    def tokens(self) -> list[tuple[bytes, dict[str, Any]]]:
        """Every (token hash, record); a few per repository, so a full scan is cheap."""
        with self.env.begin(db=self.dbs["tokens"]) as txn:
            return [(bytes(k), json.loads(v)) for k, v in txn.cursor()]

    def delete_token(self, token_hash: bytes) -> None:
        with self.env.begin(write=True, db=self.dbs["tokens"]) as txn:
            txn.delete(token_hash)

    # -- maintenance -----------------------------------------------------------------------

    def drop_repo_cache(self, repo: str) -> None:
        """Delete a repository's cache rows (chunks, packs, snapshots) in one transaction."""
        p = _prefix(repo)
        with self.env.begin(write=True) as txn:
            for name in (*CACHE_DBS, "intake"):  # a rebuilt cache has nothing left to finish
                cur = txn.cursor(self.dbs[name])
                if cur.set_range(p):
                    while cur.key().startswith(p):
                        if not cur.delete():
                            break

    def dump(self, repo: str) -> dict[str, list[tuple[bytes, bytes]]]:
        """Every cache row of a repository (tests compare an index before and after reindex)."""
        return {name: list(self._scan(name, repo)) for name in CACHE_DBS}

    def _scan(self, db: str, repo: str) -> Iterator[tuple[bytes, bytes]]:
        with self.env.begin(db=self.dbs[db]) as txn:
            yield from prefixed(txn.cursor(), _prefix(repo))
