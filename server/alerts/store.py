"""The durable alert state machine's records (table `alerts` in DATA/index.lmdb).

Owns one record per alert that is open (or resolved but not yet announced) and the date of the
last daily digest. A record survives restarts, so a server that restarts neither forgets an open
alert nor announces it as new again. Must not decide what is wrong or deliver anything.

    "open" ‖ 0 ‖ key   → JSON {key, repo, kind, message, opened, last_sent, sends, state,
                                resolved, last_error}     state: "open" | "resolving"
    "digest"           → JSON {"date": "YYYY-MM-DD", "sent": unix seconds}
"""

from __future__ import annotations

import json
from typing import Any

from server.index import ServerIndex, prefixed

_OPEN = b"open\0"
_DIGEST = b"digest"


class AlertStore:
    def __init__(self, index: ServerIndex) -> None:
        self.env = index.env
        self.db = index.dbs["alerts"]

    def all(self) -> dict[str, dict[str, Any]]:
        """Every record, open or resolving, by key."""
        with self.env.begin(db=self.db) as txn:
            return {k.decode(): json.loads(v) for k, v in prefixed(txn.cursor(), _OPEN)}

    def open_alerts(self) -> list[dict[str, Any]]:
        """Alerts whose condition still holds, oldest first."""
        docs = [d for d in self.all().values() if d.get("state") == "open"]
        return sorted(docs, key=lambda d: (d["opened"], d["key"]))

    def put(self, doc: dict[str, Any]) -> None:
        with self.env.begin(write=True, db=self.db) as txn:
            txn.put(_OPEN + doc["key"].encode(), json.dumps(doc).encode())

    def delete(self, key: str) -> None:
        with self.env.begin(write=True, db=self.db) as txn:
            txn.delete(_OPEN + key.encode())

    def last_digest(self) -> dict[str, Any] | None:
        with self.env.begin(db=self.db) as txn:
            raw = txn.get(_DIGEST)
        return json.loads(raw) if raw is not None else None

    def set_digest(self, date: str, sent: float) -> None:
        with self.env.begin(write=True, db=self.db) as txn:
            txn.put(_DIGEST, json.dumps({"date": date, "sent": sent}).encode())
