"""The local catalogue index of `dicom-serve`: every version of every DICOM instance the snapshots
hold, in an in-memory SQLite database, so C-FIND and QIDO-RS never read the repository.

Owns the schema and the refresh from the snapshots' catalogues (streamed, one snapshot at a time,
so memory stays bounded) and the "current view": for each SOP Instance UID, the version in the
newest snapshot at or before a time. A version row is written only when an instance's content
(its chunk list) differs from its previous version, so unchanged instances cost nothing per
snapshot. On disk only sealed: `save` writes the serialized database under AES-256-GCM with the
repository's "dicom-serve index" subkey, and a file that does not open (tampered, another
repository's) is discarded and rebuilt, so no patient attribute rests on disk in plaintext. A
cache in the sense of invariant 3: delete the file and it is rebuilt. Matching DICOM keys is
`client.dicomserve.query`'s.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.repository import Repository
from client.restore import catalogue
from engine.catalogue import Entry, SnapshotBody
from engine.errors import DicomvaultError
from engine.ids import ChunkId, SnapshotId

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots(id TEXT PRIMARY KEY, time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions(
    sop TEXT NOT NULL, time TEXT NOT NULL, snapshot TEXT NOT NULL,
    patient TEXT NOT NULL, study TEXT NOT NULL, series TEXT NOT NULL,
    attrs TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, chunks TEXT NOT NULL,
    digest BLOB NOT NULL, PRIMARY KEY (sop, time)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS versions_study ON versions(study);
CREATE INDEX IF NOT EXISTS versions_series ON versions(series);
CREATE INDEX IF NOT EXISTS versions_patient ON versions(patient);
CREATE TABLE IF NOT EXISTS sop_classes(sop TEXT PRIMARY KEY, sop_class TEXT NOT NULL);
"""
_CURRENT = "v.time = (SELECT MAX(w.time) FROM versions w WHERE w.sop = v.sop AND w.time <= :as_of)"
FAR_FUTURE = "9999-12-31T23:59:59.999999Z"
WRITE_BATCH = 2000  # catalogue entries per index transaction during a refresh
_DIGEST_BYTES = 16
_NONCE_BYTES = 12
_AAD = b"dicomvault dicom-serve index v1"
PLAINTEXT_NAME = "catalogue.sqlite"  # the old, unsealed index: removed on sight


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """One version of an instance: its catalogue attributes and where its bytes are."""

    sop: str
    snapshot: str
    time: str
    attrs: dict[str, str]
    path: str
    size: int
    chunks: tuple[tuple[ChunkId, int], ...]
    digest: bytes

    @property
    def study(self) -> str:
        return self.attrs.get("StudyInstanceUID", "")

    @property
    def series(self) -> str:
        return self.attrs.get("SeriesInstanceUID", "")

    @property
    def transfer_syntax(self) -> str:
        return self.attrs.get("TransferSyntaxUID", "")


def index_time(when: datetime) -> str:
    """A time as the index compares it (as text): UTC, microseconds, `Z`; no offset is UTC."""
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class CatalogueIndex:
    """The index: one in-memory connection shared by the refresh and the readers, each use
    under `lock` (SQLite connections are not shared between threads without one). Sealed on
    disk at `path` with `key`; `loaded` says whether it was opened from there."""

    def __init__(self, path: Path, key: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path, self._sealer = path, AESGCM(key)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.loaded = self._load()
        self.db.executescript(_SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        for name in (PLAINTEXT_NAME, PLAINTEXT_NAME + "-wal", PLAINTEXT_NAME + "-shm"):
            (path.parent / name).unlink(missing_ok=True)  # patient data in plaintext: gone

    def _load(self) -> bool:
        try:
            sealed = self.path.read_bytes()
        except FileNotFoundError:
            return False
        try:
            plain = self._sealer.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _AAD)
            self.db.deserialize(plain)
            ok = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except (InvalidTag, ValueError, sqlite3.Error):
            ok = None
        if ok is None or ok[0] != str(SCHEMA_VERSION):
            log.warning("catalogue index %s does not open: discarded, rebuilt", self.path)
            self.db.close()
            self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            return False
        return True

    def save(self) -> None:
        """Write the sealed database atomically: temp file, fsync, rename."""
        with self.lock:
            plain = self.db.serialize()
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._sealer.encrypt(nonce, plain, _AAD)
        temp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, sealed)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.path)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def open_reader(self) -> IndexReader:
        return IndexReader(self.db, self.lock)

    async def refresh(self, repo: Repository) -> int:
        """Index every snapshot not indexed yet, oldest first; return how many were added. A
        snapshot whose catalogue cannot be read is left for the next refresh."""
        done = self._indexed()
        fresh = [(sid, body) for sid, _, body in await repo.snapshots() if sid.hex() not in done]
        todo = sorted(
            ((index_time(datetime.fromisoformat(body.time)), sid, body) for sid, body in fresh),
            key=lambda t: (t[0], t[1].hex()),
        )
        added = 0
        for time, sid, body in todo:
            try:
                await self._add_snapshot(repo, sid, time, body)
            except DicomvaultError as e:  # unreadable now: the others are served, retried later
                log.warning("snapshot %s not indexed: %s", sid.short(), e)
                continue
            added += 1
        return added

    def _indexed(self) -> set[str]:
        with self.lock:
            return {row[0] for row in self.db.execute("SELECT id FROM snapshots")}

    async def _add_snapshot(
        self, repo: Repository, sid: SnapshotId, time: str, body: SnapshotBody
    ) -> None:
        """Stream the catalogue; each batch is written in a thread and a transaction of its own,
        so serving goes on between batches. Idempotent: a snapshot cut short is indexed again."""
        batch: list[Entry] = []
        async for entry in catalogue(repo, body):
            if _is_instance(entry):
                batch.append(entry)
            if len(batch) >= WRITE_BATCH:
                await asyncio.to_thread(self._add_versions, batch, sid.hex(), time)
                batch = []
        await asyncio.to_thread(self._add_versions, batch, sid.hex(), time)
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?)", (sid.hex(), time))

    def _add_versions(self, entries: list[Entry], snapshot: str, time: str) -> None:
        with self.lock:
            _add_versions(self.db, entries, snapshot, time)

    def remember_sop_classes(self, classes: dict[str, str]) -> None:
        """SOP Instance UID → SOP Class UID, learnt from instances read (the catalogue lacks it);
        kept in memory, sealed with the rest at the next save."""
        if not classes:
            return
        with self.lock:
            self.db.executemany("INSERT OR REPLACE INTO sop_classes VALUES (?, ?)", classes.items())


def _is_instance(entry: Entry) -> bool:
    attrs = entry.dicom or {}
    return entry.type == "file" and bool(attrs.get("SOPInstanceUID"))


def _add_versions(db: sqlite3.Connection, entries: list[Entry], snapshot: str, time: str) -> None:
    db.execute("BEGIN")
    try:
        for entry in entries:
            _add_version(db, entry, snapshot, time)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _add_version(db: sqlite3.Connection, entry: Entry, snapshot: str, time: str) -> None:
    attrs = entry.dicom or {}
    sop = attrs["SOPInstanceUID"]
    chunks = json.dumps([[c.hex(), n] for c, n in entry.chunks])
    digest = hashlib.blake2b(chunks.encode(), digest_size=_DIGEST_BYTES).digest()
    previous = db.execute(
        "SELECT digest FROM versions WHERE sop = ? AND time <= ? ORDER BY time DESC LIMIT 1",
        (sop, time),
    ).fetchone()
    if previous is not None and previous[0] == digest:
        return  # unchanged since its last version: the current view already finds it
    db.execute(
        "INSERT OR IGNORE INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (sop, time, snapshot, attrs.get("PatientID", ""), attrs.get("StudyInstanceUID", ""),
         attrs.get("SeriesInstanceUID", ""), json.dumps(attrs, ensure_ascii=False), entry.path,
         entry.size, chunks, digest),
    )  # fmt: skip


class IndexReader:
    """Read side of the index: each query runs whole under the index's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self.db, self._lock = db, lock

    def close(self) -> None:
        """Nothing to close: the connection is the index's."""

    def _rows(self, sql: str, params: Any = ()) -> list[Any]:
        with self._lock:
            return self.db.execute(sql, params).fetchall()

    def current(self, as_of: str | None, exact: dict[str, list[str]]) -> Iterator[InstanceRef]:
        """The current version of each instance (newest at or before `as_of`), narrowed by the
        indexed columns in `exact` (patient, study, series, sop: one value or several)."""
        where, params = [_CURRENT], {"as_of": as_of or FAR_FUTURE}
        for column, values in exact.items():
            names = [f"{column}{i}" for i in range(len(values))]
            where.append(f"v.{column} IN ({', '.join(':' + n for n in names)})")
            params.update(zip(names, values, strict=True))
        sql = (
            "SELECT sop, snapshot, time, attrs, path, size, chunks, digest FROM versions v "
            f"WHERE {' AND '.join(where)} ORDER BY v.study, v.series, v.sop"
        )
        for row in self._rows(sql, params):
            yield _ref(row)

    def sop_class(self, sop: str) -> str | None:
        rows = self._rows("SELECT sop_class FROM sop_classes WHERE sop = ?", (sop,))
        return str(rows[0][0]) if rows else None

    def snapshot_count(self) -> int:
        return int(self._rows("SELECT COUNT(*) FROM snapshots")[0][0])


def _ref(row: tuple[Any, ...]) -> InstanceRef:
    sop, snapshot, time, attrs, path, size, chunks, digest = row
    pieces = tuple((ChunkId.parse(c), int(n)) for c, n in json.loads(chunks))
    return InstanceRef(sop, snapshot, time, json.loads(attrs), path, size, pieces, bytes(digest))
