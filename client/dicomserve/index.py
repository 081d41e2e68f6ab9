"""The local catalogue index of `dicom-serve`: every version of every DICOM instance the snapshots
hold, in SQLite under the cache folder, so C-FIND and QIDO-RS never read the repository.

Owns the schema and the refresh from the snapshots' catalogues (streamed, one snapshot at a time,
so memory stays bounded) and the "current view": for each SOP Instance UID, the version in the
newest snapshot at or before a time. A version row is written only when an instance's content
(its chunk list) differs from its previous version, so unchanged instances cost nothing per
snapshot. A cache in the sense of invariant 3: delete the file and it is rebuilt. Matching DICOM
keys is `client.dicomserve.query`'s.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client.repository import Repository
from client.restore import catalogue
from engine.catalogue import Entry, SnapshotBody
from engine.errors import DicomvaultError, UsageError
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


def snapshot_time(text: str) -> str:
    """A time as the index compares it: UTC, microseconds, `Z` (a date alone is its midnight)."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"bad time {text!r}: use ISO 8601, e.g. 2026-03-01T12:00:00Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _connect(path: Path, any_thread: bool = False) -> sqlite3.Connection:
    """`any_thread`: used by one task at a time, from whichever thread runs it."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=not any_thread)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class CatalogueIndex:
    """The index file. `refresh` writes (one writer); `open_reader` gives each thread its own
    read connection (SQLite connections are not shared between threads)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        db = _connect(path)
        db.executescript(_SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        db.close()
        path.chmod(0o600)  # catalogue attributes are patient data

    def open_reader(self) -> IndexReader:
        return IndexReader(_connect(self.path))

    async def refresh(self, repo: Repository) -> int:
        """Index every snapshot not indexed yet, oldest first; return how many were added. A
        snapshot whose catalogue cannot be read is left for the next refresh."""
        done = self._indexed()
        todo = sorted(
            ((snapshot_time(body.time), sid, body) for sid, _, body in await repo.snapshots()
             if sid.hex() not in done),
            key=lambda t: (t[0], t[1].hex()),
        )  # fmt: skip
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
        db = _connect(self.path)
        try:
            return {row[0] for row in db.execute("SELECT id FROM snapshots")}
        finally:
            db.close()

    async def _add_snapshot(
        self, repo: Repository, sid: SnapshotId, time: str, body: SnapshotBody
    ) -> None:
        """Stream the catalogue; each batch is written in a thread and a transaction of its own,
        so serving goes on meanwhile. Idempotent: a snapshot cut short is indexed again whole."""
        db = _connect(self.path, any_thread=True)
        try:
            batch: list[Entry] = []
            async for entry in catalogue(repo, body):
                if _is_instance(entry):
                    batch.append(entry)
                if len(batch) >= WRITE_BATCH:
                    await asyncio.to_thread(_add_versions, db, batch, sid.hex(), time)
                    batch = []
            await asyncio.to_thread(_add_versions, db, batch, sid.hex(), time)
            db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?)", (sid.hex(), time))
        finally:
            db.close()

    def remember_sop_classes(self, classes: dict[str, str]) -> None:
        """SOP Instance UID → SOP Class UID, learnt from instances read (the catalogue lacks it)."""
        if not classes:
            return
        db = _connect(self.path)
        try:
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO sop_classes VALUES (?, ?)", classes.items())
            db.execute("COMMIT")
        except sqlite3.Error as e:  # a cache: the classes are probed again next time
            log.warning("SOP classes not remembered: %s", e)
        finally:
            db.close()


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
    """Read side of the index, for one thread."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def close(self) -> None:
        self.db.close()

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
        for row in self.db.execute(sql, params):
            yield _ref(row)

    def sop_class(self, sop: str) -> str | None:
        row = self.db.execute("SELECT sop_class FROM sop_classes WHERE sop = ?", (sop,)).fetchone()
        return None if row is None else str(row[0])

    def snapshot_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0])


def _ref(row: tuple[Any, ...]) -> InstanceRef:
    sop, snapshot, time, attrs, path, size, chunks, digest = row
    pieces = tuple((ChunkId.parse(c), int(n)) for c, n in json.loads(chunks))
    return InstanceRef(sop, snapshot, time, json.loads(attrs), path, size, pieces, bytes(digest))
