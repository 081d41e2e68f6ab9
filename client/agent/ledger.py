"""The agent's durable memory of what it has committed, in one SQLite file in the state folder.

Owns four tables: `instances` (instances committed off-site, for Storage Commitment, keyed by
(SOP Class UID, SOP Instance UID) as the sender's C-STORE named them, with the dataset's own
instance UID when it differs; rows from before the class was kept have class ''),
`watched` (the size and mtime of each watched file as last committed, so a restart does not send
unchanged files again), `commitments` (Storage Commitment requests not yet answered, so a
report still goes out after a restart) and `held` (spooled instances committed at the primary
that wait for the peer sites, with `[spool] delete_after = "peer"`). Rows are written only after
the server accepted the snapshot, so the ledger may lag the repository but never runs ahead of
it. Thread-safe: the receiver's threads and the daemon share one connection behind a lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (class_uid TEXT NOT NULL, uid TEXT NOT NULL,
    dataset_uid TEXT, snapshot TEXT, committed REAL, PRIMARY KEY (uid, class_uid));
CREATE TABLE IF NOT EXISTS watched (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, snapshot TEXT, committed REAL);
CREATE TABLE IF NOT EXISTS commitments (
    transaction_uid TEXT PRIMARY KEY, calling_ae TEXT, address TEXT, items TEXT, received REAL);
CREATE TABLE IF NOT EXISTS held (path TEXT PRIMARY KEY, uid TEXT, size INTEGER, snapshot TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


Key = tuple[str, str]  # (SOP Class UID, SOP Instance UID)


def _migrate(db: sqlite3.Connection) -> None:
    """Ledger of before the class was kept: `instances (uid, snapshot, committed)` → the keyed
    table, every row kept with class ''."""
    columns = [r[1] for r in db.execute("PRAGMA table_info(instances)")]
    if not columns or "class_uid" in columns:
        return
    db.executescript(
        "BEGIN;"
        "ALTER TABLE instances RENAME TO instances_v1;"
        + _SCHEMA.split(";")[0]
        + ";INSERT INTO instances SELECT '', uid, NULL, snapshot, committed FROM instances_v1;"
        "DROP TABLE instances_v1;"
        "COMMIT;"
    )


@dataclass(frozen=True, slots=True)
class CommitmentRequest:
    """One N-ACTION: which instances (class UID, instance UID) the peer wants committed."""

    transaction_uid: str
    calling_ae: str
    address: str
    items: tuple[tuple[str, str], ...]
    received: float


class Ledger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        _migrate(self._db)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(sql, rows)
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # committed instances and watched files

    def record_instances(
        self, rows: Iterable[tuple[str, str, str]], snapshot: str, when: float
    ) -> None:
        """Record (SOP Class UID, SOP Instance UID, the dataset's own UID or '') as committed."""
        self._write(
            "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?)",
            ((cls, uid, own or None, snapshot, when) for cls, uid, own in rows),
        )

    def committed(self, keys: Iterable[tuple[str, str]]) -> tuple[set[Key], set[Key]]:
        """Of `keys` (SOP Class UID, SOP Instance UID): those some committed snapshot holds, and
        those whose instance UID was committed under another class only (a conflict)."""
        held: set[Key] = set()
        conflicts: set[Key] = set()
        for cls, uid in keys:
            classes = {
                r[0] for r in self._query("SELECT class_uid FROM instances WHERE uid = ?", (uid,))
            }
            if cls in classes or "" in classes:  # '': committed before the class was kept
                held.add((cls, uid))
            elif classes:
                conflicts.add((cls, uid))
        return held, conflicts

    def record_watched(
        self, rows: Iterable[tuple[str, int, int]], snapshot: str, when: float
    ) -> None:
        self._write(
            "INSERT OR REPLACE INTO watched VALUES (?, ?, ?, ?, ?)",
            ((p, size, mtime, snapshot, when) for p, size, mtime in rows),
        )

    def watched_signature(self, path: str) -> tuple[int, int] | None:
        rows = self._query("SELECT size, mtime_ns FROM watched WHERE path = ?", (path,))
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    # Storage Commitment requests

    def add_commitment(self, req: CommitmentRequest) -> None:
        self._write(
            "INSERT OR REPLACE INTO commitments VALUES (?, ?, ?, ?, ?)",
            [
                (
                    req.transaction_uid,
                    req.calling_ae,
                    req.address,
                    json.dumps(req.items),
                    req.received,
                )
            ],
        )

    def commitments(self) -> list[CommitmentRequest]:
        rows = self._query("SELECT * FROM commitments ORDER BY received")
        return [
            CommitmentRequest(t, ae, addr, tuple((c, i) for c, i in json.loads(items)), r)
            for t, ae, addr, items, r in rows
        ]

    def remove_commitment(self, transaction_uid: str) -> None:
        self._write("DELETE FROM commitments WHERE transaction_uid = ?", [(transaction_uid,)])

    # spooled instances waiting for the peer sites (delete_after = "peer")

    def hold(self, rows: Iterable[tuple[str, str, int]], snapshot: str) -> None:
        """Record (path, SOP Instance UID, size) of instances committed in `snapshot`."""
        self._write(
            "INSERT OR REPLACE INTO held VALUES (?, ?, ?, ?)",
            ((path, uid, size, snapshot) for path, uid, size in rows),
        )

    def held(self) -> dict[str, list[tuple[str, str, int]]]:
        """snapshot → [(path, uid, size)], oldest rows first."""
        out: dict[str, list[tuple[str, str, int]]] = {}
        for path, uid, size, snapshot in self._query("SELECT * FROM held ORDER BY rowid"):
            out.setdefault(str(snapshot), []).append((str(path), str(uid), int(size)))
        return out

    def release(self, snapshot: str) -> None:
        self._write("DELETE FROM held WHERE snapshot = ?", [(snapshot,)])

    # small facts for the status (last commit)

    def put_meta(self, key: str, value: Any) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(key, json.dumps(value))])

    def get_meta(self, key: str) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None
