"""Server-wide tokens beyond the practices' and the replica role: the provider's read token (the
status page, every repository's scrub and drill results, the open alerts — nothing a practice
owns: no config, key, pack or snapshot), and the opt-in healing right of a replica token.

Owns minting (`dicomvault-server provider-token create`, `peer-token create --heal`; shown once,
stored as BLAKE3 hashes like every token) and the checks. Must not know routes.
"""

from __future__ import annotations

from aiohttp import web

from engine.errors import PermissionDenied
from server.auth import bearer_token, hash_token, new_token
from server.errors import Unauthenticated
from server.index import ServerIndex

PROVIDER_ROLE = "provider"  # repo "" never matches a repository: practice routes answer 404


def mint_provider_token(index: ServerIndex, label: str, now: float) -> str:
    token = new_token()
    doc = {"repo": "", "role": PROVIDER_ROLE, "label": label, "created": now}
    index.put_token(hash_token(token), doc)
    return token


def authorize_provider(index: ServerIndex, request: web.Request) -> str:
    """The token's label if it is a provider token; raise otherwise."""
    doc = index.get_token(hash_token(bearer_token(request)))
    if doc is None:
        raise Unauthenticated("unknown token")
    if doc.get("role") != PROVIDER_ROLE:
        raise PermissionDenied("this needs a provider token (dicomvault-server provider-token)")
    return str(doc.get("label", ""))


def grant_heal(index: ServerIndex, token: str) -> None:
    """Let this replica token read back packs of the replicas its primary owns (healing)."""
    digest = hash_token(token)
    doc = index.get_token(digest)
    if doc is None or doc.get("role") != "replica":
        raise PermissionDenied("only a replica token can be granted healing reads")
    index.put_token(digest, {**doc, "heal": True})


def may_heal(index: ServerIndex, token: str) -> bool:
    doc = index.get_token(hash_token(token))
    return doc is not None and bool(doc.get("heal"))
