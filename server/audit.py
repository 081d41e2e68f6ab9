"""The server's audit trail: every authenticated request, one hash-chained JSON line each.

Owns the file `DATA/audit/audit.jsonl` (append-only, mode 0600), its head file
`DATA/audit/head` (the last line's sequence number and hash, so cutting lines off the end is
seen), the chain and `verify`. `server.audit_middleware` decides what a request's line says.
Holds no tokens and no request bodies.

Line: `{"seq", "time", "token", "role", "repo", "method", "route", "object", "status",
"bytes_in", "bytes_out", "remote", "prev", "hash"}` with `hash` = BLAKE3 hex of the previous
line's hash (64 zeros before the first line) followed by the canonical JSON (sorted keys, no
spaces) of every field but `hash`. Lines are written in request-completion order, fsynced when
one comes a second or more after the last fsync, and at shutdown (docs/design.md §16).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3

from engine.clock import Clock

GENESIS = "0" * 64
SYNC_INTERVAL = 1.0  # seconds between fsyncs of the trail


def line_hash(prev: str, fields: dict[str, Any]) -> str:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return blake3.blake3(bytes.fromhex(prev) + body.encode()).hexdigest()


class AuditTrail:
    """Appends chained lines; thread-safe. Reopening continues the chain from the head file
    (or, without one, from the file's last line)."""

    def __init__(self, folder: Path, clock: Clock) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path, self.head_path, self._clock = folder / "audit.jsonl", folder / "head", clock
        self._lock = threading.Lock()
        self.seq, self.prev = _last(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._synced = clock.monotonic()

    def append(self, fields: dict[str, Any]) -> None:
        with self._lock:
            doc = {"seq": self.seq + 1, "time": _iso(self._clock.time()), **fields}
            doc["prev"] = self.prev
            doc["hash"] = line_hash(self.prev, doc)
            line = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
            os.write(self._fd, line)
            self.seq, self.prev = doc["seq"], doc["hash"]
            if self._clock.monotonic() - self._synced >= SYNC_INTERVAL:
                self._sync()

    def flush(self) -> None:
        """fsync the trail and write its head now (shutdown, and tests)."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        os.fsync(self._fd)
        tmp = self.head_path.with_name("head.tmp")
        tmp.write_text(json.dumps({"seq": self.seq, "hash": self.prev}))
        os.replace(tmp, self.head_path)
        self._synced = self._clock.monotonic()

    def close(self) -> None:
        with self._lock:
            self._sync()
            os.close(self._fd)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _last(path: Path) -> tuple[int, str]:
    """Sequence number and hash of the file's last whole line; (0, GENESIS) for none."""
    if not path.exists():
        return 0, GENESIS
    last = b""
    with path.open("rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                last = line
    if not last:
        return 0, GENESIS
    doc = json.loads(last)
    return int(doc["seq"]), str(doc["hash"])


@dataclass(frozen=True, slots=True)
class Verified:
    lines: int
    problems: list[str]
    records: list[dict[str, Any]]


def verify(folder: Path) -> Verified:
    """Walk the whole chain: every line parses, follows its predecessor's hash and sequence
    number and hashes to its `hash`, and the file reaches the head's last line."""
    problems: list[str] = []
    records: list[dict[str, Any]] = []
    prev, seq = GENESIS, 0
    for number, raw in _lines(folder / "audit.jsonl"):
        try:
            doc = json.loads(raw)
            fields = {k: v for k, v in doc.items() if k != "hash"}
            ok_hash = line_hash(str(doc["prev"]), fields) == doc["hash"]
        except (ValueError, KeyError, TypeError):
            problems.append(f"line {number}: not an audit record")
            continue
        if doc["seq"] != seq + 1 or doc["prev"] != prev:
            problems.append(f"line {number}: lines missing before it (seq {seq} -> {doc['seq']})")
        if not ok_hash:
            problems.append(f"line {number}: changed (its hash does not match its content)")
        prev, seq = str(doc["hash"]), int(doc["seq"])
        records.append(doc)
    head = folder / "head"
    if head.exists():
        want = json.loads(head.read_text())
        if want["seq"] > seq or (want["seq"] == seq and want["hash"] != prev):
            problems.append(f"the trail ends at seq {seq}, its head says {want['seq']}: cut")
    return Verified(len(records), problems, records)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    if not path.exists():
        return
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line
