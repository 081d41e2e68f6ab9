"""Audit event format, version 1: who opened which studies and series of a repository, sealed.

An event is JSON `{"v": 1, "time", "host", "user", "action", "snapshot", "studies", "series",
"detail"}` sealed with the repository's blob encryption (`engine.blob.seal_plaintext`) under
the associated data `EVENT_AD`, so neither the server nor a provider without the key can read
it, and it cannot be passed off as a chunk or a snapshot body. Its store name is the first 16
bytes of BLAKE3 of the sealed bytes, hex (`events/<32 hex>`). Does not touch storage.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import blake3

from engine import blob
from engine.errors import FormatError
from engine.keys import MasterKey

EVENT_VERSION = 1
EVENT_AD = b"\x02" * 32  # associated-data "chunk id" of a sealed audit event
MAX_UIDS = 1000  # study/series UIDs kept per event; a larger one records the count


@dataclass(slots=True)
class AuditEvent:
    time: str  # RFC 3339, UTC
    host: str
    user: str
    action: str  # restore, restore-study, restore-to-pacs, find, drill, dicom-serve
    snapshot: str = ""
    studies: list[str] = field(default_factory=list)
    series: list[str] = field(default_factory=list)
    detail: str = ""

    def seal(self, key: MasterKey) -> tuple[str, bytes]:
        doc: dict[str, Any] = {"v": EVENT_VERSION, **asdict(self)}
        for name in ("studies", "series"):
            if len(doc[name]) > MAX_UIDS:
                doc[f"{name}_count"] = len(doc[name])
                doc[name] = doc[name][:MAX_UIDS]
        sealed = blob.seal_plaintext(key, EVENT_AD, json.dumps(doc).encode())
        return event_name(sealed), sealed

    @classmethod
    def open(cls, key: MasterKey, sealed: bytes) -> dict[str, Any]:
        """The event's fields (with any `*_count`); `IntegrityError` if it does not open."""
        doc = json.loads(blob.open_plaintext(key, EVENT_AD, sealed))
        if not isinstance(doc, dict) or doc.get("v") != EVENT_VERSION:
            raise FormatError("unsupported audit event version")
        return doc


def event_name(sealed: bytes) -> str:
    return blake3.blake3(sealed).hexdigest()[:32]
