"""Routes for the practice's sealed audit events: `PUT/GET …/events/{event}`, `GET …/events`.

An event is opaque to the server (sealed with the repository's key by the client, docs/design.md
§16), at most 64 KiB, named by the first 16 bytes of its BLAKE3 (checked on arrival, 422
otherwise) and write-once; it replicates to peers like a key object. Any practice token may add
one — a restore token too, since restores are what is audited — and at a replica too: an event
is content-named, so writing it cannot fork the repository. Must not interpret an event.
"""

from __future__ import annotations

from aiohttp import web

from engine.protocol import routes as routes_v1
from server.auth import Action, authorize, bearer_token, validate_repo_name
from server.handlers import MAX_EVENT_SIZE, small_body, store_small_object
from server.repos import Repository
from server.state import INDEX, REPOS

routes = web.RouteTableDef()
R = routes_v1.REPO


def _repository(request: web.Request) -> Repository:
    name = validate_repo_name(request.match_info["name"])
    authorize(request.app[INDEX], bearer_token(request), name, Action.READ)
    return request.app[REPOS].get(name)


@routes.put(R + "/events/{event}")
async def put_event(request: web.Request) -> web.Response:
    repo = _repository(request)
    name = "events/" + request.match_info["event"]
    return await store_small_object(request, repo, name, await small_body(request, MAX_EVENT_SIZE))


@routes.get(R + "/events")
async def list_events(request: web.Request) -> web.Response:
    repo = _repository(request)
    names = sorted([n.removeprefix("events/") async for n in repo.store.list("events")])
    return web.json_response({"events": names})


@routes.get(R + "/events/{event}")
async def get_event(request: web.Request) -> web.Response:
    repo = _repository(request)
    data = await repo.store.get("events/" + request.match_info["event"])
    return web.Response(body=data, content_type="application/octet-stream")
