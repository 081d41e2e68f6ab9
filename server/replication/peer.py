"""HTTP client for a peer's replica API (`/v1/replica/...`, docs/api.md "Replication").

Owns the requests a primary sends to a peer and the translation of their outcomes into two
errors: `PeerUnavailable` (connection failures, timeouts, 5xx, bad credentials: retry the whole
peer later) and `PeerRefused` (the peer refused this one object: a hash mismatch, a conflicting
object, a commit whose chunks it lacks). Must not touch the queue or decide what to send.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from engine.errors import DicomvaultError, PermissionDenied, RepositoryNotFound, TransientError
from engine.ids import ID_SIZE, PackId, SnapshotId
from engine.protocol.client import OCTETS, PEER_TIMEOUT, ProtocolClient
from engine.protocol.errors import error_class
from engine.protocol.routes import PRIMARY_GENERATION_HEADER, replica_repo_url
from server.replication.settings import PeerConfig

MISSING_BATCH = 10_000  # pack ids per inventory question: 320 KB
PIECE = 256 * 1024  # a streamed pack body is read in pieces of this size


# Why a peer is unavailable, as the `peer_unreachable` alert and `snapshots` say it.
UNREACHABLE = "unreachable"
UNTRUSTED = "TLS certificate not trusted"
TOKEN_REFUSED = "replica token refused"
PEER_FAILING = "peer failing"


class PeerUnavailable(TransientError):
    """The peer could not be reached or would not talk to us; retry later. `reason` is one of
    the constants above."""

    def __init__(self, message: str, reason: str = UNREACHABLE) -> None:
        super().__init__(message)
        self.reason = reason


class PeerRefused(TransientError):
    """The peer refused one object; carries the peer's HTTP status and error code."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class RepoNotOnPeer(PeerRefused):
    """The peer has no replica of this repository for us (yet, or it belongs to someone else)."""


class PeerClient(ProtocolClient):
    CA_HINT = "give the peer's CA (ca_file, or serve --peer-ca FILE)"

    def __init__(
        self,
        peer: PeerConfig,
        timeout: aiohttp.ClientTimeout = PEER_TIMEOUT,
        *,
        generation_of: Callable[[str], int] = lambda repo: 0,
        on_generation: Callable[[str, str], None] = lambda repo, text: None,
    ) -> None:
        """`generation_of(repo)` is sent with every push (docs/design.md §17); the peer's
        answer's generation goes to `on_generation(repo, header text)`."""
        super().__init__(peer.token, ca_file=peer.ca_file, timeout=timeout)
        self.peer = peer
        self.generation_of, self.on_generation = generation_of, on_generation

    def refused(self, status: int, code: str, what: str, message: str) -> DicomvaultError:
        """Bad credentials and the peer's own failures are the peer's state: retry it later."""
        cls = error_class(status, code)
        text = f"{what}: {status} {code} {message}".strip()
        if issubclass(cls, PermissionDenied):
            return PeerUnavailable(text, TOKEN_REFUSED)
        if issubclass(cls, TransientError):
            return PeerUnavailable(text, PEER_FAILING)
        if issubclass(cls, RepositoryNotFound):
            return RepoNotOnPeer(text, status, code)
        return PeerRefused(text, status, code)

    def unreachable(self, what: str, e: Exception, cause: str) -> DicomvaultError:
        untrusted = isinstance(e, aiohttp.ClientConnectorCertificateError)
        return PeerUnavailable(f"{what}: {cause}", UNTRUSTED if untrusted else UNREACHABLE)

    async def _call(self, method: str, repo: str, path: str, what: str, **kw: Any) -> bytes:
        url = f"{replica_repo_url(self.peer.url, repo)}/{path}"
        headers = {
            **kw.pop("headers", {}),
            PRIMARY_GENERATION_HEADER: str(self.generation_of(repo)),
        }
        async with self.response(method, url, what, (200, 201), headers=headers, **kw) as resp:
            self.on_generation(repo, resp.headers.get(PRIMARY_GENERATION_HEADER, ""))
            return await resp.read()

    @asynccontextmanager
    async def pack_body(self, repo: str, pack_id: PackId) -> AsyncIterator[AsyncIterator[bytes]]:
        """The peer's copy of a pack, as it arrives (for healing, docs/api.md "Healing")."""
        url = f"{replica_repo_url(self.peer.url, repo)}/packs/{pack_id.hex()}"
        async with self.response("GET", url, f"pack {pack_id.short()}", (200,)) as resp:
            yield resp.content.iter_chunked(PIECE)

    async def put_object(self, repo: str, name: str, data: bytes) -> None:
        """`config` or `keys/<name>`: write-once on the peer."""
        await self._call("PUT", repo, name, name, data=data, headers=OCTETS)

    async def put_tokens(self, repo: str, tokens: list[dict[str, str]]) -> None:
        await self._call("PUT", repo, "tokens", "tokens", json={"tokens": tokens})

    async def put_pack(
        self, repo: str, pack_id: PackId, size: int, body: AsyncIterable[bytes]
    ) -> None:
        headers = {**OCTETS, "Content-Length": str(size)}
        what = f"pack {pack_id.short()}"
        await self._call("PUT", repo, f"packs/{pack_id.hex()}", what, data=body, headers=headers)

    async def commit(self, repo: str, snapshot_id: SnapshotId, record: bytes) -> None:
        what = f"snapshot {snapshot_id.short()}"
        await self._call("POST", repo, "snapshots", what, data=record, headers=OCTETS)

    async def packs_lacking(self, repo: str, ids: Sequence[PackId]) -> set[PackId]:
        """Which of `ids` the peer does not hold (all of them if it has no replica yet)."""
        out: set[PackId] = set()
        for start in range(0, len(ids), MISSING_BATCH):
            batch = b"".join(ids[start : start + MISSING_BATCH])
            try:
                body = await self._call(
                    "POST", repo, "packs/missing", "pack inventory", data=batch, headers=OCTETS
                )
            except RepoNotOnPeer:
                return set(ids)
            out.update(PackId(body[i : i + ID_SIZE]) for i in range(0, len(body), ID_SIZE))
        return out

    async def snapshots(self, repo: str) -> set[SnapshotId]:
        try:
            body = await self._call("GET", repo, "snapshots", "snapshot inventory")
        except RepoNotOnPeer:
            return set()
        return {SnapshotId.parse(s) for s in json.loads(body)["snapshots"]}
