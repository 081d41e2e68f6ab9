"""Peer settings for replication: one frozen `PeerConfig` per `[[peers]]` entry, rates and windows.

Owns parsing and validating what an operator writes about a peer (URL, token, mode, time
window, rate limit, anti-entropy interval) and the `Window` test "may we send now?". Must not do
I/O or read the clock itself: callers pass the time in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from engine.errors import UsageError
from engine.rates import parse_rate

CONTINUOUS = "continuous"  # push each pack and commit as soon as it lands
SCHEDULED = "scheduled"  # push only inside the configured time windows (e.g. a nightly mirror)
MODES = (CONTINUOUS, SCHEDULED)
DEFAULT_ANTI_ENTROPY = 3600.0  # seconds between inventory comparisons with the peer

# Peer names are LMDB key components (NUL separates them) and metric label values.
_PEER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
_WINDOW = re.compile(r"^\s*([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})\s*$")


@dataclass(frozen=True, slots=True)
class Window:
    """Local-time intervals "HH:MM-HH:MM" (wrapping past midnight allowed); empty: always open."""

    spans: tuple[tuple[int, int], ...] = ()  # minutes after midnight: [start, end)

    @classmethod
    def parse(cls, text: str | None) -> Window:
        if not text:
            return cls()
        spans = []
        for part in text.split(","):
            m = _WINDOW.match(part)
            if not m:
                raise UsageError(f"cannot read window {part!r} (e.g. 22:00-06:00)")
            h1, m1, h2, m2 = (int(g) for g in m.groups())
            if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59:
                raise UsageError(f"bad time in window {part!r}")
            spans.append((h1 * 60 + m1, h2 * 60 + m2))
        return cls(tuple(spans))

    def is_open(self, now: float) -> bool:
        if not self.spans:
            return True
        t = datetime.fromtimestamp(now)
        minute = t.hour * 60 + t.minute
        return any(_inside(minute, start, end) for start, end in self.spans)


def _inside(minute: int, start: int, end: int) -> bool:
    if start == end:
        return True  # "00:00-00:00": the whole day
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end  # wraps past midnight


@dataclass(frozen=True, slots=True)
class PeerConfig:
    url: str  # base URL of the peer chunk server, e.g. https://site-b.example:8420
    token: str  # a replica token minted on the peer (`dicomvault-server peer-token create`)
    name: str = ""  # label in state, metrics and the API; defaults to host:port of `url`
    mode: str = CONTINUOUS
    window: Window = Window()
    rate_limit: float | None = None  # bytes per second; None: as fast as the link goes
    anti_entropy_interval: float = DEFAULT_ANTI_ENTROPY
    ca_file: str | None = None  # CA bundle for a peer with a private TLS certificate

    def may_send(self, now: float) -> bool:
        return self.mode == CONTINUOUS or self.window.is_open(now)


@dataclass(frozen=True, slots=True)
class ReplicationSettings:
    """What the replication service is given from server.toml (field names as there)."""

    site_name: str
    peers: tuple[PeerConfig, ...]
    replication_poll_interval: float
    replication_retry_max: float
    peer_unreachable_grace: float  # seconds a peer may be down before it shows as unreachable


def peer_from_dict(doc: dict[str, Any]) -> PeerConfig:
    known = {"url", "token", "name", "mode", "window", "rate_limit", "anti_entropy_interval"}
    known.add("ca_file")
    unknown = sorted(set(doc) - known)
    if unknown:
        raise UsageError(f"unknown peer settings: {', '.join(unknown)}")
    url, token = str(doc.get("url", "")).rstrip("/"), str(doc.get("token", ""))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"peer url must be http(s)://host:port, got {url!r}")
    if not token:
        raise UsageError(f"peer {url} needs a token (dicomvault-server peer-token create)")
    name = str(doc.get("name") or parts.netloc)
    if not _PEER_NAME.match(name):
        raise UsageError(f"invalid peer name {name!r}")
    mode = str(doc.get("mode", CONTINUOUS))
    if mode not in MODES:
        raise UsageError(f"peer mode must be one of {', '.join(MODES)}, got {mode!r}")
    window = Window.parse(doc.get("window"))
    if mode == SCHEDULED and not window.spans:
        raise UsageError(f"scheduled peer {name} needs a window, e.g. window = '22:00-06:00'")
    interval = float(doc.get("anti_entropy_interval", DEFAULT_ANTI_ENTROPY))
    if interval <= 0:
        raise UsageError("anti_entropy_interval must be positive seconds")
    rate = parse_rate(doc.get("rate_limit"))
    ca_file = doc.get("ca_file")
    return PeerConfig(url, token, name, mode, window, rate, interval, ca_file)


def peers_from_list(docs: Any) -> tuple[PeerConfig, ...]:
    if not isinstance(docs, list | tuple):
        raise UsageError("peers must be a list of [[peers]] tables")
    peers = tuple(p if isinstance(p, PeerConfig) else peer_from_dict(dict(p)) for p in docs)
    names = [p.name for p in peers]
    if len(set(names)) != len(names):
        raise UsageError("two peers have the same name; give each a distinct name")
    return peers
