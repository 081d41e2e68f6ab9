"""HTTP handlers for forget, undelete and prune, and the purge task (docs/design.md §14).

Owns the routes `POST forget`, `GET deletions`, `POST undelete`, `GET generation`,
`POST|DELETE prune/lock` and `POST prune/schedule` of a repository, and the background purge
that runs every `purge_interval` seconds and asks `server.deletion` to destroy what is past the
undelete window on the app's clock. Scheduling and undoing need an admin token; a backup or
restore token is refused (403, exit 15) with nothing changed. Must not implement the
bookkeeping itself (that is `server.deletion`).
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
from engine.protocol import routes as routes_v1
from server.auth import Action
from server.bodies import parse_json_object
from server.deletion import (
    PACK,
    SNAPSHOT,
    STATS_KEYS,
    Deletions,
    Window,
    pack_entries,
    refs_since,
)
from server.handlers import _repository, parse_id, small_body
from server.replication.state import PURGE, Item
from server.repos import Repository
from server.state import CLOCK, CONFIG, DELETIONS, INDEX, REPLICATION, REPOS

log = logging.getLogger(__name__)
deletion_routes = web.RouteTableDef()
R = routes_v1.REPO


def _single_node(repo: Repository) -> None:
    """Schedules live in this node's index; other nodes of a shared store would not see them
    (and their catch-up would index the objects again), so deletions wait for a shared log."""
    if repo.shared:
        raise UsageError(
            f"{repo.name} is shared by several server nodes: forget and prune are not "
            "supported there yet"
        )


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
    _single_node(repo)
    names = await _names(request, "snapshots") or []
    ids = [parse_id(SnapshotId, n) for n in names]
    by = f"admin token from {request.remote}"
    now = request.app[CLOCK].time()
    deletions = request.app[DELETIONS]
    async with deletions.lock(repo.name):
        docs = await asyncio.to_thread(
            deletions.schedule_snapshots, repo.name, ids, now, _window(request.app), by
        )
    return web.json_response({"scheduled": [_public(d) for d in docs]})


@deletion_routes.get(R + "/deletions")
async def pending(request: web.Request) -> web.Response:
    repo = _repository(request, Action.READ)
    docs = await asyncio.to_thread(request.app[DELETIONS].pending, repo.name)
    return web.json_response({"pending": [_public(d) for d in docs]})


@deletion_routes.post(R + "/undelete")
async def undelete(request: web.Request) -> web.Response:
    """Bring back scheduled snapshots (`{"snapshots": [ids or prefixes]}`, or all without it)."""
    repo = _repository(request, Action.ADMIN)
    names = await _names(request, "snapshots")
    deletions = request.app[DELETIONS]
    async with deletions.lock(repo.name):
        docs = await asyncio.to_thread(deletions.undelete, repo.name, names)
        # The snapshots' chunks may be in packs a prune scheduled since: bring them all back.
        await deletions.revive_all_packs(repo)
    return web.json_response({"restored": [_public(d) for d in docs if d["kind"] != "pack"]})


# -- prune (docs/design.md §14: generation, lock, exclusion) ---------------------------------


@deletion_routes.get(R + "/generation")
async def generation(request: web.Request) -> web.Response:
    repo = _repository(request, Action.READ)
    deletions = request.app[DELETIONS]
    now = request.app[CLOCK].time()
    return web.json_response(
        {
            "generation": deletions.generation(repo.name),
            "prune": deletions.prune_lock(repo.name, now),
        }
    )


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
    _single_node(repo)
    doc = parse_json_object(await small_body(request), "prune lock")
    ttl = doc.get("ttl", 600)
    if not isinstance(ttl, int | float) or not 10 <= ttl <= 86_400:
        raise UsageError('"ttl" must be 10 to 86400 seconds')
    deletions = request.app[DELETIONS]
    async with deletions.lock(repo.name):
        lock = deletions.take_lock(repo.name, _holder(doc), float(ttl), request.app[CLOCK].time())
    return web.json_response(lock)


@deletion_routes.delete(R + "/prune/lock")
async def release_lock(request: web.Request) -> web.Response:
    repo = _repository(request, Action.ADMIN)
    holder = _holder(dict(request.query))
    deletions = request.app[DELETIONS]
    async with deletions.lock(repo.name):
        deletions.release_lock(repo.name, holder)
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
    deletions, index = request.app[DELETIONS], request.app[INDEX]
    now, window = request.app[CLOCK].time(), _window(request.app)
    by = f"prune by {holder} from {request.remote}"
    scheduled, kept, absent = [], [], []
    async with deletions.lock(repo.name):
        lock = deletions.check_lock(repo.name, holder, now)
        live = await refs_since(index, repo, float(lock["since"]))
        for pack_id in ids:
            if not index.has_pack(repo.name, pack_id):
                absent.append(pack_id.hex())
                continue
            entries = await pack_entries(repo, pack_id)
            if any(bytes(e.chunk_id) in live for e in entries):
                kept.append(pack_id.hex())
                continue
            await asyncio.to_thread(
                deletions.schedule_pack, repo.name, pack_id, entries, now, window, by
            )
            scheduled.append(pack_id.hex())
        new_generation = deletions.bump(repo.name)
    return web.json_response(
        {"scheduled": scheduled, "kept": kept, "absent": absent, "generation": new_generation}
    )


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in ("kind", "id", "scheduled", "purge_after")} | {
        "time": doc.get("summary", {}).get("time"),
        "size": doc.get("size"),
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

    done = await app[DELETIONS].purge_due(app[REPOS], app[CLOCK].time(), tell_peers)
    if queued:
        replication.wake()
    return done


async def schedule_for_primary(app: web.Application, repo: Repository, kind: str, ident: str,
                               by: str) -> bool:  # fmt: skip
    """A peer's half of a purge its primary sent: schedule the object here on this site's own
    clock and window (so it leaves listings at once, and only this site's purge destroys it,
    `undelete_days` later). False if this site does not list it (already scheduled, purged,
    or never received)."""
    deletions, now, window = app[DELETIONS], app[CLOCK].time(), _window(app)
    if repo.shared:  # as `_single_node`: the schedule would live in one node's index only
        log.warning("%s is shared by several nodes: the primary's purge of %s %s is not applied",
                    repo.name, kind, ident[:16])  # fmt: skip
        return False
    async with deletions.lock(repo.name):
        if kind == SNAPSHOT:
            sid = SnapshotId.parse(ident)
            if deletions.is_scheduled(repo.name, SNAPSHOT, sid.hex()):
                return False
            try:
                await asyncio.to_thread(
                    deletions.schedule_snapshots, repo.name, [sid], now, window, by
                )
            except NotFound:
                return False
            return True
        pack_id = PackId.parse(ident)
        if not await asyncio.to_thread(app[INDEX].has_pack, repo.name, pack_id):
            return False
        entries = await pack_entries(repo, pack_id)
        doc = await asyncio.to_thread(
            deletions.schedule_pack, repo.name, pack_id, entries, now, window, by
        )
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
    task = asyncio.create_task(_purge_forever(app), name="purge")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
