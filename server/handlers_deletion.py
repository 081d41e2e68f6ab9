"""HTTP handlers for forget and undelete, and the purge task (docs/design.md §14).

Owns the routes `POST forget`, `GET deletions`, `POST undelete` of a repository and the
background purge that runs every `purge_interval` seconds and asks `server.deletion` to destroy
what is past the undelete window on the app's clock. Scheduling and undoing need an admin
token; a backup or restore token is refused (403, exit 15) with nothing changed. Must not
implement the bookkeeping itself (that is `server.deletion`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from engine.errors import UsageError
from engine.ids import SnapshotId
from engine.protocol import routes as routes_v1
from server.auth import Action
from server.bodies import parse_json_object
from server.deletion import Deletions, Window
from server.handlers import _repository, parse_id, small_body
from server.state import CLOCK, CONFIG, INDEX, REPOS

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
    deletions = Deletions(request.app[INDEX])
    docs = await asyncio.to_thread(
        deletions.schedule_snapshots, repo.name, ids, now, _window(request.app), by
    )
    return web.json_response({"scheduled": [_public(d) for d in docs]})


@deletion_routes.get(R + "/deletions")
async def pending(request: web.Request) -> web.Response:
    repo = _repository(request, Action.READ)
    docs = await asyncio.to_thread(Deletions(request.app[INDEX]).pending, repo.name)
    return web.json_response({"pending": [_public(d) for d in docs]})


@deletion_routes.post(R + "/undelete")
async def undelete(request: web.Request) -> web.Response:
    """Bring back scheduled snapshots (`{"snapshots": [ids or prefixes]}`, or all without it)."""
    repo = _repository(request, Action.ADMIN)
    names = await _names(request, "snapshots")
    docs = await asyncio.to_thread(Deletions(request.app[INDEX]).undelete, repo.name, names)
    return web.json_response({"restored": [_public(d) for d in docs]})


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in ("kind", "id", "scheduled", "purge_after")} | {
        "time": doc.get("summary", {}).get("time")
    }


async def _purge_forever(app: web.Application) -> None:
    deletions = Deletions(app[INDEX])
    while True:
        try:
            done = await deletions.purge_due(app[REPOS], app[CLOCK].time())
            if done:
                log.info("purged %d objects past the undelete window", len(done))
        except Exception:  # a failing store must not end purging for good
            log.exception("purge failed")
        await asyncio.sleep(app[CONFIG].purge_interval)


async def purge_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the index: purges what is past the window, every `purge_interval` seconds."""
    task = asyncio.create_task(_purge_forever(app), name="purge")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
