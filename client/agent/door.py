"""Who may talk to the agent's DICOM listener: the allow-list of senders, the connection slots
and the record of refusals.

Owns two decisions. At connect time (before a thread or a slot is spent on the peer), a host
over its share of slots is turned away: a host not named in `[[dicom.senders]]` holds at most
`max_per_host` connections, and such hosts together never take the `reserved` slots; a named
host is bound by `max_associations` only. At association request,
the called AE title must be ours and the calling AE title must be allow-listed (from one of its
hosts, if it names any), unless `accept_any`. Pure apart from logging: the receiver applies the
answers (closing the socket, or A-ASSOCIATE-RJ) and passes in the time.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

from client.agent.config import DicomSettings

log = logging.getLogger(__name__)
KEEP_REFUSALS = 20  # the most recent refusals shown in status.json
LOG_EVERY = 60.0  # seconds between log lines for the same (host, reason): a flood logs little

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AET = (0x01, 0x01, 0x03)  # permanent, service user: calling AE title not recognised
REJECT_CALLED_AET = (0x01, 0x01, 0x07)  # permanent, service user: called AE title not recognised


@dataclass(frozen=True, slots=True)
class Refusal:
    time: float
    host: str
    calling_ae: str
    reason: str

    def as_json(self) -> dict[str, object]:
        return {"time": self.time, "host": self.host, "calling_ae": self.calling_ae,
                "reason": self.reason}  # fmt: skip


class Door:
    """The listener's admission rules and its refusal counters (thread-safe)."""

    def __init__(self, settings: DicomSettings) -> None:
        self.settings = settings
        self.refused = 0
        self.recent: deque[Refusal] = deque(maxlen=KEEP_REFUSALS)
        self._logged: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def known_host(self, host: str) -> bool:
        """A host named by some allow-listed sender: it may use the reserved slots."""
        return any(s.hosts and s.allows(host) for s in self.settings.senders)

    def connection(self, host: str, live: list[str]) -> str | None:
        """Why a new connection from `host` is turned away (None: let it in); `live` holds the
        host of each connection open now."""
        s = self.settings
        if len(live) >= s.max_associations:
            return f"all {s.max_associations} connection slots in use"
        if self.known_host(host):
            return None
        if live.count(host) >= s.max_per_host:
            return f"{s.max_per_host} connections from this host already"
        reserved = s.reserved if any(x.hosts for x in s.senders) else 0
        unknown = sum(1 for h in live if not self.known_host(h))
        if unknown >= s.max_associations - reserved:
            return f"the {reserved} free slots are reserved for allow-listed hosts"
        return None

    def association(
        self, calling_ae: str, called_ae: str, host: str
    ) -> tuple[tuple[int, int, int], str] | None:
        """The A-ASSOCIATE-RJ reason and why (None: accept)."""
        s = self.settings
        if called_ae != s.ae_title:
            return REJECT_CALLED_AET, f"called AE title {called_ae!r} is not ours ({s.ae_title})"
        sender = s.sender(calling_ae)
        if sender is not None and not sender.allows(host):
            return REJECT_CALLING_AET, f"{calling_ae} may call only from {', '.join(sender.hosts)}"
        if sender is None and not s.accept_any:
            return REJECT_CALLING_AET, f"calling AE title {calling_ae!r} is not allow-listed"
        return None

    def refuse(self, now: float, host: str, calling_ae: str, reason: str) -> None:
        """Count and log a refusal (a flood from one host logs once a minute per reason)."""
        with self._lock:
            self.refused += 1
            self.recent.append(Refusal(now, host, calling_ae, reason))
            key = (host, reason)
            if now - self._logged.get(key, -LOG_EVERY) < LOG_EVERY:
                return
            if len(self._logged) > 1000:  # many hosts: forget the oldest throttles
                self._logged.clear()
            self._logged[key] = now
        log.warning("refused %s from %s: %s", calling_ae or "a connection", host, reason)

    def last_refusal(self) -> Refusal | None:
        with self._lock:
            return self.recent[-1] if self.recent else None
