"""Bearer tokens, roles and repository isolation.

Owns minting tokens (`dv_` + random 32 bytes, URL-safe text), storing them only as BLAKE3
hashes in the server index, and deciding whether a request may perform an action on a
repository. Must not know routes or storage: handlers name the action they need and get back the
repository name.
"""

from __future__ import annotations

import enum
import hmac
import re
import secrets
from typing import Any

import blake3
from aiohttp import web

from engine.errors import InvalidName, PermissionDenied, RepositoryNotFound
from server.errors import Unauthenticated
from server.index import ServerIndex

# Repository names become folder names and LMDB key prefixes: lower case (no aliasing on
# case-insensitive filesystems), no dots or slashes (no traversal), no NUL (the key separator).
_REPO_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
REPO_NAME_RULE = (
    "1 to 64 of a-z, 0-9, '_' and '-', starting with a letter or digit (e.g. practice-1)"
)
TOKEN_BYTES = 32
# Every minted token starts with this, so none is ever taken for a command-line option (a bare
# token_urlsafe begins with '-' once in 64) and a leaked one is recognisable in logs.
TOKEN_PREFIX = "dv_"
TOKEN_ID_HEX = 12  # enough to tell a site's tokens apart; never enough to find one


class Role(enum.StrEnum):
    BACKUP = "backup"  # append-only: add packs, commits, absent keys/config; read its repository
    RESTORE = "restore"  # read only
    ADMIN = "admin"  # everything on its repository, including agent status
    # Server-wide, held by a primary site: push replicas (packs, commits, keys, config, token
    # hashes) under /v1/replica and list inventories; never read pack bodies, never delete.
    REPLICA = "replica"


PRACTICE_ROLES = (Role.BACKUP, Role.RESTORE, Role.ADMIN)  # minted per repository


class Action(enum.Enum):
    READ = frozenset({Role.BACKUP, Role.RESTORE, Role.ADMIN})
    APPEND = frozenset({Role.BACKUP, Role.ADMIN})
    ADMIN = frozenset({Role.ADMIN})


def validate_repo_name(name: str) -> str:
    if not _REPO_NAME.match(name):
        raise InvalidName(f"invalid repository name {name!r}: use {REPO_NAME_RULE}")
    return name


def hash_token(token: str) -> bytes:
    return blake3.blake3(token.encode()).digest()


def token_id(digest: bytes) -> str:
    """A token's short id, as `dicomvault-server token list` and the audit trail show it."""
    return digest.hex()[:TOKEN_ID_HEX]


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def mint_token(index: ServerIndex, repo: str, role: Role, now: float, label: str = "") -> str:
    """Create a token for `repo` with `role`; only its hash is stored, so show it once."""
    token = new_token()
    doc: dict[str, Any] = {"repo": repo, "role": str(role), "created": now}
    if label:
        doc["label"] = label
    index.put_token(hash_token(token), doc)
    return token


def mint_replica_token(index: ServerIndex, peer: str, now: float) -> str:
    """A token a primary site (labelled `peer`) uses to push replicas here; shown once."""
    token = new_token()
    doc = {"repo": "", "role": str(Role.REPLICA), "peer": peer, "created": now}
    index.put_token(hash_token(token), doc)
    return token


def authorize_replica(index: ServerIndex, token: str) -> str:
    """Return the label of the primary site holding this replica token; raise otherwise."""
    doc = index.get_token(hash_token(token))
    if doc is None:
        raise Unauthenticated("unknown token")
    if doc.get("role") != Role.REPLICA:
        raise PermissionDenied("only a replica token may push replicas")
    return str(doc["peer"])


def bearer_token(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing bearer token")
    return token.strip()


def authorize(index: ServerIndex, token: str, repo: str, action: Action) -> Role:
    """Return the token's role if it may do `action` on `repo`; raise otherwise.

    Lookup is by the token's BLAKE3 hash, so lookup timing can reveal at most hash prefixes,
    never the token; the final compare is constant-time anyway. A valid token for another
    repository gets `RepositoryNotFound` (404), so tokens cannot probe which repositories exist.
    """
    digest = hash_token(token)
    doc = index.get_token(digest)
    if doc is None:
        raise Unauthenticated("unknown token")
    if doc.get("role") == Role.REPLICA:
        raise PermissionDenied("a replica token may only push replicas (/v1/replica)")
    if not hmac.compare_digest(doc.get("repo", "").encode(), repo.encode()):
        raise RepositoryNotFound(f"no repository {repo!r}")
    role = Role(doc["role"])
    if role not in action.value:
        raise PermissionDenied(f"role {role} may not do this")
    return role
