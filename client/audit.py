"""The practice's audit trail in the repository: who opened which studies and series, when.

Owns recording an event (`record`, called by restore, find, drills and dicom-serve) and reading
them back (`events`, for `dicomvault audit`). Events are sealed with the repository's key
(`engine.events`), so the provider, who holds no key, cannot read them; the server stores them
write-once under `events/` and replicates them to peers like key objects. Recording never stops
the command it audits: a failure becomes a warning (the restore of a practice after a disaster
matters more than its audit line), and it happens before the data is opened.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import socket
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from client.repository import Repository
from engine.clock import SYSTEM, Clock
from engine.errors import DicomvaultError, IntegrityError, ObjectNotFound
from engine.events import AuditEvent

FETCH_CONCURRENCY = 16
log = logging.getLogger(__name__)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container)
        return "?"


async def record(
    repo: Repository,
    action: str,
    *,
    snapshot: str = "",
    studies: Iterable[str] = (),
    series: Iterable[str] = (),
    detail: str = "",
    clock: Clock = SYSTEM,
) -> None:
    when = clock.now().astimezone().isoformat(timespec="seconds")
    event = AuditEvent(when, socket.gethostname(), _user(), action, snapshot,
                       sorted(set(studies)), sorted(set(series)), detail)  # fmt: skip
    name, sealed = event.seal(repo.key)
    try:
        await repo.backend.put_event(name, sealed)
    except DicomvaultError as e:
        log.warning("audit event not recorded: %s", e)  # a long-running dicom-serve's log
        repo.warn(f"audit event not recorded: {e}")


async def events(repo: Repository, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every event that opens, oldest first; one that does not is skipped with a warning."""
    names = await repo.backend.list_events()
    sem = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def one(name: str) -> dict[str, Any] | None:
        async with sem:
            try:
                doc = AuditEvent.open(repo.key, await repo.backend.get_event(name))
            except (IntegrityError, ObjectNotFound, ValueError) as e:
                repo.warn(f"skipped audit event {name}: {e}")
                return None
        return {"name": name, **doc}

    found = [d for d in await asyncio.gather(*(one(n) for n in names)) if d is not None]
    if since is not None:
        found = [d for d in found if datetime.fromisoformat(d["time"]) >= since]
    return sorted(found, key=lambda d: (datetime.fromisoformat(d["time"]), d["name"]))
