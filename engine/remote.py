"""`RemoteBackend`: the `Backend` contract over the chunk server's API (docs/api.md).

Owns the repository side of the wire: the repository URL, batching of missing-chunk queries,
Range reads and the shape of each answer. The session, TLS, byte counting and the decoding of
failures into `engine.errors` are `engine.protocol`'s, shared with the server's replicator.
Must not know about agents, schedules or keys.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from engine.backend import Backend, DrillReceiver, Pruning, Replicated, StatsReceiver
from engine.errors import ObjectNotFound, RepositoryNotFound, TransientError, UsageError
from engine.ids import ID_SIZE, ChunkId, PackId, SnapshotId
from engine.protocol.client import CLIENT_TIMEOUT, OCTETS, ProtocolClient
from engine.protocol.routes import PRIMARY_GENERATION_HEADER, repo_url

MISSING_BATCH = 10_000  # ids per query: 320 KB each way, well under the server's cap
SEND_PIECE = 1 << 20  # bytes of a pack handed to aiohttp at a time (`put_pack` without a body)


def _split_url(url: str) -> tuple[str, str]:
    """`http(s)://host:port[/prefix]/NAME` → (base URL, repository name)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"repository URL must be http(s)://host:port/NAME, got {url!r}")
    prefix, _, name = parts.path.rstrip("/").rpartition("/")
    if not name:
        raise UsageError(f"repository URL has no repository name: {url!r}")
    return f"{parts.scheme}://{parts.netloc}{prefix}", name


class RemoteBackend(Backend, Replicated, DrillReceiver, Pruning, StatsReceiver):
    """A repository on a chunk server; `missing` is authoritative (the server has an index)."""

    knows_chunks = True

    def __init__(
        self,
        url: str,
        token: str,
        *,
        ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        primary_generation: int = 0,
    ) -> None:
        self.location = url
        base, self.name = _split_url(url)
        self._root = repo_url(base, self.name)
        self.http = ProtocolClient(
            token, ca_file=ca_file, ssl_context=ssl_context, timeout=timeout or CLIENT_TIMEOUT
        )
        self.http.primary_generation = primary_generation

    @property
    def bytes_uploaded(self) -> int:
        """Bytes this backend's sockets have sent (headers, bodies, TLS records)."""
        return self.http.counter.sent

    @property
    def bytes_downloaded(self) -> int:
        return self.http.counter.received

    async def _fetch(
        self, method: str, path: str, what: str, ok: tuple[int, ...], **kw: Any
    ) -> tuple[int, str, bytes]:
        """Return (status, Content-Range header or "", body) for an expected status."""
        return await self.http.fetch(method, f"{self._root}/{path}", what, ok, **kw)

    async def _request(self, method: str, path: str, what: str, **kw: Any) -> bytes:
        return (await self._fetch(method, path, what, (200, 201), **kw))[2]

    async def _json(self, method: str, path: str, what: str, **kw: Any) -> Any:
        body = await self._request(method, path, what, **kw)
        try:
            return json.loads(body)
        except ValueError:
            raise TransientError(f"{what}: server sent invalid JSON") from None

    async def get_config(self) -> bytes:
        try:
            return await self._request("GET", "config", "config")
        except ObjectNotFound:
            raise RepositoryNotFound(f"no repository at {self.location}") from None

    async def put_config(self, data: bytes) -> None:
        await self._request("PUT", "config", "config", data=data, headers=OCTETS)

    async def list_keys(self) -> list[str]:
        doc = await self._json("GET", "keys", "keys")
        return sorted(doc["keys"])

    async def get_key(self, name: str) -> bytes:
        return await self._request("GET", f"keys/{name}", f"key {name}")

    async def put_key(self, name: str, data: bytes) -> None:
        await self._request("PUT", f"keys/{name}", f"key {name}", data=data, headers=OCTETS)

    async def put_event(self, name: str, data: bytes) -> None:
        await self._request("PUT", f"events/{name}", f"event {name}", data=data, headers=OCTETS)

    async def list_events(self) -> list[str]:
        doc = await self._json("GET", "events", "events")
        return sorted(doc["events"])

    async def get_event(self, name: str) -> bytes:
        return await self._request("GET", f"events/{name}", f"event {name}")

    async def missing(self, ids: Sequence[ChunkId]) -> set[ChunkId]:
        out: set[ChunkId] = set()
        for start in range(0, len(ids), MISSING_BATCH):
            batch = b"".join(ids[start : start + MISSING_BATCH])
            body = await self._request("POST", "missing", "missing", data=batch, headers=OCTETS)
            if len(body) % ID_SIZE:
                raise TransientError("missing: truncated answer")
            out.update(ChunkId(body[i : i + ID_SIZE]) for i in range(0, len(body), ID_SIZE))
        return out

    async def put_pack(
        self, pack_id: PackId, data: bytes | memoryview, body: AsyncIterable[bytes] | None = None
    ) -> None:
        # Content-Length is always sent, so a paced `body` still goes as one plain request
        # (no chunked encoding) and the server can refuse an oversize pack before reading it.
        # Without one, the pack goes in pieces too: aiohttp joins a bytes body with its headers
        # and the socket keeps what it cannot take, two more copies of the pack.
        headers = {**OCTETS, "Content-Length": str(len(data))}
        await self._request(
            "PUT",
            f"packs/{pack_id.hex()}",
            f"pack {pack_id.short()}",
            data=_pieces(data) if body is None else body,
            headers=headers,
        )

    async def get_pack(self, pack_id: PackId) -> bytes:
        return await self._request("GET", f"packs/{pack_id.hex()}", f"pack {pack_id.short()}")

    async def get_pack_range(self, pack_id: PackId, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        what = f"pack {pack_id.short()}"
        # 416: the range starts past the end; the Store contract returns no bytes for that.
        status, _, body = await self._fetch(
            "GET", f"packs/{pack_id.hex()}", what, (200, 206, 416), headers=headers
        )
        if status == 416:
            return b""
        return body if status == 206 else body[offset : offset + length]

    async def has_pack(self, pack_id: PackId) -> bool:
        status, _, _ = await self._fetch(
            "HEAD", f"packs/{pack_id.hex()}", f"pack {pack_id.short()}", (200, 404)
        )
        return status == 200

    async def get_pack_tail(self, pack_id: PackId, length: int) -> tuple[int, bytes]:
        # A suffix range ("bytes=-N") gets the trailer and manifest in one round trip; the
        # total size comes back in Content-Range ("bytes a-b/SIZE").
        status, content_range, body = await self._fetch(
            "GET",
            f"packs/{pack_id.hex()}",
            f"pack {pack_id.short()}",
            (200, 206),
            headers={"Range": f"bytes=-{max(1, length)}"},
        )
        if status == 200:
            return len(body), body[-length:] if length else b""
        try:
            size = int(content_range.rsplit("/", 1)[1])
        except (IndexError, ValueError):
            raise TransientError(f"pack {pack_id.short()}: bad Content-Range") from None
        return size, body[-length:] if length else b""

    async def list_packs(self) -> AsyncIterator[PackId]:
        after: str | None = None
        while True:
            query = {"after": after} if after else {}
            doc = await self._json("GET", "packs", "list packs", params=query)
            for row in doc["packs"]:
                yield PackId.parse(row["id"])
            after = doc.get("next")
            if not after:
                return

    def _commit_headers(self) -> dict[str, str]:
        # The primary generation this client knows of (not the prune generation): a stale
        # primary that hears of a higher one is fenced and refuses (docs/design.md §17).
        return {**OCTETS, PRIMARY_GENERATION_HEADER: str(self.http.primary_generation)}

    async def commit(self, record: bytes) -> SnapshotId:
        headers = self._commit_headers()
        doc = await self._json("POST", "snapshots", "commit", data=record, headers=headers)
        return SnapshotId.parse(doc["snapshot"])

    async def commit_at(self, record: bytes, generation: int, full: bool) -> SnapshotId:
        params = {"generation": str(generation)} | ({"full": "1"} if full else {})
        doc = await self._json(
            "POST", "snapshots", "commit", data=record, headers=self._commit_headers(),
            params=params,
        )  # fmt: skip
        return SnapshotId.parse(doc["snapshot"])

    async def generation(self) -> int:
        return int((await self._json("GET", "generation", "generation"))["generation"])

    async def prune_lock(self, holder: str, ttl: float) -> dict[str, Any]:
        doc = await self._json(
            "POST", "prune/lock", "prune lock", json={"holder": holder, "ttl": ttl}
        )
        return dict(doc)

    async def prune_release(self, holder: str) -> None:
        await self._request("DELETE", "prune/lock", "prune unlock", params={"holder": holder})

    async def prune_schedule(self, holder: str, packs: Sequence[PackId]) -> dict[str, Any]:
        body = {"holder": holder, "packs": [p.hex() for p in packs]}
        return dict(await self._json("POST", "prune/schedule", "prune schedule", json=body))

    async def list_snapshots(self) -> list[SnapshotId]:
        doc = await self._json("GET", "snapshots", "list snapshots")
        return [SnapshotId.parse(row["id"]) for row in doc["snapshots"]]

    async def get_snapshot(self, snapshot_id: SnapshotId) -> bytes:
        return await self._request(
            "GET", f"snapshots/{snapshot_id.hex()}", f"snapshot {snapshot_id.short()}"
        )

    async def replication_status(self) -> dict[str, Any] | None:
        """The server's replication status for this repository (docs/api.md), or None from a
        server that does not replicate (an older one answers 404 for the route)."""
        try:
            doc = await self._json("GET", "replication", "replication status")
        except ObjectNotFound:
            return None
        return doc if isinstance(doc, dict) else None

    async def snapshot_sites(self) -> dict[SnapshotId, dict[str, bool]] | None:
        """For each snapshot this site holds: {site name: complete there?}, this site first."""
        doc = await self.replication_status()
        if doc is None:
            return None
        here = str(doc.get("site") or "primary")
        peers = doc.get("peers") or []
        out: dict[SnapshotId, dict[str, bool]] = {}
        for sid in await self.list_snapshots():
            sites = {here: True}
            for peer in peers:
                sites[str(peer["name"])] = bool(peer.get("snapshots", {}).get(sid.hex(), False))
            out[sid] = sites
        return out

    async def quarantine(self, kind: str, ident: str, reason: str = "") -> dict[str, Any]:
        path = f"{kind}s/{ident}"
        doc = await self._json(
            "DELETE", path, f"quarantine {kind} {ident}", params={"reason": reason}
        )
        return doc if isinstance(doc, dict) else {}

    async def heartbeat(self, info: dict[str, Any]) -> None:
        await self._request("POST", "heartbeat", "heartbeat", json=info)

    async def report_stats(self, stats: dict[str, Any]) -> None:
        await self._request("POST", "stats", "stats report", json=stats)

    async def report_drill(self, report: dict[str, Any]) -> None:
        await self._request("POST", "drills", "drill report", json=report)

    async def forget(self, snapshot_ids: Sequence[SnapshotId]) -> list[dict[str, Any]]:
        body = {"snapshots": [s.hex() for s in snapshot_ids]}
        doc = await self._json("POST", "forget", "forget", json=body)
        return list(doc["scheduled"])

    async def pending_deletions(self) -> list[dict[str, Any]]:
        return list((await self._json("GET", "deletions", "pending deletions"))["pending"])

    async def undelete(self, names: Sequence[str] | None) -> list[dict[str, Any]]:
        body = {} if names is None else {"snapshots": list(names)}
        return list((await self._json("POST", "undelete", "undelete", json=body))["restored"])

    async def close(self) -> None:
        await self.http.close()


async def _pieces(data: bytes | memoryview) -> AsyncIterator[bytes]:
    """`data` in copies of at most SEND_PIECE bytes."""
    with memoryview(data) as view:
        for start in range(0, len(view), SEND_PIECE):
            yield bytes(view[start : start + SEND_PIECE])
