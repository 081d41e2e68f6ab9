"""Snapshot commit records, versions 1 and 2: the small, keyless part of a snapshot.

A commit record is UTF-8 JSON the server can read: which chunks must be present for the snapshot
to be complete (`refs`), who made it and when, plus the client's sealed snapshot body (`sealed`,
base64), which names the catalogue and is opaque to the server. Snapshot id = BLAKE3 of the
record's bytes. Holds no keys and does not touch storage.

Version 2 binds the readable fields to the seal: the sealed body's associated data is
`body_ad()`, a BLAKE3 hash of the canonical JSON of version, time, agent, parent and refs, so an
edit of any of them fails authentication. Version 1 (still read) sealed under a constant, so its
readable fields are not authenticated; only the record's name (its hash) vouches for them.

`refs` lists only the chunks this snapshot references that its parent did not (plus the catalogue's
own chunks), so committing costs in proportion to what changed, not to the repository's size.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

import blake3

from engine.catalogue import SNAPSHOT_AD
from engine.errors import FormatError, IntegrityError
from engine.ids import ChunkId, SnapshotId

VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_RECORD_SIZE = 64 * 1024 * 1024  # a commit for a huge first backup of ~2M new chunks
MAX_AGENT_LEN = 256  # characters
MAX_SEALED_SIZE = 16 * 1024 * 1024  # bytes; a body names its catalogue chunks, ~80 B each
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
_FIELDS_AD_PREFIX = b"dicomvault commit fields v2\n"


@dataclass(frozen=True, slots=True)
class CommitRecord:
    time: str  # RFC 3339 UTC
    agent: str  # host or agent name that made the snapshot
    parent: SnapshotId | None
    refs: tuple[ChunkId, ...]
    sealed: bytes  # the encrypted snapshot body; opaque here
    version: int = VERSION

    def _fields(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "time": self.time,
            "agent": self.agent,
            "parent": self.parent.hex() if self.parent else None,
            "refs": [r.hex() for r in self.refs],
        }

    def body_ad(self) -> bytes:
        """Associated data (32 bytes) the sealed body is sealed under; see the module docstring."""
        if self.version == 1:
            return SNAPSHOT_AD
        canonical = json.dumps(self._fields(), separators=(",", ":"), sort_keys=True)
        return blake3.blake3(_FIELDS_AD_PREFIX + canonical.encode()).digest()

    def encode(self) -> bytes:
        doc = {**self._fields(), "sealed": base64.b64encode(self.sealed).decode("ascii")}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> CommitRecord:
        """Parse a record and check its structure (types, sizes, ids); `FormatError` if not."""
        if len(data) > MAX_RECORD_SIZE:
            raise FormatError("commit record too large")
        try:
            doc = json.loads(data)
            return _from_doc(doc)
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"malformed commit record: {type(e).__name__}: {e}") from None


def _from_doc(doc: dict[str, Any]) -> CommitRecord:
    version = doc["version"]
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise FormatError(f"unsupported commit record version {version!r}")
    time, agent, parent, refs = doc["time"], doc["agent"], doc["parent"], doc["refs"]
    if not isinstance(time, str) or not _RFC3339.match(time):
        raise FormatError(f"malformed commit record: time {str(time)[:40]!r} is not RFC 3339")
    if not isinstance(agent, str) or len(agent) > MAX_AGENT_LEN:
        raise FormatError(f"malformed commit record: agent must be at most {MAX_AGENT_LEN} chars")
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise FormatError("malformed commit record: refs must be a list of chunk ids")
    if parent is not None and not isinstance(parent, str):
        raise FormatError("malformed commit record: parent must be a snapshot id or null")
    sealed = base64.b64decode(doc["sealed"], validate=True)
    if not 0 < len(sealed) <= MAX_SEALED_SIZE:
        raise FormatError(f"malformed commit record: sealed body of {len(sealed)} bytes")
    return CommitRecord(
        time=time,
        agent=agent,
        parent=SnapshotId.parse(parent) if parent else None,
        refs=tuple(ChunkId.parse(r) for r in refs),
        sealed=sealed,
        version=version,
    )


def snapshot_id_of(record: bytes) -> SnapshotId:
    return SnapshotId(blake3.blake3(record).digest())


def verify_commit(snapshot_id: SnapshotId, record: bytes) -> CommitRecord:
    """Parse a record fetched as `snapshot_id`; `IntegrityError` if it is not that record."""
    if snapshot_id_of(record) != snapshot_id:
        raise IntegrityError(f"snapshot {snapshot_id.hex()}: record does not match its name")
    return CommitRecord.decode(record)


def snapshot_name(snapshot_id: SnapshotId) -> str:
    return f"snapshots/{snapshot_id.hex()}"
