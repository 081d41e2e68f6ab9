"""HTTP routes for proof and alarm: scrub results, drill reports, open alerts, the healing read a
primary makes of its own replica at a peer, and the provider's status page (docs/api.md).

Owns these routes' authorization and JSON shapes. Practice tokens see their own repository's
scrub, drill and alert records; the provider token (`server.provider`) sees every repository's
and the status page; a replica token may read back a pack only from a replica bound to its own
primary label. Must not run scrubs or evaluate alerts itself (`server.scrub`, `server.alerts`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from engine.errors import ObjectNotFound, PermissionDenied, RepositoryNotFound
from engine.ids import PackId
from engine.pack import pack_name
from engine.protocol import routes as routes_v1
from server.alerts.conditions import Facts, PeerFacts, RepoFacts, gather
from server.auth import Action, authorize, authorize_replica, bearer_token, validate_repo_name
from server.bodies import parse_json_object
from server.drills import DrillRecords, parse_report
from server.handlers import parse_id, small_body, stream_object
from server.provider import authorize_provider, may_heal
from server.repos import Repository
from server.state import ALERTS, CLOCK, CONFIG, DISK_USAGE, INDEX, REPLICATION, REPOS, SCRUB
from server.status_page import STATUS_HTML

routes = web.RouteTableDef()
R = routes_v1.REPO
DRILL_BODY = 64 * 1024


def _repository(request: web.Request, action: Action) -> Repository:
    name = validate_repo_name(request.match_info["name"])
    authorize(request.app[INDEX], bearer_token(request), name, action)
    if action is not Action.READ and request.app[REPLICATION].state.replica_owner(name):
        raise PermissionDenied(f"this site holds a replica of {name!r}; report to the primary")
    return request.app[REPOS].get(name)


# -- scrub ------------------------------------------------------------------------------------


@routes.get(R + "/scrub")
async def repo_scrub(request: web.Request) -> web.Response:
    repo = _repository(request, Action.READ)
    state = request.app[SCRUB].state
    doc = {
        "repo": repo.name,
        "last_run": await asyncio.to_thread(state.run, repo.name),
        "bad": await asyncio.to_thread(state.bad, repo.name),
        "progress": await asyncio.to_thread(state.progress),
    }
    return web.json_response(doc)


@routes.get(routes_v1.SCRUB)
async def all_scrubs(request: web.Request) -> web.Response:
    authorize_provider(request.app[INDEX], request)
    state = request.app[SCRUB].state
    doc = {
        "progress": await asyncio.to_thread(state.progress),
        "repos": await asyncio.to_thread(state.runs),
        "bad": await asyncio.to_thread(state.bad),
    }
    return web.json_response(doc)


@routes.post(routes_v1.SCRUB)
async def start_scrub(request: web.Request) -> web.Response:
    """Start a pass now (in the background); 409 while one runs in this server."""
    authorize_provider(request.app[INDEX], request)
    if not request.app[SCRUB].start():
        return web.json_response({"started": False, "running": True}, status=409)
    return web.json_response({"started": True}, status=202)


# -- drills -----------------------------------------------------------------------------------


@routes.post(R + "/drills")
async def post_drill(request: web.Request) -> web.Response:
    repo = _repository(request, Action.APPEND)
    body = parse_json_object(await small_body(request, DRILL_BODY), "drill report")
    report = parse_report(body, request.app[CLOCK].time())
    await asyncio.to_thread(DrillRecords(request.app[INDEX]).put, repo.name, report)
    return web.json_response({"received": report["received"]}, status=201)


@routes.get(R + "/drills")
async def get_drills(request: web.Request) -> web.Response:
    repo = _repository(request, Action.READ)
    rows = await asyncio.to_thread(DrillRecords(request.app[INDEX]).latest, repo.name)
    return web.json_response({"drills": rows})


# -- alerts -----------------------------------------------------------------------------------


@routes.get(routes_v1.ALERTS)
async def all_alerts(request: web.Request) -> web.Response:
    authorize_provider(request.app[INDEX], request)
    docs = await asyncio.to_thread(request.app[ALERTS].store.open_alerts)
    return web.json_response({"alerts": docs})


@routes.get(R + "/alerts")
async def repo_alerts(request: web.Request) -> web.Response:
    repo = _repository(request, Action.ADMIN)
    docs = await asyncio.to_thread(request.app[ALERTS].store.open_alerts)
    return web.json_response({"alerts": [d for d in docs if d.get("repo") == repo.name]})


# -- healing: a primary reads back its own replica ----------------------------------------------


@routes.get(routes_v1.REPLICA_REPO + "/packs/{id}")
async def replica_pack(request: web.Request) -> web.StreamResponse:
    """The pack body, for the primary that pushed it (scrub healing, docs/design.md)."""
    name = validate_repo_name(request.match_info["name"])
    index, token = request.app[INDEX], bearer_token(request)
    owner = authorize_replica(index, token)
    if not may_heal(index, token):
        # Opt-in per token (`peer-token create --heal`): by default a replica token never reads
        # a pack body, and answers exactly as if the route did not exist.
        raise ObjectNotFound("this replica token may not read packs back (peer-token --heal)")
    if request.app[REPLICATION].state.replica_owner(name) != owner:
        raise RepositoryNotFound(f"no repository {name!r}")
    repo = request.app[REPOS].get(name)
    pack_id = parse_id(PackId, request.match_info["id"])
    # Only an indexed pack: a bad one found by this site's scrub is not handed on.
    if not request.app[INDEX].has_pack(name, pack_id):
        raise ObjectNotFound(f"no pack {pack_id.hex()}")
    return await stream_object(request, repo, pack_name(pack_id))


# -- status page ------------------------------------------------------------------------------


@routes.get("/status")
async def status_page(request: web.Request) -> web.Response:
    """Static HTML with inline CSS and JS; the data comes from /status.json with the provider
    token, which the page takes from its URL fragment (never sent to the server in a URL)."""
    return web.Response(text=STATUS_HTML, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})  # fmt: skip


@routes.get("/status.json")
async def status_json(request: web.Request) -> web.Response:
    authorize_provider(request.app[INDEX], request)
    app = request.app
    now = app[CLOCK].time()
    facts = await asyncio.to_thread(
        gather,
        app[CONFIG].alert_site(),
        app[INDEX],
        app[REPOS],
        app[REPLICATION],
        now,
        app[DISK_USAGE],
    )
    alerts = await asyncio.to_thread(app[ALERTS].store.open_alerts)
    return web.json_response(status_document(facts, alerts), headers={"Cache-Control": "no-store"})


def status_document(facts: Facts, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "site": facts.site,
        "time": facts.now,
        "disk": {
            "total": facts.disk_total,
            "used": facts.disk_used,
            "fraction": round(facts.disk_fraction, 4),
            "threshold": facts.disk_threshold,
        },
        "scrub": facts.scrub_progress,
        "peers_down": [_peer_row(p, facts) for p in facts.peers_down],
        "alerts": alerts,
        "repos": [_repo_row(r, facts.now, alerts) for r in facts.repos],
    }


def _peer_row(p: PeerFacts, facts: Facts) -> dict[str, Any]:
    """A peer failing since `down_since`; `unreachable` once past the alert's grace."""
    late = facts.now - p.down_since > facts.peer_grace
    return {"name": p.name, "down_since": p.down_since, "reason": p.reason,
            "last_error": p.last_error, "unreachable": late}  # fmt: skip


def _repo_row(r: RepoFacts, now: float, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    seen = max((float(h.get("received", 0)) for h in r.heartbeats), default=None)
    lags = [v["oldest_age"] for v in r.lag.values() if v.get("oldest_age") is not None]
    mine = [a for a in alerts if a.get("repo") == r.name]
    drills = sorted(r.drills, key=lambda d: float(d.get("received", 0)))
    return {
        "name": r.name,
        "replica_of": r.replica_of,
        "agents": [{"agent": h.get("agent"), "received": h.get("received")} for h in r.heartbeats],
        "last_heartbeat": seen,
        "heartbeat_age": now - seen if seen is not None else None,
        "last_commit": r.last_commit,
        "snapshots": r.snapshots,
        "packs": r.packs,
        "stored_bytes": r.stored_bytes,
        "pending_deletion_bytes": r.pending_deletion_bytes,
        "space": r.space,
        "replication": r.lag,
        "replication_lag": max(lags) if lags else (0.0 if r.lag else None),
        "scrub": r.scrub,
        "scrub_unhealed": len(r.unhealed),
        "drill": drills[-1] if drills else None,
        "alerts": mine,
        "state": "alert" if mine else "ok",
    }
