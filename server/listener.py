"""The listening socket: connection caps, idle and slow-header timeouts, the descriptor limit,
repeated-log suppression, and the serve loop `dicomvault-server serve` runs.

Owns what bounds the server's descriptors and time per connection. Every connection past
`max_connections` in total, or past `max_connections_per_address` from one address, is reset as
soon as it is accepted, so a flood of idle sockets can never use up the descriptors that packs,
LMDB and legitimate clients need; a connection without a complete request for `idle_timeout`
seconds (idle, or trickling its headers) is closed. Slow bodies are cut off by `server.bodies`.
Must not contain route logic.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from server.config import ServerConfig

log = logging.getLogger(__name__)
_DIGITS = re.compile(r"\d+")  # "Task-144", "fd=17": the same line with another number


@dataclass(frozen=True, slots=True)
class Caps:
    total: int
    per_address: int


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd's default soft limit is 1,024);
    return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the old limit; the caps below are fitted to it
    return soft


def fit_caps(config: ServerConfig, descriptors: int) -> Caps:
    """The caps, lowered so connections leave an eighth of the descriptors (at least 64) to
    LMDB, packs being written or read, replication and logs."""
    room = max(1, descriptors - max(64, descriptors // 8))
    total = min(config.max_connections, room)
    return Caps(total, min(config.max_connections_per_address, total))


class GuardedServer(web.Server):
    """`web.Server` that resets connections past the caps as they are accepted."""

    def __init__(self, caps: Caps, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.caps = caps
        self.per_address: Counter[str] = Counter()
        self._admitted: dict[RequestHandler, str] = {}
        self.refused = 0

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        address = _address(transport)
        if len(self._admitted) >= self.caps.total or (
            self.per_address[address] >= self.caps.per_address
        ):
            self.refused += 1
            log.warning("refused a connection from %s: connection limit reached", address)
            # Closed on the next loop turn, not when the peer gives up; not at once, because
            # the handler's task (started after this returns) expects to see its manager.
            asyncio.get_running_loop().call_soon(transport.abort)
            return
        self._admitted[handler] = address
        self.per_address[address] += 1
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        address = self._admitted.pop(handler, None)
        if address is not None:
            self.per_address[address] -= 1
            if not self.per_address[address]:
                del self.per_address[address]
        super().connection_lost(handler, exc)


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "local"


class GuardedRunner(web.AppRunner):
    """`AppRunner` whose server is a `GuardedServer`; `keepalive_timeout` is the idle timeout
    (aiohttp applies it from the connection's start until a request is complete, too)."""

    def __init__(self, app: web.Application, caps: Caps, idle_timeout: float, **kw: Any) -> None:
        super().__init__(app, keepalive_timeout=idle_timeout, **kw)
        self.caps = caps
        self.idle_timeout = idle_timeout

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's start-up
        return GuardedServer(
            self.caps,
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            keepalive_timeout=self.idle_timeout,
        )


async def start(
    app: web.Application,
    config: ServerConfig,
    ssl_context: ssl.SSLContext | None = None,
    *,
    descriptors: int | None = None,
    handle_signals: bool = False,
) -> tuple[GuardedRunner, web.TCPSite]:
    """Start serving `app` on `config.host:config.port`; the caller cleans the runner up."""
    fds = descriptors or resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    caps = fit_caps(config, fds)
    runner = GuardedRunner(app, caps, config.idle_timeout, handle_signals=handle_signals)
    await runner.setup()
    # asyncio accepts up to `backlog` sockets per wake-up before any of them reaches the caps:
    # keep that burst within the descriptors the caps leave free, or a flood hits EMFILE.
    backlog = max(8, min(128, (fds - caps.total) // 2))
    site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context, backlog=backlog)
    await site.start()
    log.info(
        "serving on %s:%d; at most %d connections, %d per address, idle timeout %.0f s",
        config.host,
        config.port,
        caps.total,
        caps.per_address,
        config.idle_timeout,
    )
    return runner, site


async def serve(
    app: web.Application, config: ServerConfig, ssl_context: ssl.SSLContext | None
) -> None:
    """Serve until SIGINT or SIGTERM (aiohttp raises `web.GracefulExit`)."""
    descriptors = raise_descriptor_limit()
    runner, _ = await start(app, config, ssl_context, descriptors=descriptors, handle_signals=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class RepeatFilter(logging.Filter):
    """Let at most `burst` records of one kind (logger, level, message with its numbers
    blanked) through per `window` seconds; the next one let through says how many were
    dropped. A flood of identical errors (an attacker, a full disk) must not fill the disk."""

    def __init__(
        self, burst: int = 5, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst, self.window, self.clock = burst, window, clock
        self._seen: dict[tuple[str, int, str], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, _DIGITS.sub("#", str(record.msg))[:200])
        now = self.clock()
        start, passed, dropped = self._seen.get(key, (now, 0, 0))
        if now - start >= self.window:
            start, passed = now, 0
        if passed >= self.burst:
            self._seen[key] = (start, passed, dropped + 1)
            return False
        if dropped:
            record.msg = f"{record.msg} [{dropped} more like this suppressed]"
        self._seen[key] = (start, passed + 1, 0)
        if len(self._seen) > 10_000:  # templates are few; keep the table bounded regardless
            self._seen.clear()
        return True


def configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(RepeatFilter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
