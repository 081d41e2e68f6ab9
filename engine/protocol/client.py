"""`ProtocolClient`: the aiohttp client base every caller of a dicomvault server shares.

Owns the session (one connection pool, the bearer token header, TLS from a CA file, timeouts),
the honest count of bytes on its sockets, and the retry policy's first half: which failures are
worth repeating. Connection failures, timeouts and statuses the server uses for its own failure
(`errors.retryable`) raise `TransientError` — no answer at all raises its subclass `Unreachable`,
its message the real cause in one line (`no_answer`: refused, name not resolved, plain HTTP to a
TLS port); an untrusted certificate is not transient (retrying cannot make it trusted); every
other error answer raises the class `errors.error_for` decodes. When and how often to repeat is
the caller's: `engine.retry` for a repository, the replication worker for a peer. A subclass may
translate both kinds of failure (`refused`, `unreachable`).

Byte counting: every connection's socket is created by our `socket_factory` (a public
`aiohttp.TCPConnector` hook) as a `CountingSocket`, a `socket.socket` subclass whose `send`,
`sendmsg` and `sendall` add what the kernel accepted to a shared counter. asyncio's selector
transports call exactly these methods, so the count is request lines, headers and bodies as they
leave the process, including TLS records (the SSL layer sits above the socket) and excluding only
TCP/IP headers and kernel retransmissions. (uvloop bypasses Python sockets; we use the default
loop.)
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from engine.errors import DicomvaultError, StoreError, Unreachable
from engine.protocol.errors import error_for
from engine.protocol.routes import PRIMARY_GENERATION_HEADER

OCTETS = {"Content-Type": "application/octet-stream"}
# No total timeout: a 16 MiB pack on a 4 Mbit/s uplink takes ~35 s, a rate-limited one minutes;
# stalls are caught by the read timeout instead.
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
PEER_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=120)
TLS_PROBE_SECONDS = 5.0


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


def socket_factory(counter: ByteCounter) -> Any:
    def make(addr_info: Any) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = CountingSocket(family, type_, proto)
        sock.counter = counter
        return sock

    return make


def tls_context(ca_file: str | None) -> ssl.SSLContext | None:
    """A context trusting `ca_file` (a private CA or self-signed certificate), else None: the
    system's trust store."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else None


async def error_answer(resp: aiohttp.ClientResponse) -> tuple[str, str]:
    """(message, code) of an error answer; a body that is not ours gives the HTTP reason."""
    try:
        doc = json.loads(await resp.read())
        return str(doc.get("error", resp.reason)), str(doc.get("code", ""))
    except (ValueError, AttributeError, aiohttp.ClientError):
        return f"HTTP {resp.status} {resp.reason}", ""


def no_answer(e: Exception, url: str, ca_hint: str = "use --cacert FILE") -> str:
    """The cause of a request that got no answer, in words a person can act on."""
    where = urlsplit(url).netloc
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate of {where} not trusted ({e.certificate_error}): {ca_hint}"
    if isinstance(e, aiohttp.ClientConnectorDNSError):
        return f"host name of {where} not resolved ({e.os_error.strerror or e.os_error})"
    if isinstance(e, aiohttp.ClientConnectorError):
        if isinstance(e.os_error, ConnectionRefusedError):
            return f"connection refused by {where}: is the server running on that port?"
        return f"cannot connect to {where}: {e.os_error.strerror or e.os_error}"
    if isinstance(e, TimeoutError):
        return f"no answer from {where} in time"
    return f"connection to {where} broke: {type(e).__name__}: {e}"


async def speaks_tls(url: str) -> bool:
    """Whether the server of an http:// `url` completes a TLS handshake (certificate unchecked:
    the question is only which protocol the port speaks)."""
    parts = urlsplit(url)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        conn = asyncio.open_connection(parts.hostname, parts.port or 80, ssl=ctx)
        _, writer = await asyncio.wait_for(conn, TLS_PROBE_SECONDS)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def unanswered(e: Exception, url: str, ca_hint: str) -> str:
    """`no_answer`, or the http/https mismatch when a plain-HTTP request found a TLS port."""
    plain = urlsplit(url).scheme == "http"
    disconnected = isinstance(e, aiohttp.ClientOSError | aiohttp.ServerDisconnectedError)
    if plain and disconnected and await speaks_tls(url):
        return f"{urlsplit(url).netloc} speaks TLS: use https://"
    return no_answer(e, url, ca_hint)


class ProtocolClient:
    CA_HINT = "use --cacert FILE"  # what to do about an untrusted certificate

    def __init__(
        self,
        token: str,
        *,
        ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: aiohttp.ClientTimeout = CLIENT_TIMEOUT,
    ) -> None:
        self._headers = {"Authorization": f"Bearer {token}"}
        self._ssl = ssl_context if ssl_context is not None else tls_context(ca_file)
        self._timeout = timeout
        self.counter = ByteCounter()
        self._session: aiohttp.ClientSession | None = None
        # The highest primary generation answers carried (docs/design.md §17; not §14's prune
        # generation).
        self.primary_generation = 0

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                ssl=self._ssl if self._ssl is not None else True,
                socket_factory=socket_factory(self.counter),
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, timeout=self._timeout
            )
        return self._session

    def refused(self, status: int, code: str, what: str, message: str) -> DicomvaultError:
        """The error to raise for an error answer to the request for `what`."""
        return error_for(status, code, f"{what}: {message}")

    def unreachable(self, what: str, e: Exception, cause: str) -> DicomvaultError:
        """The error to raise when no answer came; `cause` is `unanswered`'s sentence."""
        if isinstance(e, aiohttp.ClientConnectorCertificateError):
            return StoreError(f"{what}: {cause}")
        return Unreachable(f"{what}: {cause}")

    @asynccontextmanager
    async def response(
        self, method: str, url: str, what: str, ok: tuple[int, ...], **kw: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response to one request, its status one of `ok`; its body not yet read. A body
        that breaks off while the caller reads it is `unreachable` too; the caller's own
        `OSError` (a local disk, say) passes as it is."""
        answered = False
        try:
            async with self._client().request(method, url, **kw) as resp:
                if resp.status not in ok:
                    message, code = await error_answer(resp)
                    raise self.refused(resp.status, code, what, message)
                answered = True
                self._saw_generation(resp.headers.get(PRIMARY_GENERATION_HEADER, ""))
                yield resp
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            if answered and not isinstance(e, aiohttp.ClientError | TimeoutError):
                raise
            raise self.unreachable(what, e, await unanswered(e, url, self.CA_HINT)) from None

    def _saw_generation(self, text: str) -> None:
        if text.isdigit():
            self.primary_generation = max(self.primary_generation, int(text))

    async def fetch(
        self, method: str, url: str, what: str, ok: tuple[int, ...], **kw: Any
    ) -> tuple[int, str, bytes]:
        """Return (status, Content-Range header or "", body) for an expected status."""
        async with self.response(method, url, what, ok, **kw) as resp:
            return resp.status, resp.headers.get("Content-Range", ""), await resp.read()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
