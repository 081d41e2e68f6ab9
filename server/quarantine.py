"""Quarantine: take a planted or damaged object out of a repository without deleting it.

Owns the one quarantine operation, used by the admin-token route, by `dicomvault-server repo
quarantine` and by scrub: move a pack, commit record or key object from the repository's store
to its quarantine store (`quarantine/NAME/<UTC time>-<object>`: never served, never listed) with
`Store.move`, and write a record of who moved what and why beside it (`log/<that name>.json`).
The admin operation then refreshes the repository's index rows. An operator undoes one by moving
the object back and running `reindex`. Must not decide who may quarantine.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from engine.commit import snapshot_name
from engine.errors import ObjectNotFound, UsageError
from engine.ids import PackId, SnapshotId
from engine.pack import pack_name
from server.index import ServerIndex
from server.reindex import ReindexReport, reindex_repository
from server.repos import Repository

KINDS = ("pack", "snapshot", "key")
LOG = "log"  # the records' folder inside the quarantine store

log = logging.getLogger(__name__)


def object_name(kind: str, ident: str) -> str:
    """The store name of a `kind` object (`pack`, `snapshot`, `key`) called `ident`."""
    try:
        if kind == "pack":
            return pack_name(PackId.parse(ident))
        if kind == "snapshot":
            return snapshot_name(SnapshotId.parse(ident))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if kind == "key":
        return f"keys/{ident}"
    raise UsageError(f"cannot quarantine a {kind!r}: one of {', '.join(KINDS)}")


def quarantined_name(name: str, now: float, n: int = 0) -> str:
    """`<UTC time>-<object, slashes as dashes>`, `.N` added when that name is taken."""
    stamp = time.strftime("%Y%m%dt%H%M%Sz", time.gmtime(now))
    base = f"{stamp}-{name.replace('/', '-')}"
    return f"{base}.{n}" if n else base


async def take_out(
    repo: Repository, name: str, *, by: str, reason: str, now: float
) -> dict[str, Any] | None:
    """Move object `name` to quarantine and record it; None if it is missing (or another
    process moved it first)."""
    for n in range(100):
        dest = quarantined_name(name, now, n)
        try:
            moved = await repo.store.move(name, repo.quarantine, dest)
        except ObjectNotFound:
            return None
        if moved:
            break
    else:  # pragma: no cover - a hundred quarantines of one object in one second
        raise UsageError(f"too many quarantined copies of {name} at {now}")
    entry = {"time": now, "repo": repo.name, "object": name, "to": dest, "by": by}
    entry["reason"] = reason
    await repo.quarantine.put(f"{LOG}/{dest}.json", json.dumps(entry).encode(), mtime=now)
    log.warning("quarantined %s/%s by %s: %s", repo.name, name, by, reason or "no reason given")
    return entry


async def records(repo: Repository) -> list[dict[str, Any]]:
    """Every quarantine record of `repo`, oldest first."""
    out = []
    async for name in repo.quarantine.list(LOG):
        out.append(json.loads(await repo.quarantine.get(name)))
    return out


async def quarantine(
    repo: Repository, index: ServerIndex, name: str, *, by: str, reason: str, now: float
) -> dict[str, Any]:
    """Take object `name` out, then rebuild the repository's index rows."""
    entry = await take_out(repo, name, by=by, reason=reason, now=now)
    if entry is None:
        raise ObjectNotFound(f"no object {name} in {repo.name}")
    report: ReindexReport = await reindex_repository(repo, index)
    return {**entry, "packs": report.packs, "snapshots": report.snapshots}
