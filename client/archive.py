"""The archive as a person reads it: where an agent batch came from, and all of it as of a time.

Owns the agent's `sources` labels for a batch, the readable name a catalogued DICOM instance is
shown under, and the as-of union: for every path in any snapshot up to a time, the newest
snapshot holding it. The union streams catalogues oldest first and keeps only a map path →
snapshot in memory (the documented bound: one entry per distinct path); entries themselves are
streamed again from their owning snapshot. Shown names are display only: restore writes the
catalogue's own paths, through the restore guard.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from client.repository import Repository
from client.restore import catalogue
from engine.catalogue import Entry, SnapshotBody
from engine.errors import UsageError
from engine.ids import SnapshotId

if TYPE_CHECKING:
    from client.agent.config import AgentConfig

_UID_PART = re.compile(r"[^0-9A-Za-z.\-_]")


def batch_sources(config: AgentConfig, paths: Iterable[str]) -> list[str]:
    """Where a batch's files came from: `dicom:AET@host:port` for spooled instances, the
    watched folder for a watched file (the file itself if neither)."""
    out = set()
    for p in map(Path, paths):
        if p.is_relative_to(config.instances_dir) and config.dicom is not None:
            d = config.dicom
            out.add(f"dicom:{d.ae_title}@{d.host}:{d.port}")
            continue
        out.add(next((str(w.path) for w in config.watch if p.is_relative_to(w.path)), str(p)))
    return sorted(out)


def snapshot_where(body: SnapshotBody) -> str:
    """A snapshot's origin in one line: its sources when it has them, else its paths."""
    return " ".join(body.sources or body.paths)


def shown_path(entry: Entry, body: SnapshotBody) -> str:
    """The name an entry is listed under: in an agent snapshot (one with sources),
    `dicom/<PatientID>/<Study>/<Series>/<SOP>.dcm` for a catalogued instance (each part reduced
    to safe characters); else its catalogue path."""
    a = entry.dicom or {}
    keys = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    if not body.sources or entry.type != "file" or not a.get("SOPInstanceUID"):
        return entry.path
    parts = [_UID_PART.sub("_", a.get(k, "") or "_") for k in keys]
    return "dicom/" + "/".join(parts[:3]) + f"/{parts[3]}.dcm"


def parse_as_of(text: str) -> datetime:
    """`now`, a date (its whole day) or an ISO 8601 / RFC 3339 time (UTC if no offset)."""
    if text == "now":
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--as-of {text!r}: expected now, YYYY-MM-DD or an ISO 8601 time"
        ) from None
    if len(text) == 10:  # a date: up to the end of that day
        when += timedelta(days=1) - timedelta(microseconds=1)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _time(body: SnapshotBody) -> datetime:
    when = datetime.fromisoformat(body.time)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def owners(repo: Repository, when: datetime) -> dict[SnapshotId, Callable[[Entry], bool]]:
    """Per snapshot up to `when`: a `select` hook taking exactly the entries it is the newest
    holder of. Memory: one dict item per distinct path."""
    latest: dict[str, SnapshotId] = {}
    for sid, _, body in await repo.snapshots():  # oldest first: a newer holder wins
        if _time(body) <= when:
            async for entry in catalogue(repo, body):
                latest[entry.path] = sid
    return {
        sid: (lambda e, sid=sid: latest.get(e.path) == sid)  # type: ignore[misc]
        for sid in dict.fromkeys(latest.values())
    }


async def union(
    repo: Repository, when: datetime
) -> AsyncIterator[tuple[SnapshotId, SnapshotBody, Entry]]:
    """Every path of the archive as of `when`, newest version each, grouped by snapshot."""
    for sid, select in (await owners(repo, when)).items():
        _, body = await repo.load_snapshot(sid)
        async for entry in catalogue(repo, body):
            if select(entry):
                yield sid, body, entry
