"""Durable scrub records in the server's LMDB environment (table `scrub` in DATA/index.lmdb).

Owns, per repository, the result of the last scrub pass, the bad packs found (quarantined,
healed or not), the progress of a pass under way, and the one transaction that takes a bad pack
out of the index (so `missing` reports its chunks missing and a commit naming them is refused
until the pack is healed). LMDB is multi-process safe, so `dicomvault-server scrub` and a running
server share these records. Must not read pack files, do network I/O or know HTTP.

Keys (NUL separates; repository names cannot contain it):

    "progress"                  → JSON {running, started, repo, packs_checked, bytes_checked, ...}
    "run" ‖ 0 ‖ repo            → JSON {started, finished, packs_checked, bytes_checked, bad,
                                        healed, unhealed: [hex, ...]}
    "bad" ‖ 0 ‖ repo ‖ 0 ‖ id   → JSON {pack, repo, found, reason, quarantine, healed, error}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import lmdb

from engine.ids import ID_SIZE, ChunkId, PackId
from server.index import ServerIndex, prefixed

_PROGRESS = b"progress"


def _run_key(repo: str) -> bytes:
    return b"run\0" + repo.encode()


def _bad_key(repo: str, pack_id: PackId) -> bytes:
    return b"bad\0" + repo.encode() + b"\0" + pack_id


class ScrubState:
    def __init__(self, index: ServerIndex) -> None:
        self.index = index
        self.env = index.env
        self.db = index.dbs["scrub"]

    # -- progress and results ----------------------------------------------------------------

    def set_progress(self, doc: dict[str, Any]) -> None:
        self._put(_PROGRESS, doc)

    def progress(self) -> dict[str, Any] | None:
        return self._get(_PROGRESS)

    def put_run(self, repo: str, doc: dict[str, Any]) -> None:
        self._put(_run_key(repo), doc)

    def run(self, repo: str) -> dict[str, Any] | None:
        return self._get(_run_key(repo))

    def runs(self) -> dict[str, dict[str, Any]]:
        return {k.decode(): v for k, v in self._scan(b"run\0")}

    # -- bad packs ---------------------------------------------------------------------------

    def mark_bad(
        self, repo: str, pack_id: PackId, doc: dict[str, Any], chunks: Iterable[ChunkId] | None
    ) -> None:
        """Record a bad pack and drop it from the index in one transaction. `chunks` (from the
        pack's manifest, when it still parses) saves a scan of the repository's chunk rows."""
        prefix = repo.encode() + b"\0"
        with self.env.begin(write=True) as txn:
            txn.put(_bad_key(repo, pack_id), json.dumps(doc).encode(), db=self.db)
            txn.delete(prefix + pack_id, db=self.index.dbs["packs"])
            if chunks is not None:
                _drop_chunks(txn, self.index.dbs["chunks"], prefix, pack_id, chunks)
            else:
                _drop_chunks_by_scan(txn, self.index.dbs["chunks"], prefix, pack_id)

    def update_bad(self, repo: str, pack_id: PackId, **changes: Any) -> None:
        key = _bad_key(repo, pack_id)
        with self.env.begin(write=True, db=self.db) as txn:
            raw = txn.get(key)
            if raw is None:
                return
            doc = {**json.loads(raw), **changes}
            txn.put(key, json.dumps(doc).encode())

    def bad(self, repo: str | None = None) -> list[dict[str, Any]]:
        prefix = b"bad\0" + (repo.encode() + b"\0" if repo is not None else b"")
        return [v for _, v in self._scan(prefix)]

    def unhealed(self, repo: str | None = None) -> list[dict[str, Any]]:
        return [d for d in self.bad(repo) if not d.get("healed")]

    # -- plumbing ----------------------------------------------------------------------------

    def _put(self, key: bytes, doc: dict[str, Any]) -> None:
        with self.env.begin(write=True, db=self.db) as txn:
            txn.put(key, json.dumps(doc).encode())

    def _get(self, key: bytes) -> dict[str, Any] | None:
        with self.env.begin(db=self.db) as txn:
            raw = txn.get(key)
        return json.loads(raw) if raw is not None else None

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
        """(key after `prefix`, document) of the rows under `prefix`."""
        with self.env.begin(db=self.db) as txn:
            for key, value in prefixed(txn.cursor(), prefix):
                yield key, json.loads(value)


def _drop_chunks(
    txn: lmdb.Transaction, db: Any, prefix: bytes, pack_id: PackId, chunks: Iterable[ChunkId]
) -> None:
    for chunk_id in chunks:
        key = prefix + chunk_id
        raw = txn.get(key, db=db)
        # Only rows that point into the bad pack: a chunk also held by a good pack stays.
        if raw is not None and raw[:ID_SIZE] == pack_id:
            txn.delete(key, db=db)


def _drop_chunks_by_scan(txn: lmdb.Transaction, db: Any, prefix: bytes, pack_id: PackId) -> None:
    """The manifest is unreadable: walk the repository's chunk rows (rare, bounded memory)."""
    cur = txn.cursor(db=db)
    if not cur.set_range(prefix):
        return
    while bytes(cur.key()).startswith(prefix):
        if bytes(cur.value()[:ID_SIZE]) == pack_id:
            if not cur.delete():
                return
        elif not cur.next():
            return
