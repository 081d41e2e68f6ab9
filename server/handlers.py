"""HTTP handlers for `/v1`: parse the request, authorize, call intake/index/store, answer JSON.

Owns the routes and their request/response bodies (documented in docs/api.md). Handlers raise
`engine.errors`; the error middleware in `server.app` turns them into status codes. Must not
implement storage or verification logic itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TypeVar

import blake3
from aiohttp import web

from engine.commit import CommitRecord, snapshot_id_of, snapshot_name
from engine.errors import FormatError, ObjectExists, ObjectNotFound, PermissionDenied, UsageError
from engine.ids import ID_SIZE, ChunkId, PackId, SnapshotId
from engine.keyobject import KeyObject
from engine.pack import pack_name
from engine.protocol import routes as routes_v1
from engine.protocol.errors import FullRefsRequired, HashMismatch
from server.auth import Action, authorize, bearer_token, validate_repo_name
from server.bodies import Pace, paced, parse_json, parse_json_object, query_int, read_body
from server.deletion import SNAPSHOT as SNAPSHOT_DELETION
from server.deletion_shared import LISTING_FRESH
from server.errors import BodyTooLarge, MissingChunks
from server.fencing import check_writable
from server.intake import journalled, receive_pack
from server.monitor_metrics import render as render_monitor_metrics
from server.quarantine import object_name, quarantine
from server.reindex import snapshot_summary
from server.replication.state import CONFIG as CONFIG_ITEM
from server.replication.state import EVENT, KEY, PACK, SNAPSHOT, TOKENS, Item
from server.repos import Repository
from server.state import (
    ALERTS,
    CATCHUP,
    CLOCK,
    CONFIG,
    DELETIONS,
    INDEX,
    METRICS,
    REPLICATION,
    REPOS,
    SCRUB,
    SHARED_DELETIONS,
)

log = logging.getLogger(__name__)
SMALL_BODY = 1024 * 1024  # config, key objects and heartbeats are a few KiB
MAX_EVENT_SIZE = 64 * 1024  # a sealed audit event: who opened which studies and series
PAGE = 10_000  # packs per listing page

_T = TypeVar("_T", PackId, SnapshotId)
routes = web.RouteTableDef()
R = routes_v1.REPO


def _repository(request: web.Request, action: Action) -> Repository:
    """Validate the name (400), the token (401), its repository (404) and role (403)."""
    name = validate_repo_name(request.match_info["name"])
    authorize(request.app[INDEX], bearer_token(request), name, action)
    if action is not Action.READ:  # a replica's or a fenced site's would fork the repository
        check_writable(request, name)
    return request.app[REPOS].get(name)


def parse_id(cls: type[_T], text: str) -> _T:
    try:
        return cls.parse(text)
    except ValueError as e:
        raise UsageError(str(e)) from None


def pace(request: web.Request) -> Pace:
    config = request.app[CONFIG]
    return Pace(config.min_body_rate, config.body_grace)


async def small_body(request: web.Request, limit: int = SMALL_BODY) -> bytes:
    """The body, counted as it arrives (chunked too): 413 once past `limit`, 408 if too slow."""
    return await read_body(request, limit, pace(request))


@routes.get(routes_v1.HEALTH)
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "api": 1})


# -- config and key objects: write-once, put-if-absent ------------------------------------


async def _get_object(request: web.Request, name: str) -> web.Response:
    repo = _repository(request, Action.READ)
    data = await repo.store.get(name)
    return web.Response(body=data, content_type="application/octet-stream")


async def _put_if_absent(request: web.Request, name: str) -> web.Response:
    repo = _repository(request, Action.APPEND)
    return await store_small_object(request, repo, name, await small_body(request))


async def store_small_object(
    request: web.Request, repo: Repository, name: str, data: bytes
) -> web.Response:
    """Write-once `config` or `keys/<name>`: 201 created, 200 same bytes, 409 different.

    A key object must parse with KDF costs in bounds (422 otherwise): whoever can write one
    decides what every later unlock spends (docs/design.md, threat model)."""
    if name.startswith("keys/"):
        KeyObject.decode(data)
    if name.startswith("events/"):
        check_event(name.removeprefix("events/"), data)
    if await repo.store.put(name, data):
        if name == "config":  # a practice's `init`: its tokens exist by now, so send them too
            items = [Item(CONFIG_ITEM, "config"), Item(TOKENS, "tokens")]
        elif name.startswith("events/"):
            items = [Item(EVENT, name.removeprefix("events/"))]
        else:
            items = [Item(KEY, name.removeprefix("keys/"))]
        await _notify(request, repo, items)
        return web.json_response({"created": True}, status=201)
    if await repo.store.get(name) != data:
        raise ObjectExists(f"{name} already exists with different content")
    return web.json_response({"created": False})


def check_event(name: str, data: bytes) -> None:
    """An audit event is opaque sealed bytes named by their BLAKE3 (first 16 bytes, hex)."""
    if len(data) > MAX_EVENT_SIZE:
        raise UsageError(f"audit event larger than {MAX_EVENT_SIZE} bytes")
    if blake3.blake3(data).hexdigest()[:32] != name:
        raise HashMismatch(f"audit event {name} does not match its name")


async def _notify(request: web.Request, repo: Repository, items: list[Item]) -> None:
    replication = request.app[REPLICATION]
    if await asyncio.to_thread(replication.enqueue, repo.name, items):
        replication.wake()  # asyncio.Event: set it from the loop, not the worker thread


@routes.get(R + "/config")
async def get_config(request: web.Request) -> web.Response:
    return await _get_object(request, "config")


@routes.put(R + "/config")
async def put_config(request: web.Request) -> web.Response:
    return await _put_if_absent(request, "config")


@routes.get(R + "/keys")
async def list_keys(request: web.Request) -> web.Response:
    repo = _repository(request, Action.READ)
    names = sorted([n.removeprefix("keys/") async for n in repo.store.list("keys")])
    return web.json_response({"keys": names})


@routes.get(R + "/keys/{key}")
async def get_key(request: web.Request) -> web.Response:
    return await _get_object(request, "keys/" + request.match_info["key"])


@routes.put(R + "/keys/{key}")
async def put_key(request: web.Request) -> web.Response:
    """A backup token may write the first key object (`init`, before `config`); once the
    repository has a config, only an admin token may add one."""
    repo = _repository(request, Action.APPEND)
    if await repo.store.exists("config"):
        try:
            authorize(request.app[INDEX], bearer_token(request), repo.name, Action.ADMIN)
        except PermissionDenied:
            raise PermissionDenied("only an admin token may add a key object") from None
    name = "keys/" + request.match_info["key"]
    return await store_small_object(request, repo, name, await small_body(request))


# -- chunks and packs ----------------------------------------------------------------------


@routes.post(R + "/missing")
async def missing(request: web.Request) -> web.Response:
    repo = _repository(request, Action.READ)
    cap = request.app[CONFIG].max_missing_ids * ID_SIZE
    body = await small_body(request, cap)
    if len(body) % ID_SIZE:
        raise UsageError(f"body must be whole {ID_SIZE}-byte chunk ids")
    view = memoryview(body)
    ids = [bytes(view[i : i + ID_SIZE]) for i in range(0, len(body), ID_SIZE)]
    await request.app[SHARED_DELETIONS].sync(repo, LISTING_FRESH)  # other nodes' schedules
    absent = await request.app[CATCHUP].missing(repo, ids)  # the index, then the pack log
    metrics = request.app[METRICS]
    metrics.missing_query_ids += len(ids)
    metrics.missing_ids_returned += len(absent)
    return web.Response(body=b"".join(absent), content_type="application/octet-stream")


@routes.get(R + "/packs")
async def list_packs(request: web.Request) -> web.Response:
    repo = _repository(request, Action.READ)
    after_text = request.query.get("after")
    after = parse_id(PackId, after_text) if after_text else None
    limit = query_int(request, "limit", PAGE, 1, PAGE)
    if after is None:  # a listing starts: learn what other nodes stored and scheduled first
        await request.app[SHARED_DELETIONS].sync(repo)
        await request.app[CATCHUP].packs(repo)
    rows = await asyncio.to_thread(request.app[INDEX].packs, repo.name, after, limit)
    page = [{"id": r.pack_id.hex(), "size": r.size, "time": r.time} for r in rows]
    more = len(rows) == limit
    return web.json_response({"packs": page, "next": page[-1]["id"] if more else None})


async def _counted(body: AsyncIterator[bytes], request: web.Request) -> AsyncIterator[bytes]:
    metrics = request.app[METRICS]
    async for piece in body:
        metrics.bytes_received += len(piece)
        yield piece


@routes.put(R + "/packs/{id}")
async def put_pack(request: web.Request) -> web.Response:
    repo = _repository(request, Action.APPEND)
    return await accept_pack(request, repo, parse_id(PackId, request.match_info["id"]))


async def accept_pack(request: web.Request, repo: Repository, pack_id: PackId) -> web.Response:
    """Stream, verify, store and index a pack (server.intake), then queue it for the peers."""
    config, index, metrics = request.app[CONFIG], request.app[INDEX], request.app[METRICS]
    if (request.content_length or 0) > config.max_body_size:
        raise BodyTooLarge(f"pack larger than {config.max_body_size} bytes")
    if index.has_pack(repo.name, pack_id):
        # Idempotent: answer without reading or rewriting; the body is discarded unread.
        metrics.packs_duplicate += 1
        return web.json_response({"pack": pack_id.hex(), "created": False})
    body = _counted(paced(request, pace(request)), request)
    result = await receive_pack(
        repo, index, pack_id, body, config.max_body_size, request.app[CLOCK]
    )
    if result.created:
        metrics.packs_stored += 1
    else:
        metrics.packs_duplicate += 1
    # Queued even when not created: a pack linked by a killed upload was never queued.
    await _notify(request, repo, [Item(PACK, pack_id.hex(), result.size)])
    doc = {"pack": pack_id.hex(), "created": result.created, "chunks": result.chunks}
    return web.json_response(doc, status=201 if result.created else 200)


def _byte_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """(offset, length) of the request's Range within `size` bytes, `(0, size)` without one;
    None when it cannot be satisfied (416). The same reading as aiohttp's file responses."""
    try:
        rng = request.http_range
    except ValueError:
        return None
    start, end = rng.start, rng.stop
    if start is None:
        return 0, size
    if start < 0 and end is None:  # a suffix, "bytes=-N"
        start = max(0, size + start)
        end = size
    end = min(size if end is None else end, size)
    return (start, end - start) if start < size else None


async def stream_object(request: web.Request, repo: Repository, name: str) -> web.StreamResponse:
    """Stream a stored object from the repository's Store, with Range (206, 416). The first
    piece is read before the status is sent, so a store that fails (503 out of descriptors,
    507) is answered with that status, never with a 404 or a cut 200."""
    size = (await repo.store.stat(name)).size
    span = _byte_range(request, size)
    if span is None:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
    offset, length = span
    response = web.StreamResponse(status=206 if request.http_range.start is not None else 200)
    response.headers["Accept-Ranges"] = "bytes"
    response.content_type = "application/octet-stream"
    response.content_length = length
    if response.status == 206:
        response.headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{size}"
    if request.method == "HEAD" or not length:
        await response.prepare(request)
        return response
    pieces = aiter(repo.store.get_stream(name, offset, length))
    first = await anext(pieces, b"")
    await response.prepare(request)
    await response.write(first)
    async for piece in pieces:
        await response.write(piece)
    return response


@routes.get(R + "/packs/{id}")
async def get_pack(request: web.Request) -> web.StreamResponse:
    """GET and HEAD: a pack exists once it is indexed. A server killed between linking a pack
    and indexing it holds the file unindexed; answering from the file would tell a client
    that the pack is safe while every commit naming its chunks is refused, so it is absent
    until a re-upload indexes it (intake links idempotently, then indexes)."""
    repo = _repository(request, Action.READ)
    pack_id = parse_id(PackId, request.match_info["id"])
    shared = request.app[SHARED_DELETIONS]
    await shared.sync(repo, LISTING_FRESH)
    if not await request.app[CATCHUP].has_pack(repo, pack_id):
        await shared.sync(repo)  # revived through another node since this node's last look?
        if not await asyncio.to_thread(request.app[INDEX].has_pack, repo.name, pack_id):
            raise ObjectNotFound(f"no pack {pack_id.hex()}")
    return await stream_object(request, repo, pack_name(pack_id))


# -- snapshots -----------------------------------------------------------------------------


async def check_generation(request: web.Request, repo: Repository, record: CommitRecord) -> None:
    """The prune protocol's commit rule (docs/design.md §14): a commit that lists only changed
    chunks must come from a client reconciled at the current generation while no prune runs;
    otherwise it must list every chunk (`?full=1`). Chunks it needs from packs a prune
    scheduled revive those packs."""
    deletions = request.app[DELETIONS]
    generation = query_int(request, "generation", 0, 0, 2**62)
    full = request.query.get("full") == "1"
    if repo.shared:  # the log and the schedules are in the store (server.deletion_shared)
        now = request.app[CLOCK].time()
        await request.app[SHARED_DELETIONS].check_commit(repo, record.refs, generation, full, now)
        return
    if not full and deletions.commit_is_stale(repo.name, generation, request.app[CLOCK].time()):
        raise FullRefsRequired("a prune ran or is running: commit again listing every chunk")
    absent = await asyncio.to_thread(request.app[INDEX].missing, repo.name, record.refs)
    if absent:
        await deletions.revive_for(repo, absent)


async def _check_refs(request: web.Request, repo: Repository, record: CommitRecord) -> None:
    absent = await request.app[CATCHUP].missing(repo, record.refs, force=True)
    if absent:
        request.app[METRICS].commits_refused += 1
        raise MissingChunks([ChunkId(a) for a in absent])


async def _store_commit(
    request: web.Request, repo: Repository, sid: SnapshotId, record: CommitRecord, data: bytes
) -> None:
    """Durable in the store, then indexed. The receive time (the no-commit alert's clock) is
    the object's mtime, which reindex reads back; it comes from the app's clock so that tests
    can move it. A retried commit (same bytes, same name) keeps its first receive time."""
    name, index = snapshot_name(sid), request.app[INDEX]
    async with journalled(repo, index, name):
        await repo.store.put(name, data, mtime=request.app[CLOCK].time())
        summary = snapshot_summary(record, (await repo.store.stat(name)).mtime)
        await asyncio.to_thread(index.add_snapshot, repo.name, sid, summary)


@routes.post(R + "/snapshots")
async def commit(request: web.Request) -> web.Response:
    repo = _repository(request, Action.APPEND)
    data = await commit_body(request)
    sid = await accept_commit(request, repo, data)
    return web.json_response({"snapshot": sid.hex()}, status=201)


async def commit_body(request: web.Request) -> bytes:
    """A commit record's bytes, checked as bounded JSON before the engine decodes them."""
    data = await small_body(request, request.app[CONFIG].max_body_size)
    try:
        await asyncio.to_thread(parse_json, data, "commit record")
    except UsageError as e:  # 422 malformed, as for every other bad commit record
        raise FormatError(str(e)) from None
    return data


async def accept_commit(request: web.Request, repo: Repository, data: bytes) -> SnapshotId:
    """Check a commit's refs, store it durably, index it, then queue it for the peers."""
    record = CommitRecord.decode(data)
    sid = snapshot_id_of(data)
    deletions, shared = request.app[DELETIONS], request.app[SHARED_DELETIONS]
    # Never between a prune's steps (server.deletion); on a shared store, in flight for all.
    async with deletions.lock(repo.name), shared.intent(repo):
        await check_generation(request, repo, record)
        # Cost ∝ len(refs): refs hold only what changed since the parent (engine.commit).
        await _check_refs(request, repo, record)
        await _store_commit(request, repo, sid, record, data)
    request.app[METRICS].commits += 1
    await _notify(request, repo, [Item(SNAPSHOT, sid.hex())])
    return sid


@routes.get(R + "/snapshots")
async def list_snapshots(request: web.Request) -> web.Response:
    repo = _repository(request, Action.READ)
    await request.app[SHARED_DELETIONS].sync(repo)  # forgotten and undeleted through others
    await request.app[CATCHUP].snapshots(repo)  # commits other nodes accepted
    rows = await asyncio.to_thread(lambda: list(request.app[INDEX].snapshots(repo.name)))
    docs = [{"id": sid.hex(), **summary} for sid, summary in rows]
    docs.sort(key=lambda d: (d["time"], d["id"]))
    return web.json_response({"snapshots": docs})


@routes.get(R + "/snapshots/{id}")
async def get_snapshot(request: web.Request) -> web.StreamResponse:
    repo = _repository(request, Action.READ)
    sid = parse_id(SnapshotId, request.match_info["id"])
    await request.app[SHARED_DELETIONS].sync(repo, LISTING_FRESH)
    if request.app[DELETIONS].is_scheduled(repo.name, SNAPSHOT_DELETION, sid.hex()):
        raise ObjectNotFound(f"snapshot {sid.hex()} is scheduled for deletion (undelete it)")
    return await stream_object(request, repo, snapshot_name(sid))


# -- quarantine: the practice's admin token takes a planted object out (server.quarantine) ----


@routes.delete(R + "/{kind:packs|snapshots|keys}/{id}")
async def quarantine_object(request: web.Request) -> web.Response:
    repo = _repository(request, Action.ADMIN)
    kind = request.match_info["kind"].removesuffix("s")
    name = object_name(kind, request.match_info["id"])
    by = f"admin token from {request.remote}"
    reason = request.query.get("reason", "")[:500]
    now = request.app[CLOCK].time()
    entry = await quarantine(repo, request.app[INDEX], name, by=by, reason=reason, now=now)
    return web.json_response(entry)


# -- agent heartbeats ----------------------------------------------------------------------


@routes.post(R + "/heartbeat")
async def post_heartbeat(request: web.Request) -> web.Response:
    repo = _repository(request, Action.APPEND)
    info = parse_json_object(await small_body(request, 64 * 1024), "heartbeat")
    if not isinstance(info.get("agent"), str) or not info["agent"]:
        raise UsageError('heartbeat must be a JSON object with a string "agent"')
    agent = info["agent"][:128]
    doc = {"agent": agent, "received": request.app[CLOCK].time(), "info": info}
    request.app[INDEX].put_heartbeat(repo.name, agent, doc)
    await request.app[ALERTS].heartbeats.publish(repo, doc)  # other nodes see it (3.1.3)
    return web.json_response({"received": doc["received"]})


@routes.get(R + "/heartbeat")
async def get_heartbeat(request: web.Request) -> web.Response:
    repo = _repository(request, Action.ADMIN)
    await request.app[ALERTS].heartbeats.merge(repo)  # the newest any node received (3.1.3)
    return web.json_response({"heartbeats": request.app[INDEX].heartbeats(repo.name)})


# -- replication status ----------------------------------------------------------------------


@routes.get(R + "/replication")
async def replication_status(request: web.Request) -> web.Response:
    repo = _repository(request, Action.READ)
    doc = await asyncio.to_thread(request.app[REPLICATION].repo_status, repo.name)
    return web.json_response(doc)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    count = len(await asyncio.to_thread(request.app[REPOS].names))
    text = request.app[METRICS].render(repositories=count)
    text += await asyncio.to_thread(request.app[REPLICATION].render_metrics)
    text += await asyncio.to_thread(_monitor_metrics, request.app)
    text += await asyncio.to_thread(render_space_metrics, request.app)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


def render_space_metrics(app: web.Application) -> str:
    from server.handlers_deletion import render_metrics  # it imports this module

    return render_metrics(app)


def _monitor_metrics(app: web.Application) -> str:
    """Scrub and alert series (server.monitor_metrics)."""
    return render_monitor_metrics(app[SCRUB].state, app[ALERTS].store)
