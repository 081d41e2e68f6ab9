"""`RemoteBackend`: the async HTTP client for a dicomvault chunk server (API in docs/api.md).

Owns the wire side of the `Backend` contract: URL and token handling, batching of missing-chunk
queries, Range reads, translating HTTP statuses and connection failures into `engine.errors`, and
an honest count of bytes sent on the socket. Must not know about agents, schedules or keys.

Byte counting: every connection's socket is created by our `socket_factory` (a public
`aiohttp.TCPConnector` hook) as a `CountingSocket`, a `socket.socket` subclass whose `send`,
`sendmsg` and `sendall` add what the kernel accepted to a shared counter. asyncio's selector
transports call exactly these methods, so the count is request lines, headers and bodies as they
leave the process, including TLS records (the SSL layer sits above the socket) and excluding only
TCP/IP headers and kernel retransmissions. (uvloop bypasses Python sockets; we use the default
loop.)
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from engine.backend import Backend
from engine.errors import (
    DicomvaultError,
    FormatError,
    IntegrityError,
    InvalidName,
    ObjectExists,
    ObjectNotFound,
    PermissionDenied,
    RepositoryNotFound,
    StoreError,
    TransientError,
    UsageError,
)
from engine.ids import ID_SIZE, ChunkId, PackId, SnapshotId

MISSING_BATCH = 10_000  # ids per query: 320 KB each way, well under the server's cap
_OCTETS = {"Content-Type": "application/octet-stream"}


class ByteCounter:
    def __init__(self) -> None:
        self.sent = 0
        self.received = 0


class CountingSocket(socket.socket):
    """A socket that adds the bytes the kernel accepted (and delivered) to a `ByteCounter`."""

    counter: ByteCounter

    def send(self, data: Any, flags: int = 0) -> int:
        n = super().send(data, flags)
        self.counter.sent += n
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        super().sendall(data, flags)
        self.counter.sent += memoryview(data).nbytes

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        n = super().sendmsg(buffers, *args)
        self.counter.sent += n
        return n

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self.counter.received += len(data)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n = super().recv_into(buffer, nbytes, flags)
        self.counter.received += n
        return n


def _socket_factory(counter: ByteCounter) -> Any:
    def make(addr_info: Any) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = CountingSocket(family, type_, proto)
        sock.counter = counter
        return sock

    return make


def _split_url(url: str) -> tuple[str, str]:
    """`http(s)://host:port[/prefix]/NAME` → (base URL, repository name)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"repository URL must be http(s)://host:port/NAME, got {url!r}")
    prefix, _, name = parts.path.rstrip("/").rpartition("/")
    if not name:
        raise UsageError(f"repository URL has no repository name: {url!r}")
    return f"{parts.scheme}://{parts.netloc}{prefix}", name


async def _error_from(resp: aiohttp.ClientResponse, what: str) -> DicomvaultError:
    try:
        doc = json.loads(await resp.read())
        message, code = str(doc.get("error", resp.reason)), str(doc.get("code", ""))
    except (ValueError, AttributeError, aiohttp.ClientError):
        message, code = f"HTTP {resp.status} {resp.reason}", ""
    message = f"{what}: {message}"
    status = resp.status
    if status in (401, 403):
        return PermissionDenied(message)
    if status == 404:
        return RepositoryNotFound(message) if code == "repo_not_found" else ObjectNotFound(message)
    if status == 409:
        return (
            ObjectExists(message) if code in ("exists", "repo_exists") else IntegrityError(message)
        )
    if status == 422:
        return FormatError(message) if code == "malformed" else IntegrityError(message)
    if status == 400 and code == "invalid_name":
        return InvalidName(message)
    if status in (400, 413):
        return UsageError(message)
    if status == 408:  # the server cut off a body sent too slowly: a slow link, try again
        return TransientError(message)
    if status == 507:  # the server's disk is full: keep the data, retry, and say why
        return TransientError(message if code == "storage_full" else f"{what}: server storage full")
    if status >= 500:
        return TransientError(message)
    return StoreError(message)


class RemoteBackend(Backend):
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
    ) -> None:
        self.location = url
        base, self.name = _split_url(url)
        self._root = f"{base}/v1/repos/{self.name}"
        self._headers = {"Authorization": f"Bearer {token}"}
        if ssl_context is None and ca_file is not None:
            ssl_context = ssl.create_default_context(cafile=ca_file)
        self._ssl = ssl_context
        # No total timeout: a 16 MiB pack on a 4 Mbit/s uplink takes ~35 s; stalls are caught
        # by the read timeout instead.
        self._timeout = timeout or aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
        self.counter = ByteCounter()
        self._session: aiohttp.ClientSession | None = None

    @property
    def bytes_uploaded(self) -> int:
        """Bytes this backend's sockets have sent (headers, bodies, TLS records)."""
        return self.counter.sent

    @property
    def bytes_downloaded(self) -> int:
        return self.counter.received

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                ssl=self._ssl if self._ssl is not None else True,
                socket_factory=_socket_factory(self.counter),
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, timeout=self._timeout
            )
        return self._session

    async def _fetch(
        self, method: str, path: str, what: str, ok: tuple[int, ...], **kw: Any
    ) -> tuple[int, str, bytes]:
        """Return (status, Content-Range header or "", body) for an expected status."""
        try:
            async with self._client().request(method, f"{self._root}/{path}", **kw) as resp:
                if resp.status not in ok:
                    raise await _error_from(resp, what)
                return resp.status, resp.headers.get("Content-Range", ""), await resp.read()
        except aiohttp.ClientConnectorCertificateError as e:
            # Not transient: retrying cannot make an untrusted certificate trusted.
            raise StoreError(f"{what}: untrusted TLS certificate: {e.certificate_error}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise TransientError(f"{what}: {type(e).__name__}: {e}") from None

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
        await self._request("PUT", "config", "config", data=data, headers=_OCTETS)

    async def list_keys(self) -> list[str]:
        doc = await self._json("GET", "keys", "keys")
        return sorted(doc["keys"])

    async def get_key(self, name: str) -> bytes:
        return await self._request("GET", f"keys/{name}", f"key {name}")

    async def put_key(self, name: str, data: bytes) -> None:
        await self._request("PUT", f"keys/{name}", f"key {name}", data=data, headers=_OCTETS)

    async def missing(self, ids: Sequence[ChunkId]) -> set[ChunkId]:
        out: set[ChunkId] = set()
        for start in range(0, len(ids), MISSING_BATCH):
            batch = b"".join(ids[start : start + MISSING_BATCH])
            body = await self._request("POST", "missing", "missing", data=batch, headers=_OCTETS)
            if len(body) % ID_SIZE:
                raise TransientError("missing: truncated answer")
            out.update(ChunkId(body[i : i + ID_SIZE]) for i in range(0, len(body), ID_SIZE))
        return out

    async def put_pack(
        self, pack_id: PackId, data: bytes, body: AsyncIterable[bytes] | None = None
    ) -> None:
        # Content-Length is always sent, so a paced `body` still goes as one plain request
        # (no chunked encoding) and the server can refuse an oversize pack before reading it.
        headers = {**_OCTETS, "Content-Length": str(len(data))}
        await self._request(
            "PUT",
            f"packs/{pack_id.hex()}",
            f"pack {pack_id.short()}",
            data=data if body is None else body,
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

    async def commit(self, record: bytes) -> SnapshotId:
        doc = await self._json("POST", "snapshots", "commit", data=record, headers=_OCTETS)
        return SnapshotId.parse(doc["snapshot"])

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

    async def report_drill(self, report: dict[str, Any]) -> None:
        await self._request("POST", "drills", "drill report", json=report)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
