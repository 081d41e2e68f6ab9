"""Who may write a repository: generations, fencing, and promotion (docs/design.md §17).

Owns the rules, on top of `ReplicationState.generation`: every answer about a repository carries
`Dicomvault-Generation` (the highest generation this site knows of), a practice's write is
refused with `NotPrimary` at a replica, at a fenced site (another site was promoted above this
one), and when the client carries a higher generation than this site knows (which fences this
site at once), and which replica token may push where (the bound primary; the old primary of a
promoted repository, whose leftovers are welcome; the new primary of a fenced one). Must not do
network I/O: the replicator reports what peers answer (`ReplicationState.observe_peer`).
"""

from __future__ import annotations

import logging

from aiohttp import web

from engine.errors import RepositoryNotFound, UsageError
from engine.protocol.errors import NotPrimary
from engine.protocol.routes import PRIMARY_GENERATION_HEADER
from server.replication.state import ReplicationState
from server.state import REPLICATION

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
