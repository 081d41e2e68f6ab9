"""The audit trail of `dicom-serve`: one JSON line per query or retrieve, appended and fsynced.

Owns the record's fields and the file; knows nothing of DICOM networking. Every record is also
handed to a mirror, which `client.dicomserve.service` points at the repository's sealed audit
events (`client.audit`) for retrievals, so `dicomvault audit` shows dicom-serve's reads too.

    {"time", "who", "address", "action", "level", "keys", "studies", "series", "instances",
     "outcome", "detail"}
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

AUDIT_VERSION = 1
MAX_UIDS = 1000  # UIDs listed per record; a larger retrieve records the count and the first 1000


@dataclass(slots=True)
class AuditRecord:
    who: str  # calling AE title, or the DICOMweb token's name
    address: str  # peer host (and port) as seen on the socket
    action: str  # C-FIND, C-GET, C-MOVE, QIDO-RS, WADO-RS, refused
    level: str = ""
    keys: dict[str, str] = field(default_factory=dict)
    studies: list[str] = field(default_factory=list)
    series: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    outcome: str = "ok"  # ok | partial | failed | cancelled | refused
    detail: str = ""

    def note(self, attrs: dict[str, str]) -> None:
        """Record the study, series and instance an answer or a sent instance belongs to."""
        for uids, key in ((self.studies, "StudyInstanceUID"), (self.series, "SeriesInstanceUID")):
            uid = attrs.get(key)
            if uid and uid not in uids:  # a handful per request
                uids.append(uid)
        if sop := attrs.get("SOPInstanceUID"):
            self.instances.append(sop)  # each answered or sent once per request


class AuditLog:
    """Append-only JSON lines; each record is fsynced before `write` returns. Thread-safe.
    `mirror`, when given, also receives every record written (the repository's sealed audit
    events, `client.audit`: one mechanism for every read of the practice's images)."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], str],
        mirror: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.path, self._clock, self._mirror = path, clock, mirror
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(self._fd, 0o600)  # plaintext UIDs and callers, for the auditor only
        self._lock = threading.Lock()

    def write(self, record: AuditRecord) -> None:
        doc: dict[str, Any] = {"v": AUDIT_VERSION, "time": self._clock(), **asdict(record)}
        for name in ("studies", "series", "instances"):
            if len(doc[name]) > MAX_UIDS:
                doc[f"{name}_count"] = len(doc[name])
                doc[name] = doc[name][:MAX_UIDS]
        line = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)
        if self._mirror is not None:
            self._mirror(doc)

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


def read_audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
