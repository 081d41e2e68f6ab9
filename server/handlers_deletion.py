"""HTTP handlers for forget, undelete and prune, and the purge task (docs/design.md §14).

Owns the routes `POST forget`, `GET deletions`, `POST undelete`, `GET generation`,
`POST|DELETE prune/lock` and `POST prune/schedule` of a repository, and the background purge
that runs every `purge_interval` seconds and asks `server.deletion` to destroy what is past the
undelete window on the app's clock. Scheduling and undoing need an admin token; a backup or
restore token is refused (403, exit 15) with nothing changed. Must not implement the
bookkeeping itself (that is `server.deletion`, and `server.deletion_shared` for a repository
several nodes serve from one store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from engine.errors import NotFound, UsageError
from engine.ids import PackId, SnapshotId
from engine.pack import ManifestEntry
from engine.protocol import routes as routes_v1
from server.auth import Action
from server.bodies import parse_json_object
from server.catchup import WINDOW
from server.deletion import (
    PACK,
    SNAPSHOT,
    STATS_KEYS,
    Deletions,
    Window,
    entries_or_forget,
    refs_since,
)
from server.deletion_shared import SharedDeletions
from server.handlers import _repository, parse_id, small_body
from server.replication.state import PURGE, Item
from server.repos import Repository
from server.state import (
    CATCHUP,
    CLOCK,
    CONFIG,
    DELETIONS,
    INDEX,
    REPLICATION,
    REPOS,
    SHARED_DELETIONS,
)

log = logging.getLogger(__name__)
deletion_routes = web.RouteTableDef()
R = routes_v1.REPO


def _window(app: web.Application) -> Window:
    return Window(app[CONFIG].undelete_days * 86_400.0)


async def _names(request: web.Request, key: str) -> list[str] | None:
    doc = parse_json_object(await small_body(request), key)
    names = doc.get(key)
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UsageError(f'"{key}" must be a list of snapshot ids')
    return names


@deletion_routes.post(R + "/forget")
async def forget(request: web.Request) -> web.Response:
    """Schedule snapshots for deletion: they leave every listing now and are destroyed once
    the undelete window has passed. All or none: an unknown id is 404 with nothing changed."""
    repo = _repository(request, Action.ADMIN)
    names = await _names(request, "snapshots") or []
    ids = [parse_id(SnapshotId, n) for n in names]
    by = f"admin token from {request.remote}"
    now = request.app[CLOCK].time()
    shared = request.app[SHARED_DELETIONS]
    async with request.app[DELETIONS].lock(repo.name):
        await shared.sync_locked(repo)
        docs = await shared.schedule_snapshots(repo, ids, now, _window(request.app), by)
    return web.json_response({"scheduled": [_public(d) for d in docs]})


@deletion_routes.get(R + "/deletions")
async def pending(request: web.Request) -> web.Response:
    repo = _repository(request, Action.READ)
    await request.app[SHARED_DELETIONS].sync(repo)
    docs = await asyncio.to_thread(request.app[DELETIONS].pending, repo.name)
    return web.json_response({"pending": [_public(d) for d in docs]})


@deletion_routes.post(R + "/undelete")
async def undelete(request: web.Request) -> web.Response:
    """Bring back scheduled snapshots (`{"snapshots": [ids or prefixes]}`, or all without it)."""
    repo = _repository(request, Action.ADMIN)
    names = await _names(request, "snapshots")
    shared = request.app[SHARED_DELETIONS]
    async with request.app[DELETIONS].lock(repo.name):
        await shared.sync_locked(repo)
        # The snapshots' chunks may be in packs a prune scheduled since: bring them all back.
        docs = await shared.undelete(repo, names)
    return web.json_response({"restored": [_public(d) for d in docs if d["kind"] != "pack"]})


# -- prune (docs/design.md §14: generation, lock, exclusion) ---------------------------------


@deletion_routes.get(R + "/generation")
async def generation(request: web.Request) -> web.Response:
    repo = _repository(request, Action.READ)
    now = request.app[CLOCK].time()
    generation, lock = await request.app[SHARED_DELETIONS].generation(repo, now)
    return web.json_response({"generation": generation, "prune": lock})


def _holder(doc: dict[str, Any]) -> str:
    holder = doc.get("holder")
    if not isinstance(holder, str) or not holder or len(holder) > 256:
        raise UsageError('"holder" must be a string of 1 to 256 characters')
    return holder


@deletion_routes.post(R + "/prune/lock")
async def take_lock(request: web.Request) -> web.Response:
    """Take or renew the prune lock (409 prune_locked while another holder's lives); bumps
    the generation, so every commit from now on lists all its chunks until the lock goes."""
    repo = _repository(request, Action.ADMIN)
    doc = parse_json_object(await small_body(request), "prune lock")
    ttl = doc.get("ttl", 600)
    if not isinstance(ttl, int | float) or not 10 <= ttl <= 86_400:
        raise UsageError('"ttl" must be 10 to 86400 seconds')
    now, shared = request.app[CLOCK].time(), request.app[SHARED_DELETIONS]
    async with request.app[DELETIONS].lock(repo.name):
        lock = await shared.take_lock(repo, _holder(doc), float(ttl), now)
    return web.json_response(lock)


@deletion_routes.delete(R + "/prune/lock")
async def release_lock(request: web.Request) -> web.Response:
    repo = _repository(request, Action.ADMIN)
    holder = _holder(dict(request.query))
    async with request.app[DELETIONS].lock(repo.name):
        await request.app[SHARED_DELETIONS].release_lock(repo, holder)
    return web.json_response({"released": True})


@deletion_routes.post(R + "/prune/schedule")
async def schedule_packs(request: web.Request) -> web.Response:
    """Schedule packs a prune found dead: each leaves the index now and is destroyed after the
    window. A pack holding a chunk that a commit received since the prune began names is kept
    (that backup may reuse what the prune's mark did not see). Bumps the generation."""
    repo = _repository(request, Action.ADMIN)
    doc = parse_json_object(await small_body(request, 8 * 1024 * 1024), "prune schedule")
    holder, names = _holder(doc), doc.get("packs")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UsageError('"packs" must be a list of pack ids')
    ids = [parse_id(PackId, n) for n in names]
    by = f"prune by {holder} from {request.remote}"
    async with request.app[DELETIONS].lock(repo.name):
        result = await _schedule_locked(request.app, repo, holder, ids, by)
    return web.json_response(result)


async def _schedule_locked(
    app: web.Application, repo: Repository, holder: str, ids: list[PackId], by: str
) -> dict[str, Any]:
    """Rule 3 (exclusion), then the generation; on a shared store a second look once the
    commits in flight on other nodes are done (server.deletion_shared)."""
    deletions, index, shared = app[DELETIONS], app[INDEX], app[SHARED_DELETIONS]
    now, window = app[CLOCK].time(), _window(app)
    await shared.sync_locked(repo)
    n, lock = await shared.check_lock(repo, holder, now)
    since = float(lock["since"])
    if repo.shared:
        await app[CATCHUP].snapshots(repo)  # commits received by every node count
    live = await refs_since(index, repo, since - (WINDOW if repo.shared else 0.0))
    scheduled: list[PackId] = []
    kept, absent = [], []
    for pack_id in ids:
        entries = await _indexed_entries(app, repo, pack_id, "prune")
        if entries is None:
            absent.append(pack_id.hex())
            continue
        if any(bytes(e.chunk_id) in live for e in entries):
            kept.append(pack_id.hex())
            continue
        doc = await asyncio.to_thread(
            deletions.schedule_pack, repo.name, pack_id, entries, now, window, by
        )
        if doc is not None and repo.shared:
            await shared.publish(repo, [doc])
        scheduled.append(pack_id)
    generation = await shared.bump(repo, n, lock)
    revived = await shared.recheck(repo, since, scheduled)
    kept += [p.hex() for p in revived]
    return {
        "scheduled": [p.hex() for p in scheduled if p not in revived],
        "kept": kept,
        "absent": absent,
        "generation": generation,
    }


async def _indexed_entries(
    app: web.Application, repo: Repository, pack_id: PackId, why: str
) -> tuple[ManifestEntry, ...] | None:
    """The manifest of a pack about to be scheduled; None if the index does not list it, or
    lists it but its file is gone (disk damage, an operator's `rm`, a bucket object deleted
    behind the server's back): then its rows leave the index, so `missing` names its chunks
    and the next backup sends them again, and the server log says so. Nothing else is lost:
    its bytes were gone already."""
    if not await app[CATCHUP].has_pack(repo, pack_id):
        return None
    entries = await entries_or_forget(app[DELETIONS], repo, pack_id)
    if entries is None:
        log.warning(
            "%s: %s pack %s is indexed but its file is gone: dropped from the index",
            why, repo.name, pack_id.hex(),
        )  # fmt: skip
    return entries


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    """A row of `GET deletions`; `locked_until` (else null): purged already, the store's
    Object Lock keeps the object until then, so it can no longer be undone."""
    return {k: doc[k] for k in ("kind", "id", "scheduled", "purge_after")} | {
        "time": doc.get("summary", {}).get("time"),
        "size": doc.get("size"),
        "locked_until": doc.get("locked_until"),
    }


# -- accounting: the practice's figures, kept for /metrics and the status page ---------------


@deletion_routes.post(R + "/stats")
async def post_stats(request: web.Request) -> web.Response:
    """`dicomvault stats` reports what only the practice can count (the server holds no key):
    raw and file bytes, deduplication, per modality, reclaimable. Kept per repository."""
    repo = _repository(request, Action.APPEND)
    doc = parse_json_object(await small_body(request, 64 * 1024), "stats")
    numbers = {k: doc[k] for k in STATS_KEYS if isinstance(doc.get(k), int | float)}
    modalities = doc.get("modalities")
    if isinstance(modalities, dict):
        numbers["modalities"] = {
            str(k)[:16]: v for k, v in list(modalities.items())[:64] if isinstance(v, int)
        }
    numbers["reported"] = request.app[CLOCK].time()
    await asyncio.to_thread(request.app[DELETIONS].put_stats, repo.name, numbers)
    return web.json_response({"received": numbers["reported"]})


@deletion_routes.get(R + "/stats")
async def get_stats(request: web.Request) -> web.Response:
    repo = _repository(request, Action.READ)
    doc = await asyncio.to_thread(repo_accounting, request.app, repo.name)
    return web.json_response(doc)


def repo_accounting(app: web.Application, repo: str) -> dict[str, Any]:
    """What the server knows of a repository's space, and the practice's last report."""
    deletions = app[DELETIONS]
    pending = deletions.pending(repo)
    return {
        "pending_deletion_objects": len(pending),
        "pending_deletion_bytes": sum(int(d.get("size") or 0) for d in pending),
        "reported": deletions.stats(repo),
    }


def render_metrics(app: web.Application) -> str:
    """Per-repository space series for `/metrics`: pending deletions (the server's) and the
    practice's last `dicomvault stats` report."""
    rows = {name: repo_accounting(app, name) for name in app[REPOS].names()}
    lines = []
    for key, text in (
        ("pending_deletion_bytes", "Bytes scheduled for deletion, not yet destroyed."),
        ("pending_deletion_objects", "Snapshots and packs scheduled for deletion."),
    ):
        lines += [f"# HELP dicomvault_repo_{key} {text}", f"# TYPE dicomvault_repo_{key} gauge"]
        lines += [f'dicomvault_repo_{key}{{repo="{n}"}} {r[key]}' for n, r in sorted(rows.items())]
    for key in STATS_KEYS:
        name = f"dicomvault_repo_{key}"
        lines += [f"# HELP {name} From the practice's last `dicomvault stats`.",
                  f"# TYPE {name} gauge"]  # fmt: skip
        lines += [
            f'{name}{{repo="{n}"}} {r["reported"][key]}'
            for n, r in sorted(rows.items())
            if r["reported"] and key in r["reported"]
        ]
    lines += ["# HELP dicomvault_repo_modality_bytes Unique raw bytes per DICOM modality.",
              "# TYPE dicomvault_repo_modality_bytes gauge"]  # fmt: skip
    for n, r in sorted(rows.items()):
        for modality, value in sorted(((r["reported"] or {}).get("modalities") or {}).items()):
            label = modality.replace("\\", "").replace('"', "")
            lines.append(f'dicomvault_repo_modality_bytes{{repo="{n}",modality="{label}"}} {value}')
    return "\n".join(lines) + "\n"


async def purge_once(app: web.Application) -> list[dict[str, Any]]:
    """Destroy what is past the window, and queue one `purge` item per destroyed object for
    every peer (only where this site is primary: `Replication.enqueue` passes nothing on for
    a replica), so peers apply the deletion only after the primary's window (§14)."""
    replication, queued = app[REPLICATION], False

    def tell_peers(repo: str, doc: dict[str, Any]) -> None:
        nonlocal queued
        queued |= replication.enqueue(repo, [Item(PURGE, f"{doc['kind']}:{doc['id']}")])

    shared, repos = app[SHARED_DELETIONS], app[REPOS]
    for name in repos.names():
        await shared.sync(repos.get(name))  # schedules other nodes made or withdrew
    done = await app[DELETIONS].purge_due(
        repos, app[CLOCK].time(), tell_peers, shared.still_scheduled
    )
    for doc in done:  # its schedule stays a window longer: the other nodes' tombstone
        shared.settle(repos.get(doc["repo"]), doc)
        await shared.unclaim(repos.get(doc["repo"]), doc)
    for name in repos.names():
        await shared.expire(repos.get(name), app[CLOCK].time(), _window(app))
    if queued:
        replication.wake()
    return done


async def schedule_for_primary(app: web.Application, repo: Repository, kind: str, ident: str,
                               by: str) -> bool:  # fmt: skip
    """A peer's half of a purge its primary sent: schedule the object here on this site's own
    clock and window (so it leaves listings at once, and only this site's purge destroys it,
    `undelete_days` later). False if this site does not list it (already scheduled, purged,
    or never received, or its file is gone here)."""
    deletions, now, window = app[DELETIONS], app[CLOCK].time(), _window(app)
    shared = app[SHARED_DELETIONS]
    async with deletions.lock(repo.name):
        await shared.sync_locked(repo)  # on a shared store: another node may have applied it
        if kind == SNAPSHOT:
            sid = SnapshotId.parse(ident)
            if deletions.is_scheduled(repo.name, SNAPSHOT, sid.hex()):
                return False
            try:
                await shared.schedule_snapshots(repo, [sid], now, window, by)
            except NotFound:
                return False
            return True
        pack_id = PackId.parse(ident)
        entries = await _indexed_entries(app, repo, pack_id, "purge from primary")
        if entries is None:
            return False
        doc = await asyncio.to_thread(
            deletions.schedule_pack, repo.name, pack_id, entries, now, window, by
        )
        if doc is not None and repo.shared:
            await shared.publish(repo, [doc])
        return doc is not None


PURGE_KINDS = (SNAPSHOT, PACK)


async def _purge_forever(app: web.Application) -> None:
    while True:
        try:
            done = await purge_once(app)
            if done:
                log.info("purged %d objects past the undelete window", len(done))
        except Exception:  # a failing store must not end purging for good
            log.exception("purge failed")
        await asyncio.sleep(app[CONFIG].purge_interval)


async def purge_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the index: purges what is past the window, every `purge_interval` seconds."""
    app[DELETIONS] = Deletions(app[INDEX])
    app[SHARED_DELETIONS] = SharedDeletions(app[DELETIONS], app[CATCHUP], app[CLOCK])
    task = asyncio.create_task(_purge_forever(app), name="purge")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
