"""Quarantine: take a planted or damaged object out of a repository without deleting it.

Owns moving a pack, commit record or key object from DATA/repos/NAME/ to
DATA/quarantine/NAME/ (never served, never listed), the append-only log of who moved what and
why beside it, and refreshing the repository's index rows afterwards. Used by the admin-token
routes and by `dicomvault-server repo quarantine`; an operator undoes one by moving the file back
and running `reindex`. Must not decide who may quarantine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from engine.commit import snapshot_name
from engine.errors import ObjectNotFound, UsageError
from engine.ids import PackId, SnapshotId
from engine.pack import pack_name
from engine.store.local import fsync_dir
from server.index import ServerIndex
from server.reindex import ReindexReport, reindex_repository
from server.repos import Repository

QUARANTINE = "quarantine"  # DATA/quarantine, beside DATA/repos
LOG_NAME = "log.jsonl"
KINDS = ("pack", "snapshot", "key")

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


def quarantine_dir(repo: Repository) -> Path:
    return repo.root.parent.parent / QUARANTINE / repo.name


async def quarantine(
    repo: Repository, index: ServerIndex, name: str, *, by: str, reason: str, now: float
) -> dict[str, Any]:
    """Move object `name` into quarantine, log it, and rebuild the repository's index rows."""
    entry = await asyncio.to_thread(_move, repo, name, by=by, reason=reason, now=now)
    log.warning("quarantined %s/%s by %s: %s", repo.name, name, by, reason or "no reason given")
    report: ReindexReport = await reindex_repository(repo, index)
    return {**entry, "packs": report.packs, "snapshots": report.snapshots}


def _move(repo: Repository, name: str, *, by: str, reason: str, now: float) -> dict[str, Any]:
    path = repo.object_path(name)
    if not path.is_file():
        raise ObjectNotFound(f"no object {name} in {repo.name}")
    folder = quarantine_dir(repo)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    dest = folder / f"{stamp}-{name.replace('/', '-')}"
    os.replace(path, dest)  # same filesystem: DATA/repos and DATA/quarantine share DATA
    fsync_dir(path.parent)
    fsync_dir(folder)
    entry = {"time": now, "repo": repo.name, "object": name, "to": dest.name, "by": by}
    entry["reason"] = reason
    with open(folder / LOG_NAME, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return entry
