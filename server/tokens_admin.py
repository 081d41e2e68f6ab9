"""The provider's token management on a data folder: list, mint and revoke (docs/design.md §6).

Owns naming tokens by a short id (the first 12 hex digits of the stored BLAKE3 hash: the
server never has the token itself), minting one more token for a repository's role (a second
agent machine, or the new half of a rotation), and revoking: the row leaves this node's index
at once (the running server reads the index on every request, so the next request is 401), the
published copy leaves a shared store (other nodes drop it at their next check), and the
repository's peers get its new token list queued. Must not parse arguments or print.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from engine.clock import SYSTEM
from engine.errors import NotFound, UsageError
from server.admin import open_index, publish_tokens_offline
from server.auth import PRACTICE_ROLES, Role, hash_token, mint_token, token_id
from server.config import ServerConfig
from server.index import ServerIndex
from server.repos import open_repositories


def _describe(digest: bytes, doc: dict[str, Any]) -> dict[str, Any]:
    out = {"id": token_id(digest), "repo": doc.get("repo", ""), "role": doc.get("role", "")}
    out.update({k: doc[k] for k in ("label", "peer", "name", "created") if k in doc})
    return out


def list_tokens(config: ServerConfig, repo: str | None = None) -> list[dict[str, Any]]:
    """Every token this node knows (practice, replica and provider), or one repository's."""
    with open_index(config) as index:
        rows = [_describe(d, doc) for d, doc in index.tokens()]
    rows = [r for r in rows if repo is None or r["repo"] == repo]
    return sorted(rows, key=lambda r: (r["repo"], r["role"], r.get("created", 0.0), r["id"]))


def create_token(config: ServerConfig, repo: str, role: str, label: str = "") -> dict[str, Any]:
    """One more token for `repo` with `role` (shown once); the others keep working."""
    if role not in {str(r) for r in PRACTICE_ROLES}:
        raise UsageError(f"--role must be one of {', '.join(map(str, PRACTICE_ROLES))}")
    open_repositories(config).get(repo)  # RepositoryNotFound (exit 10) for a mistyped name
    with open_index(config) as index:
        token = mint_token(index, repo, Role(role), SYSTEM.time(), label)
        publish_tokens_offline(config, index)
        _queue_for_peers(config, index, [repo])
    return {"id": token_id(hash_token(token)), "repo": repo, "role": role, "token": token}


def revoke_tokens(config: ServerConfig, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Revoke every token named by a unique id prefix (at least 6 hex digits), all or none:
    an unknown or ambiguous id raises `NotFound` (exit 16) before anything changes."""
    with open_index(config) as index:
        rows = index.tokens()
        chosen = {digest: doc for digest, doc in (_one(rows, i) for i in ids)}
        for digest in chosen:
            index.delete_token(digest)
        repos = open_repositories(config)
        if repos.root.shared:
            from server.catchup import revoke_tokens as unpublish

            asyncio.run(unpublish(repos.site, chosen))
        _queue_for_peers(config, index, sorted({d.get("repo", "") for d in chosen.values()}))
    return [_describe(d, doc) for d, doc in chosen.items()]


def _one(rows: Sequence[tuple[bytes, dict[str, Any]]], ident: str) -> tuple[bytes, dict[str, Any]]:
    ident = ident.strip().lower()
    if len(ident) < 6 or any(c not in "0123456789abcdef" for c in ident):
        raise UsageError(f"token id {ident!r}: give at least 6 hex digits from `token list`")
    found = [(d, doc) for d, doc in rows if d.hex().startswith(ident)]
    if len(found) != 1:
        what = "no token" if not found else f"{len(found)} tokens"
        raise NotFound(f"{what} with id {ident!r} (see dicomvault-server token list)")
    return found[0]


def _queue_for_peers(config: ServerConfig, index: ServerIndex, repos: Iterable[str]) -> None:
    """Queue the repositories' token lists for the peers of server.toml; the running server's
    replicators push them within their wake interval. Peers given only as `serve --peer` are
    sent the list at their next anti-entropy pass (`anti_entropy_interval`)."""
    from server.replication.state import TOKENS, Item, ReplicationState

    peers = [p.name for p in config.peers]
    state = ReplicationState(index)
    for repo in repos:
        if repo and peers and state.replica_owner(repo) is None:
            state.enqueue(peers, repo, [Item(TOKENS, "tokens")], SYSTEM.time())
