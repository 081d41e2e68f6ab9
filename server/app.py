"""The aiohttp application factory: wiring, middlewares and background tasks.

Owns `make_app(config)`, which tests and `__main__` both call, the one error middleware that maps
`engine.errors` to HTTP status codes and JSON bodies, request metrics, and the lifecycle of the
index, the replicators, the temp-file sweeper, the scrub schedule and the alert service
(`cleanup_ctx`). Must not contain route logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from engine.clock import SYSTEM, Clock
from engine.errors import DicomvaultError
from server.alerts.conditions import DiskUsageFn
from server.alerts.service import AlertService
from server.audit_middleware import audit_ctx, audit_middleware
from server.auth import hash_token
from server.catchup import CatchUp, fetch_token, publish_tokens, recheck_token
from server.config import ServerConfig
from server.errors import MissingChunks, StorageFull, from_os_error, http_status
from server.events import routes as event_routes
from server.fencing import add_generation, failover_middleware
from server.handlers import routes
from server.handlers_deletion import deletion_routes, purge_ctx
from server.index import ServerIndex
from server.intake import complete_intakes
from server.metrics import Metrics
from server.monitor import routes as monitor_routes
from server.objectlock import objectlock_ctx
from server.replica import routes as replica_routes
from server.replication.service import Replication
from server.repos import open_repositories
from server.scrub import Scrubber, run_scheduled
from server.state import (
    ALERTS,
    CATCHUP,
    CLOCK,
    CONFIG,
    DISK_USAGE,
    FAILOVER_CHECKS,
    INDEX,
    KNOWN_TOKEN,
    METRICS,
    REPLICATION,
    REPOS,
    SCRUB,
    TOKEN_CHECKS,
)

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "too_slow",
    413: "too_large",
    416: "range_not_satisfiable",
}


def _error(status: int, code: str, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, "code": code, **extra}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except DicomvaultError as e:
        return _error_response(request, e)
    except OSError as e:  # a full disk or no descriptors left is the server's state, not a 404
        return _error_response(request, from_os_error(e, f"{request.method} {request.path}"))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.status, _HTTP_CODES.get(e.status, "http_error"), e.reason)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal", "internal server error")


def _error_response(request: web.Request, e: DicomvaultError) -> web.Response:
    status, code = http_status(e)
    extra = e.details() if isinstance(e, MissingChunks) else {}
    if isinstance(e, StorageFull):
        request.app[ALERTS].storage_full()
    if status >= 500:
        log.error("%s %s: %s", request.method, request.path, e)
    return _error(status, code, str(e), **extra)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS].observe(request.method, route, status, time.perf_counter() - start)


async def _index_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[INDEX] = ServerIndex(config.index_path, config.index_map_size)
    # Nothing is uploading yet, so every temp file is a leftover of a crash or kill.
    removed = await app[REPOS].sweep()
    if removed:
        log.info("removed %d temp files left by an earlier run", removed)
    finished = await complete_intakes(app[REPOS], app[INDEX], app[CLOCK])
    if finished:
        log.info("indexed %d objects stored just before an earlier run ended", finished)
    yield
    app[INDEX].close()


@web.middleware
async def token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On a store other nodes share, a token another node minted is fetched from the site
    store into this node's index before any handler authorizes it (server.catchup)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if request.app[REPOS].root.shared and scheme.lower() == "bearer" and token.strip():
        request[KNOWN_TOKEN] = await _cached_token(request.app, hash_token(token.strip()))
    return await handler(request)


async def _cached_token(app: web.Application, digest: bytes) -> bool:
    """Fetch a token this node lacks; re-check a cached one every `token_recheck_interval`
    seconds, so a token revoked through another node stops working here too. Whether this
    node now holds it."""
    index, site, now = app[INDEX], app[REPOS].site, app[CLOCK].time()
    doc = await asyncio.to_thread(index.get_token, digest)
    if doc is None:
        app[TOKEN_CHECKS][digest] = now
        return await fetch_token(index, site, digest)
    interval = app[CONFIG].token_recheck_interval
    if now - app[TOKEN_CHECKS].get(digest, float("-inf")) >= interval:
        app[TOKEN_CHECKS][digest] = now
        return await recheck_token(index, site, digest, doc, now, interval)
    return True


async def _catchup_ctx(app: web.Application) -> AsyncIterator[None]:
    # After the index: the per-node cache catches up from a shared store (server.catchup),
    # and this node's token hashes are published there for the other nodes.
    app[CATCHUP] = CatchUp(app[INDEX], app[CLOCK])
    app[TOKEN_CHECKS] = {}
    task = None
    if app[REPOS].root.shared:
        task = asyncio.create_task(_publish_forever(app), name="publish-tokens")
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _publish_forever(app: web.Application) -> None:
    published: set[bytes] = set()
    while True:
        try:
            published = await publish_tokens(app[INDEX], app[REPOS].site, published)
        except DicomvaultError as e:
            log.warning("publishing token hashes to the store failed: %s", e)
        await asyncio.sleep(app[CONFIG].token_publish_interval)


async def _replication_ctx(app: web.Application) -> AsyncIterator[None]:
    # After the index: the queue lives in the same LMDB environment.
    replication = Replication(
        app[CONFIG].replication_settings(), app[INDEX], app[REPOS], app[CLOCK]
    )
    app[REPLICATION] = replication
    replication.start()
    yield
    await replication.stop()


async def _sweep_forever(app: web.Application) -> None:
    config = app[CONFIG]
    while True:
        await asyncio.sleep(config.sweep_interval)
        cutoff = app[CLOCK].time() - config.incoming_max_age
        await app[REPOS].sweep(cutoff)


async def _sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_sweep_forever(app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _scrub_ctx(app: web.Application) -> AsyncIterator[None]:
    # Scrub (docs/design.md "Scrub and healing"): after the index and replication (it reads
    # the replica bindings); a scheduled pass every `scrub_interval`, 0 for on demand only.
    config = app[CONFIG]
    app[SCRUB] = scrubber = Scrubber(config, app[INDEX], app[REPOS], app[CLOCK])
    task = None
    if config.scrub_interval > 0:
        task = asyncio.create_task(run_scheduled(scrubber, config.scrub_interval))
    yield
    await scrubber.stop()
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _alerts_ctx(app: web.Application) -> AsyncIterator[None]:
    # Alerts (docs/design.md "Alerts"): evaluated every `alerts.evaluate_interval`.
    service = AlertService(
        app[CONFIG].alert_site(),
        app[INDEX],
        app[REPOS],
        app[REPLICATION],
        app[CLOCK],
        disk_usage=app[DISK_USAGE],
    )
    app[ALERTS] = service
    task = asyncio.create_task(service.run(), name="alerts")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_app(
    config: ServerConfig,
    *,
    clock: Clock = SYSTEM,
    disk_usage: DiskUsageFn = shutil.disk_usage,
) -> web.Application:
    """The server; tests inject the clock and the disk-usage probe behind the disk alert."""
    # Metrics outermost so they time the error responses too; the audit trail outside the error
    # middleware, so it records the status a refused request was answered with.
    app = web.Application(
        middlewares=[
            metrics_middleware,
            audit_middleware,
            error_middleware,
            token_middleware,
            failover_middleware,
        ],
        client_max_size=config.max_body_size,
    )
    app[CONFIG] = config
    app[REPOS] = open_repositories(config, clock)
    app[METRICS] = Metrics()
    app[CLOCK] = clock
    app[DISK_USAGE] = disk_usage
    app[FAILOVER_CHECKS] = {}
    app.cleanup_ctx.append(_index_ctx)
    app.on_response_prepare.append(add_generation)
    app.cleanup_ctx.append(audit_ctx)  # after the index: the middleware reads token records
    app.cleanup_ctx.append(_catchup_ctx)
    app.cleanup_ctx.append(_replication_ctx)
    app.cleanup_ctx.append(_sweeper_ctx)
    app.cleanup_ctx.append(_scrub_ctx)
    app.cleanup_ctx.append(_alerts_ctx)
    app.cleanup_ctx.append(purge_ctx)
    app.cleanup_ctx.append(objectlock_ctx)
    app.add_routes(routes)
    app.add_routes(replica_routes)
    app.add_routes(event_routes)
    app.add_routes(monitor_routes)
    app.add_routes(deletion_routes)
    return app
