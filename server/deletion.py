"""Deletions that can be undone: what forget schedules, what undelete brings back, what the
purge destroys once the undelete window has passed (docs/design.md §14).

Owns the `deletions` table (`repo ‖ 0 ‖ kind ‖ 0 ‖ id → JSON {kind, id, scheduled,
purge_after, summary, by}`). Scheduling a snapshot takes its row out of the `snapshots` table
in the same transaction (so listings, `latest` and parents no longer see it) and keeps the
row's summary here; the commit record stays in the store untouched. Undelete puts the row
back. Only `purge_due`, run on the server's injected clock, deletes stored objects, and only
rows whose `purge_after` has passed. The window is the provider's (`undelete_days` in
server.toml); nothing a practice sends can shorten it. Must not know HTTP or the alert
channels: the alert service reads `scheduled_since` like any other fact.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from engine.commit import snapshot_name
from engine.errors import NotFound, ObjectNotFound
from engine.ids import SnapshotId
from server.index import ServerIndex
from server.repos import Repositories

SNAPSHOT = "snapshot"
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Window:
    """The undelete window in seconds (the provider's, from server.toml)."""

    seconds: float = 14 * DAY


def _key(repo: str, kind: str, ident: str) -> bytes:
    return f"{repo}\0{kind}\0{ident}".encode()


class Deletions:
    def __init__(self, index: ServerIndex) -> None:
        self.index = index
        self.env, self.db = index.env, index.dbs["deletions"]

    # -- scheduling and undoing ------------------------------------------------------------

    def schedule_snapshots(
        self, repo: str, ids: Iterable[SnapshotId], now: float, window: Window, by: str
    ) -> list[dict[str, Any]]:
        """Schedule every snapshot for deletion, all or none: an id that is neither listed nor
        already scheduled raises `NotFound` (exit 16) before anything changes. A snapshot
        already scheduled keeps its first schedule (a repeated forget is a no-op)."""
        snaps = self.index.dbs["snapshots"]
        out = []
        with self.env.begin(write=True) as txn:
            for sid in ids:
                key = _key(repo, SNAPSHOT, sid.hex())
                old = txn.get(key, db=self.db)
                if old is not None:
                    out.append(json.loads(old))
                    continue
                row_key = repo.encode() + b"\0" + sid
                summary = txn.get(row_key, db=snaps)
                if summary is None:
                    raise NotFound(f"no snapshot {sid.hex()}")  # the transaction is aborted
                doc = {
                    "kind": SNAPSHOT,
                    "id": sid.hex(),
                    "scheduled": now,
                    "purge_after": now + window.seconds,
                    "summary": json.loads(summary),
                    "by": by,
                }
                txn.delete(row_key, db=snaps)
                txn.put(key, json.dumps(doc).encode(), db=self.db)
                out.append(doc)
        return out

    def undelete(self, repo: str, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Bring back the named scheduled snapshots (by full id or unique prefix), or all of a
        repository's when `ids` is None. Unknown names raise `NotFound` before any change."""
        pending = self.pending(repo)
        chosen = pending if ids is None else [_one(pending, name) for name in ids]
        snaps = self.index.dbs["snapshots"]
        with self.env.begin(write=True) as txn:
            for doc in chosen:
                sid = SnapshotId.parse(doc["id"])
                txn.put(repo.encode() + b"\0" + sid, json.dumps(doc["summary"]).encode(), db=snaps)
                txn.delete(_key(repo, doc["kind"], doc["id"]), db=self.db)
        return chosen

    # -- reading ---------------------------------------------------------------------------

    def pending(self, repo: str) -> list[dict[str, Any]]:
        return [doc for _, doc in self._scan(repo)]

    def is_scheduled(self, repo: str, kind: str, ident: str) -> bool:
        with self.env.begin(db=self.db) as txn:
            return txn.get(_key(repo, kind, ident)) is not None

    def scheduled_since(self, repo: str, since: float) -> int:
        """How many objects of the repository were scheduled at or after `since`."""
        return sum(1 for _, doc in self._scan(repo) if doc["scheduled"] >= since)

    def _scan(self, repo: str) -> Iterator[tuple[bytes, dict[str, Any]]]:
        prefix = repo.encode() + b"\0"
        with self.env.begin(db=self.db) as txn:
            cur = txn.cursor()
            if not cur.set_range(prefix):
                return
            for key, value in cur:
                if not key.startswith(prefix):
                    break
                yield bytes(key), json.loads(value)

    # -- purging ---------------------------------------------------------------------------

    async def purge_due(self, repos: Repositories, now: float) -> list[dict[str, Any]]:
        """Destroy every scheduled object whose window has passed: the stored object first,
        then its row, so a purge killed between the two is finished by the next one."""
        done = []
        for name in repos.names():
            for key, doc in list(self._scan(name)):
                if doc["purge_after"] > now:
                    continue
                # ObjectNotFound: deleted by a purge killed before it dropped the row
                with contextlib.suppress(ObjectNotFound):
                    await repos.get(name).store.delete(snapshot_name(SnapshotId.parse(doc["id"])))
                with self.env.begin(write=True, db=self.db) as txn:
                    txn.delete(key)
                done.append(doc)
        return done


def _one(pending: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [d for d in pending if d["id"].startswith(name.lower())]
    if len(found) != 1:
        raise NotFound(f"no unique snapshot scheduled for deletion matches {name!r}")
    return found[0]
