"""A TCP proxy on loopback that plays a slow or faulty network link, for tests and benchmarks.

Forwards every connection to one upstream address and can pace the client→server direction to a
byte rate (one link shared by all connections), count the bytes each way, and reset every open
connection on command or once a number of upstream bytes has passed, or reset just the
connections that try to carry more than a given size (small requests pass, bulk uploads die).
It runs its own event loop in a daemon thread, so synchronous tests (which run the CLI in a
subprocess) and asyncio code can both drive it. It knows nothing of HTTP or dicomvault.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

PIECE = 16 * 1024  # bytes forwarded per step: small enough that pacing stays smooth
# The proxy's receive buffer: without a cap, loopback autotuning lets the kernel absorb megabytes
# that the "link" has not carried yet, and a paced link would look faster than it is.
RCVBUF = 64 * 1024
IDLE_SLACK = 0.05  # seconds of lateness the pacer makes up for before it counts as idle


@dataclass
class LinkStats:
    """Byte counts and the times the first and last client→server bytes passed the link."""

    bytes_up: int = 0
    bytes_down: int = 0
    connections: int = 0
    resets: int = 0
    first_up: float | None = None
    last_up: float | None = None
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, bytes_up so far)


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    bytes_up: int = 0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), like a dropped link, not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class LinkProxy:
    """`rate` (bytes/s, None = unlimited) paces the upstream direction and `down_rate` the
    downstream one (server → client, e.g. a restore); both may change live."""

    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rate = rate
        self.down_rate: float | None = None
        self.stats = LinkStats()
        self.port = 0
        self.reset_after: int | None = None  # reset all connections once bytes_up passes this
        self.refuse = False  # reset new connections at once (a link that is down)
        # Reset a connection before it carries more than this many upstream bytes (a link on
        # which bulk transfers die while small requests such as heartbeats get through).
        self.max_connection_bytes: int | None = None
        self._clock = clock
        self._busy_until = 0.0
        self._down_busy_until = 0.0
        self._pairs: set[_Pair] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="linkproxy", daemon=True
        )
        self._server: asyncio.Server | None = None

    # lifecycle (call from any thread)

    def start(self) -> LinkProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> LinkProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # faults and measurements (call from any thread)

    def drop(self) -> int:
        """Reset every open connection now; return how many were reset."""
        return self._call(self._drop())

    def reset_counters(self) -> None:
        self.stats = LinkStats()

    def up_rate(self) -> float:
        """Client→server bytes per second between the first and last upstream byte."""
        s = self.stats
        if s.first_up is None or s.last_up is None or s.last_up <= s.first_up:
            return 0.0
        return s.bytes_up / (s.last_up - s.first_up)

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(10)

    # inside the proxy's loop

    async def _start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)  # inherited by accepts
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop()

    async def _drop(self) -> int:
        pairs, self._pairs = list(self._pairs), set()
        for pair in pairs:
            _reset(pair.client)
            _reset(pair.server)
            for task in pair.tasks:
                task.cancel()
        self.stats.resets += len(pairs)
        return len(pairs)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self.refuse:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)  # upstream down: the client sees a reset, as through a real link
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        pair.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, pair, upstream=True)),
            asyncio.create_task(self._pump(up_reader, writer, pair, upstream=False)),
        ]

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: _Pair,
        *,
        upstream: bool,
    ) -> None:
        try:
            while data := await reader.read(PIECE):
                if upstream and self._too_big(pair, len(data)):
                    raise ConnectionResetError("connection over max_connection_bytes")
                if upstream:
                    await self._pace(len(data))
                else:
                    await self._pace_down(len(data))
                writer.write(data)
                await writer.drain()
                if upstream:
                    self._count_up(len(data))
                else:
                    self.stats.bytes_down += len(data)
            if writer.can_write_eof():
                writer.write_eof()  # half-close: the other direction may still be talking
        except (ConnectionError, OSError):
            self._pairs.discard(pair)
            _reset(pair.client)
            _reset(pair.server)
            return
        if all(t.done() or t is asyncio.current_task() for t in pair.tasks):
            self._pairs.discard(pair)
            pair.client.close()
            pair.server.close()

    def _too_big(self, pair: _Pair, n: int) -> bool:
        pair.bytes_up += n
        limit = self.max_connection_bytes
        return limit is not None and pair.bytes_up > limit

    async def _pace(self, n: int) -> None:
        """One link for all connections: each piece occupies it for n / rate seconds."""
        if self.rate is not None:
            now = self._clock()
            self._busy_until = _slot(self._busy_until, n, self.rate, now)
            await asyncio.sleep(max(0.0, self._busy_until - now))

    async def _pace_down(self, n: int) -> None:
        """The downstream direction is a second link of its own (full duplex)."""
        if self.down_rate is not None:
            now = self._clock()
            self._down_busy_until = _slot(self._down_busy_until, n, self.down_rate, now)
            await asyncio.sleep(max(0.0, self._down_busy_until - now))

    def _count_up(self, n: int) -> None:
        s, now = self.stats, self._clock()
        s.bytes_up += n
        s.first_up = now if s.first_up is None else s.first_up
        s.last_up = now
        s.samples.append((now, s.bytes_up))
        if self.reset_after is not None and s.bytes_up >= self.reset_after:
            self.reset_after = None
            asyncio.get_running_loop().create_task(self._drop())


def _slot(busy_until: float, n: int, rate: float, now: float) -> float:
    """When a link busy until `busy_until` has carried `n` more bytes. A link that just went
    idle picks up where its schedule left off (a few ms late is timer jitter, not idleness);
    otherwise every late wake-up would lower the rate."""
    start = busy_until if busy_until >= now - IDLE_SLACK else now
    return start + n / rate


def max_in_window(samples: list[tuple[float, int]], window: float) -> int:
    """The most upstream bytes that passed in any `window` seconds (samples: cumulative)."""
    best, lo = 0, 0
    for hi in range(len(samples)):
        while samples[hi][0] - samples[lo][0] > window:
            lo += 1
        base = samples[lo - 1][1] if lo else 0
        best = max(best, samples[hi][1] - base)
    return best
