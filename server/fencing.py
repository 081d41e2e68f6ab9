"""Who may write a repository: generations, fencing, and promotion (docs/design.md §17).

Owns the rules, on top of `ReplicationState.generation`: every answer about a repository carries
`Dicomvault-Generation` (the highest generation this site knows of), a practice's write is
refused with `NotPrimary` at a replica, at a fenced site (another site was promoted above this
one), and when the client carries a higher generation than this site knows (which fences this
site at once), and which replica token may push where (the bound primary; the old primary of a
promoted repository, whose leftovers are welcome; the new primary of a fenced one). On a store
several nodes share, `failover_middleware` re-reads the state from the bucket before a write
decides on it and publishes a fence this node heard (server.failover_shared). Must not talk to
peers: the replicator reports what they answer (`ReplicationState.observe_peer`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from engine.errors import RepositoryNotFound, StoreError, UsageError
from engine.protocol.errors import NotPrimary
from engine.protocol.routes import PRIMARY_GENERATION_HEADER, REPLICA_REPO
from server.auth import validate_repo_name
from server.failover_shared import REFRESH_EVERY, SharedFailover
from server.replication.state import Generation, ReplicationState
from server.state import CLOCK, FAILOVER_CHECKS, KNOWN_TOKEN, REPLICATION, REPOS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_READS = frozenset({"GET", "HEAD"})

log = logging.getLogger(__name__)


def header_generation(request: web.Request) -> int:
    text = request.headers.get(PRIMARY_GENERATION_HEADER, "")
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{PRIMARY_GENERATION_HEADER} must be an integer") from None


def check_writable(request: web.Request, name: str) -> None:
    """Refuse a practice's write unless this site is the repository's primary."""
    state: ReplicationState = request.app[REPLICATION].state
    if state.replica_owner(name):
        raise NotPrimary(f"this site holds a replica of {name!r}; back up to the primary")
    carried = header_generation(request)
    if state.fence(name, carried, ""):
        log.warning("%s: a client carries generation %d: this site is fenced", name, carried)
    gen = state.generation(name)
    if gen.fenced:
        at = f" ({gen.primary})" if gen.primary else ""
        raise NotPrimary(
            f"this site is no longer the primary of {name!r}: another site{at} took over at "
            f"generation {gen.fenced_by}; back up there"
        )


def check_replica_push(request: web.Request, name: str, owner: str) -> None:
    """May the primary labelled `owner` push `name` here? 404 (as for an absent repository)
    unless it is bound to `owner`, or this site took `name` over from `owner` (its leftovers
    converge here), or `owner` took it over from this site (this site becomes its peer)."""
    state: ReplicationState = request.app[REPLICATION].state
    gen = state.generation(name)
    bound = state.replica_owner(name) == owner
    if not (bound or gen.promoted_from == owner or (gen.fenced and gen.primary == owner)):
        raise RepositoryNotFound(f"no repository {name!r} for replicas from {owner!r}")
    if bound:
        state.fence(name, header_generation(request), owner)  # a replica learns its generation


async def add_generation(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every answer about a repository says its generation here."""
    name = request.match_info.get("name")
    if name is None:
        return
    try:
        gen = request.app[REPLICATION].state.generation(name)
    except Exception:  # a name that failed validation, or the index closing at shutdown
        return
    response.headers[PRIMARY_GENERATION_HEADER] = str(gen.current)


@web.middleware
async def failover_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On a shared store, a write about a repository (a known token's) decides on the failover
    state the bucket holds, at most `REFRESH_EVERY` seconds old, and re-read at once when this
    node would refuse it; a fence the write taught this node is published for the others."""
    name = request.match_info.get("name")
    # KNOWN_TOKEN: set by `token_middleware`, on shared stores only (unset: nothing to share)
    if name is None or request.method in _READS or not request.get(KNOWN_TOKEN, False):
        return await handler(request)
    shared = SharedFailover(request.app[REPOS].site, request.app[REPLICATION].state, tidy=True)
    name = validate_repo_name(name)
    await _fresh(request, shared, name)
    try:
        return await handler(request)
    finally:
        await _publish_fence(request, shared, name)


async def _fresh(request: web.Request, shared: SharedFailover, name: str) -> None:
    app, state = request.app, shared.state
    replica_route = request.match_info.route.resource is not None and (
        request.match_info.route.resource.canonical.startswith(REPLICA_REPO)
    )
    bound, gen = state.replica_owner(name) is not None, state.generation(name)
    if replica_route:  # a name this site has no failover history for, bound to no one
        would_refuse = not (bound or gen.promoted_from or gen.fenced)
    else:
        would_refuse = bound or gen.fenced
    checked, _ = app[FAILOVER_CHECKS].get(name, (float("-inf"), Generation()))
    now = app[CLOCK].time()
    if would_refuse or now - checked >= REFRESH_EVERY:
        _, gen, _ = await shared.refresh(name)
        app[FAILOVER_CHECKS][name] = (now, gen)


async def _publish_fence(request: web.Request, shared: SharedFailover, name: str) -> None:
    checks = request.app[FAILOVER_CHECKS]
    gen = shared.state.generation(name)
    checked, known = checks.get(name, (float("-inf"), Generation()))
    if gen.fenced_by > known.fenced_by:
        try:
            await shared.fence(name, gen.fenced_by, gen.primary)
        except StoreError as e:  # the answer stands; the other nodes hear of it at their refresh
            log.warning("cannot publish %s's fence at generation %d: %s", name, gen.fenced_by, e)
            return
        checks[name] = (checked, shared.state.generation(name))
