"""Peer-side routes `/v1/replica/repos/{name}/...`: what a primary site may do here.

Owns the replica role's surface: implicit creation of a replicated repository, bound to the
primary that created it; write-once pushes of config, key objects, packs (verified by their
BLAKE3 name on arrival, exactly like a practice's upload) and commits (refused while a
referenced chunk is missing); the practice's token hashes; and inventories (which packs are
missing, which snapshots are held); and purges: an object the primary destroyed past its
undelete window is scheduled here on this site's own window (docs/design.md §14), never
destroyed at once. There is no route to read a pack or delete anything at once.
Must not implement storage or verification itself: it reuses `server.handlers`.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from engine.errors import RepositoryNotFound, UsageError
from engine.ids import ID_SIZE, PackId
from engine.protocol import routes as routes_v1
from server.auth import PRACTICE_ROLES, authorize_replica, bearer_token, validate_repo_name
from server.bodies import parse_json_object
from server.catchup import MISSING_EVERY, revoke_tokens
from server.fencing import check_replica_push
from server.handlers import (
    PAGE,
    accept_commit,
    accept_pack,
    commit_body,
    parse_id,
    small_body,
    store_small_object,
)
from server.handlers_deletion import PURGE_KINDS, schedule_for_primary
from server.repos import Repository
from server.state import CATCHUP, CLOCK, INDEX, REPLICATION, REPOS

routes = web.RouteTableDef()
RR = routes_v1.REPLICA_REPO


def _replica(request: web.Request, *, create: bool) -> Repository:
    """The repository this replica token may push to, its folder created on the first push.

    Only names this site's operator bound to the token's primary (`peer-token create --repo`,
    docs/design.md §6.2) exist for it: a practice's own repository on this site, one bound to
    another primary, or an unbound name answers 404 exactly like an absent one, so a primary
    can neither probe nor touch another practice's data, nor take a name a practice here needs.
    """
    name = validate_repo_name(request.match_info["name"])
    owner = authorize_replica(request.app[INDEX], bearer_token(request))
    check_replica_push(request, name, owner)
    repos = request.app[REPOS]
    return repos.ensure(name) if create else repos.get(name)


@routes.put(RR + "/config")
async def put_config(request: web.Request) -> web.Response:
    repo = _replica(request, create=True)
    return await store_small_object(request, repo, "config", await small_body(request))


@routes.put(RR + "/keys/{key}")
async def put_key(request: web.Request) -> web.Response:
    repo = _replica(request, create=True)
    name = "keys/" + request.match_info["key"]
    return await store_small_object(request, repo, name, await small_body(request))


@routes.put(RR + "/events/{event}")
async def put_event(request: web.Request) -> web.Response:
    repo = _replica(request, create=True)
    name = "events/" + request.match_info["event"]
    return await store_small_object(request, repo, name, await small_body(request))


@routes.put(RR + "/packs/{id}")
async def put_pack(request: web.Request) -> web.Response:
    repo = _replica(request, create=True)
    return await accept_pack(request, repo, parse_id(PackId, request.match_info["id"]))


@routes.post(RR + "/snapshots")
async def commit(request: web.Request) -> web.Response:
    repo = _replica(request, create=True)
    sid = await accept_commit(request, repo, await commit_body(request))
    return web.json_response({"snapshot": sid.hex()}, status=201)


@routes.post(RR + "/purge")
async def purge(request: web.Request) -> web.Response:
    """Body `{"kind": "snapshot"|"pack", "id": hex}`: the primary destroyed it after its window.
    Only the primary's replica token gets here; the object is scheduled, not destroyed."""
    repo = _replica(request, create=False)
    owner = authorize_replica(request.app[INDEX], bearer_token(request))
    if request.app[REPLICATION].state.replica_owner(repo.name) != owner:  # a site that took
        raise RepositoryNotFound(f"{repo.name} is not a replica of {owner!r} here")  # over
    doc = parse_json_object(await small_body(request), "purge body")
    kind, ident = doc.get("kind"), doc.get("id")
    if kind not in PURGE_KINDS or not isinstance(ident, str):
        raise UsageError('purge body must be {"kind": "snapshot" or "pack", "id": hex}')
    scheduled = await schedule_for_primary(request.app, repo, kind, ident, f"replica:{owner}")
    return web.json_response({"scheduled": scheduled})


@routes.put(RR + "/tokens")
async def put_tokens(request: web.Request) -> web.Response:
    """Replace this repository's replicated token hashes, so the practice's tokens work here."""
    repo = _replica(request, create=True)
    hashes = _parse_tokens(await small_body(request))
    added, revoked = await asyncio.to_thread(_replace_tokens, request, repo.name, hashes)
    if repo.shared:  # the other nodes of this site drop them too (server.catchup)
        await revoke_tokens(request.app[REPOS].site, revoked)
    return web.json_response({"tokens": len(hashes), "added": added})


def _parse_tokens(body: bytes) -> dict[bytes, str]:
    doc = parse_json_object(body, "tokens body")
    try:
        out = {bytes.fromhex(r["hash"]): str(r["role"]) for r in doc["tokens"]}
    except (ValueError, KeyError, TypeError):
        raise UsageError('tokens body must be {"tokens": [{"hash": hex, "role": role}]}') from None
    if any(len(h) != ID_SIZE or role not in PRACTICE_ROLES for h, role in out.items()):
        raise UsageError("token hashes are 32 bytes and roles are backup, restore or admin")
    return out


def _replace_tokens(
    request: web.Request, repo: str, hashes: dict[bytes, str]
) -> tuple[int, list[bytes]]:
    index, now = request.app[INDEX], request.app[CLOCK].time()
    existing = index.tokens()
    revoked = []
    for h, doc in existing:  # revoked at the primary: revoked here
        if doc.get("repo") == repo and doc.get("replicated") and h not in hashes:
            index.delete_token(h)
            revoked.append(h)
    held = {h: doc for h, doc in existing}
    added = 0
    for h, role in hashes.items():
        current = held.get(h)
        if current is not None and (current.get("repo") != repo or current.get("role") != role):
            continue  # never re-point a token that belongs to another repository or role
        if current is None:
            index.put_token(h, {"repo": repo, "role": role, "created": now, "replicated": True})
            added += 1
    return added, revoked


@routes.post(RR + "/packs/missing")
async def packs_missing(request: web.Request) -> web.Response:
    """Body: raw 32-byte pack ids; answer: those this replica does not hold, in order."""
    repo = _replica(request, create=False)
    body = await small_body(request, PAGE * ID_SIZE)
    if len(body) % ID_SIZE:
        raise UsageError(f"body must be whole {ID_SIZE}-byte pack ids")
    index = request.app[INDEX]
    ids = [PackId(body[i : i + ID_SIZE]) for i in range(0, len(body), ID_SIZE)]
    await request.app[CATCHUP].packs(repo, fresh_for=MISSING_EVERY)  # other nodes' packs
    absent = await asyncio.to_thread(lambda: [p for p in ids if not index.has_pack(repo.name, p)])
    return web.Response(body=b"".join(absent), content_type="application/octet-stream")


@routes.get(RR + "/snapshots")
async def list_snapshots(request: web.Request) -> web.Response:
    repo = _replica(request, create=False)
    await request.app[CATCHUP].snapshots(repo)  # commits other nodes received
    rows = await asyncio.to_thread(lambda: list(request.app[INDEX].snapshots(repo.name)))
    return web.json_response({"snapshots": sorted(sid.hex() for sid, _ in rows)})
