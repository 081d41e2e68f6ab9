"""Offline administration on a data folder: create repositories and mint their tokens, reindex,
quarantine an object.

Owns operations the CLI runs against DATA directly (the running server may share the LMDB
environment; LMDB is multi-process safe). Must not parse arguments or print.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from engine.clock import SYSTEM
from engine.errors import RepositoryExists
from server.auth import PRACTICE_ROLES, mint_replica_token, mint_token, validate_repo_name
from server.config import ServerConfig
from server.index import ServerIndex
from server.reindex import ReindexReport, reindex
from server.repos import Repositories, open_repositories

if TYPE_CHECKING:
    from server.failover_shared import SharedFailover


@contextmanager
def open_index(config: ServerConfig) -> Iterator[ServerIndex]:
    index = ServerIndex(config.index_path, config.index_map_size)
    try:
        yield index
    finally:
        index.close()


def create_repository(
    repos: Repositories, index: ServerIndex, name: str, now: float
) -> dict[str, str]:
    """Create repository `name` and return one fresh token per role (shown once, stored hashed)."""
    from server.replication.state import ReplicationState

    owner = ReplicationState(index).replica_owner(validate_repo_name(name))
    if owner is not None:
        raise RepositoryExists(f"repository name {name!r} is reserved for replicas from {owner!r}")
    repos.create(name)
    return {str(role): mint_token(index, name, role, now) for role in PRACTICE_ROLES}


def publish_tokens_offline(config: ServerConfig, index: ServerIndex) -> None:
    """On a store other nodes share, publish the token hashes just minted (server.catchup)."""
    from server.catchup import publish_tokens

    repos = open_repositories(config)
    if repos.root.shared:
        asyncio.run(publish_tokens(index, repos.site))


def sync_failover(repos: Repositories, index: ServerIndex, name: str) -> SharedFailover | None:
    """On a store several nodes share, read `name`'s generation and replica binding from it
    into this node's index (server.failover_shared); None on a store only this node writes."""
    from server.failover_shared import SharedFailover
    from server.replication.state import ReplicationState

    if not repos.root.shared:
        return None
    shared = SharedFailover(repos.site, ReplicationState(index))
    asyncio.run(shared.refresh(validate_repo_name(name)))
    return shared


def create_repository_offline(config: ServerConfig, name: str) -> dict[str, str]:
    with open_index(config) as index:
        repos = open_repositories(config)
        sync_failover(repos, index, name)  # a name another node bound to replicas
        tokens = create_repository(repos, index, name, SYSTEM.time())
        publish_tokens_offline(config, index)
        return tokens


def reindex_offline(config: ServerConfig, *, verify: bool = False) -> ReindexReport:
    with open_index(config) as index:
        return asyncio.run(reindex(open_repositories(config), index, verify=verify))


def quarantine_offline(
    config: ServerConfig, name: str, kind: str, ident: str, reason: str
) -> dict[str, Any]:
    """Move one object of repository `name` into its quarantine store (server.quarantine)."""
    from server.quarantine import object_name, quarantine

    with open_index(config) as index:
        repo = open_repositories(config).get(name)
        obj = object_name(kind, ident)
        now = SYSTEM.time()
        return asyncio.run(
            quarantine(repo, index, obj, by="server operator", reason=reason, now=now)
        )


def create_peer_token_offline(config: ServerConfig, peer: str, repos: Sequence[str]) -> str:
    """Mint a replica token for the primary site labelled `peer` (shown once, stored hashed),
    after binding the repository names it may fill here (docs/design.md §6.2)."""
    with open_index(config) as index:
        now = SYSTEM.time()
        bind_replica_names(open_repositories(config), index, peer, repos, now)
        token = mint_replica_token(index, peer, now)
        publish_tokens_offline(config, index)
        return token


def bind_replica_names(
    repos: Repositories, index: ServerIndex, peer: str, names: Sequence[str], now: float
) -> None:
    """Reserve `names` for replicas pushed by `peer`: only these may it create here, and no
    practice of this site may take them. A name already this site's own, or another
    primary's, is refused before anything is written."""
    from server.replication.state import ReplicationState

    state = ReplicationState(index)
    shared = None
    for name in names:
        shared = sync_failover(repos, index, name)  # a binding another node of this site made
        owner = state.replica_owner(validate_repo_name(name))
        if owner not in (None, peer) or (owner is None and name in repos.names()):
            held = f"replicas from {owner!r}" if owner else "a practice of this site"
            raise RepositoryExists(f"repository name {name!r} is already held by {held}")
    for name in names:
        if shared is not None:
            asyncio.run(shared.bind(name, peer, now))
        else:
            state.claim_replica(name, peer, now)


def promote_replica_offline(config: ServerConfig, name: str) -> bool:
    """Make a replica held here writable by its practice (after the primary is gone for good)."""
    from server.replication.state import ReplicationState

    with open_index(config) as index:
        repos = open_repositories(config)
        repos.get(name)
        state = ReplicationState(index)
        shared = sync_failover(repos, index, name)
        was_replica = state.replica_owner(name) is not None
        if was_replica and shared is not None:  # a generation above the old primary's fences it
            asyncio.run(shared.promote(name))
        elif was_replica:
            state.promote(name)
        return was_replica
