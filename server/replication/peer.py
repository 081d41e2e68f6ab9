"""HTTP client for a peer's replica API (`/v1/replica/...`, docs/api.md "Replication").

Owns the requests a primary sends to a peer and the translation of their outcomes into two
errors: `PeerUnavailable` (connection failures, timeouts, 5xx, bad credentials: retry the whole
peer later) and `PeerRefused` (the peer refused this one object: a hash mismatch, a conflicting
object, a commit whose chunks it lacks). Must not touch the queue or decide what to send.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterable, Sequence
from typing import Any

import aiohttp

from engine.errors import TransientError
from engine.ids import ID_SIZE, PackId, SnapshotId
from server.replication.settings import PeerConfig

_OCTETS = {"Content-Type": "application/octet-stream"}
MISSING_BATCH = 10_000  # pack ids per inventory question: 320 KB


class PeerUnavailable(TransientError):
    """The peer could not be reached or would not talk to us; retry later."""


class PeerRefused(TransientError):
    """The peer refused one object; carries the peer's HTTP status and error code."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class RepoNotOnPeer(PeerRefused):
    """The peer has no replica of this repository for us (yet, or it belongs to someone else)."""


async def _error(resp: aiohttp.ClientResponse, what: str) -> TransientError:
    try:
        doc = json.loads(await resp.read())
        message, code = str(doc.get("error", resp.reason)), str(doc.get("code", ""))
    except (ValueError, AttributeError, aiohttp.ClientError):
        message, code = f"HTTP {resp.status} {resp.reason}", ""
    text = f"{what}: {resp.status} {code or ''} {message}".strip()
    if resp.status in (401, 403) or resp.status >= 500 or resp.status == 408:
        return PeerUnavailable(text)
    if resp.status == 404 and code == "repo_not_found":
        return RepoNotOnPeer(text, resp.status, code)
    return PeerRefused(text, resp.status, code)


class PeerClient:
    def __init__(self, peer: PeerConfig, timeout: aiohttp.ClientTimeout | None = None) -> None:
        self.peer = peer
        ctx = ssl.create_default_context(cafile=peer.ca_file) if peer.ca_file else None
        self._ssl: ssl.SSLContext | bool = ctx if ctx is not None else True
        # No total timeout: a rate-limited 16 MiB pack may take minutes; a stall is caught by
        # the read timeout.
        self._timeout = timeout or aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=120)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl),
                headers={"Authorization": f"Bearer {self.peer.token}"},
                timeout=self._timeout,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, repo: str, path: str, what: str, **kw: Any) -> bytes:
        url = f"{self.peer.url}/v1/replica/repos/{repo}/{path}"
        try:
            async with self._client().request(method, url, **kw) as resp:
                if resp.status not in (200, 201):
                    raise await _error(resp, what)
                return await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise PeerUnavailable(f"{what}: {type(e).__name__}: {e}") from None

    async def put_object(self, repo: str, name: str, data: bytes) -> None:
        """`config` or `keys/<name>`: write-once on the peer."""
        await self._call("PUT", repo, name, name, data=data, headers=_OCTETS)

    async def put_tokens(self, repo: str, tokens: list[dict[str, str]]) -> None:
        await self._call("PUT", repo, "tokens", "tokens", json={"tokens": tokens})

    async def put_pack(
        self, repo: str, pack_id: PackId, size: int, body: AsyncIterable[bytes]
    ) -> None:
        headers = {**_OCTETS, "Content-Length": str(size)}
        what = f"pack {pack_id.short()}"
        await self._call("PUT", repo, f"packs/{pack_id.hex()}", what, data=body, headers=headers)

    async def commit(self, repo: str, snapshot_id: SnapshotId, record: bytes) -> None:
        what = f"snapshot {snapshot_id.short()}"
        await self._call("POST", repo, "snapshots", what, data=record, headers=_OCTETS)

    async def packs_lacking(self, repo: str, ids: Sequence[PackId]) -> set[PackId]:
        """Which of `ids` the peer does not hold (all of them if it has no replica yet)."""
        out: set[PackId] = set()
        for start in range(0, len(ids), MISSING_BATCH):
            batch = b"".join(ids[start : start + MISSING_BATCH])
            try:
                body = await self._call(
                    "POST", repo, "packs/missing", "pack inventory", data=batch, headers=_OCTETS
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
