"""Snapshot commit records, version 1: the small, keyless part of a snapshot.

A commit record is UTF-8 JSON the server can read: which chunks must be present for the snapshot
to be complete (`refs`), who made it and when, plus the client's sealed snapshot body (`sealed`,
base64), which names the catalogue and is opaque to the server. Snapshot id = BLAKE3 of the
record's bytes. Holds no keys and does not touch storage.

`refs` lists only the chunks this snapshot references that its parent did not (plus the catalogue's
own chunks), so committing costs in proportion to what changed, not to the repository's size.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import blake3

from engine.errors import FormatError, IntegrityError
from engine.ids import ChunkId, SnapshotId

VERSION = 1
MAX_RECORD_SIZE = 64 * 1024 * 1024  # a commit for a huge first backup of ~2M new chunks


@dataclass(frozen=True, slots=True)
class CommitRecord:
    time: str  # RFC 3339 UTC
    agent: str  # host or agent name that made the snapshot
    parent: SnapshotId | None
    refs: tuple[ChunkId, ...]
    sealed: bytes  # the encrypted snapshot body; opaque here

    def encode(self) -> bytes:
        doc = {
            "version": VERSION,
            "time": self.time,
            "agent": self.agent,
            "parent": self.parent.hex() if self.parent else None,
            "refs": [r.hex() for r in self.refs],
            "sealed": base64.b64encode(self.sealed).decode("ascii"),
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> CommitRecord:
        if len(data) > MAX_RECORD_SIZE:
            raise FormatError("commit record too large")
        try:
            doc = json.loads(data)
            if doc["version"] != VERSION:
                raise FormatError(f"unsupported commit record version {doc['version']}")
            return cls(
                time=str(doc["time"]),
                agent=str(doc["agent"]),
                parent=SnapshotId.parse(doc["parent"]) if doc["parent"] else None,
                refs=tuple(ChunkId.parse(r) for r in doc["refs"]),
                sealed=base64.b64decode(doc["sealed"], validate=True),
            )
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"malformed commit record: {e}") from None


def snapshot_id_of(record: bytes) -> SnapshotId:
    return SnapshotId(blake3.blake3(record).digest())


def verify_commit(snapshot_id: SnapshotId, record: bytes) -> CommitRecord:
    if snapshot_id_of(record) != snapshot_id:
        raise IntegrityError(f"snapshot {snapshot_id.hex()}: record does not match its name")
    return CommitRecord.decode(record)


def snapshot_name(snapshot_id: SnapshotId) -> str:
    return f"snapshots/{snapshot_id.hex()}"
