"""Healing a bad pack from a peer site: fetch the peer's copy, verify it, store it, re-index it.

Owns the primary's side of `GET /v1/replica/repos/{name}/packs/{id}` (docs/api.md "Healing"): the
request, with the replica token this site already holds for pushing to that peer, and the
streaming of the body through `server.intake.receive_pack`, which hashes it against its name,
fsyncs, links and indexes it in the order of invariant 1. A peer copy that does not hash to its
name is refused like any upload. Must not decide which packs are bad (that is `server.scrub`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from engine.errors import DicomvaultError
from engine.ids import PackId
from server.index import ServerIndex
from server.intake import receive_pack
from server.replication.peer import PeerClient
from server.replication.settings import PeerConfig
from server.repos import Repository

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HealResult:
    peer: str | None  # the peer whose copy was stored; None if none had a good one
    errors: tuple[str, ...] = ()


async def fetch_from_peer(
    peer: PeerConfig, repo: Repository, index: ServerIndex, pack_id: PackId, max_size: int
) -> None:
    """Store the peer's copy of `pack_id` here; raise `DicomvaultError` (or `OSError`) if not."""
    client = PeerClient(peer)
    try:
        async with client.pack_body(repo.name, pack_id) as body:
            await receive_pack(repo, index, pack_id, body, max_size)
    finally:
        await client.close()


async def heal(
    peers: tuple[PeerConfig, ...],
    repo: Repository,
    index: ServerIndex,
    pack_id: PackId,
    max_size: int,
) -> HealResult:
    """Try each peer in turn; the first good copy wins."""
    errors: list[str] = []
    for peer in peers:
        try:
            await fetch_from_peer(peer, repo, index, pack_id, max_size)
        except (DicomvaultError, OSError) as e:
            errors.append(f"{peer.name}: {type(e).__name__}: {e}")
            log.warning(
                "healing %s/%s from %s failed: %s", repo.name, pack_id.short(), peer.name, e
            )
            continue
        log.info("healed %s/%s from peer %s", repo.name, pack_id.short(), peer.name)
        return HealResult(peer.name, tuple(errors))
    if not peers:
        errors.append("no peer configured to heal from")
    return HealResult(None, tuple(errors))
