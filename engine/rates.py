"""Rates and the one token bucket: upload pacing at the practice, replication and scrub pacing
at the server.

Owns parsing a rate as an operator writes it ("4Mbit", "20MiB/s", 250000) and the bucket
arithmetic. The rate may be fixed or a callable asked on every grant (a time-of-day schedule),
so a new limit applies mid-transfer. The clock and the sleep are injected; nothing here reads
the wall clock or knows HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from engine.clock import SYSTEM, Clock
from engine.errors import UsageError

_UNITS = {
    "": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30,
    "bit": 1 / 8, "kbit": 1000 / 8, "mbit": 10**6 / 8, "gbit": 10**9 / 8,
}  # fmt: skip
_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*?)(?:/s|ps)?\s*$", re.IGNORECASE)
MIN_SLEEP = 0.001  # a float deficit of 1e-12 must not spin without time advancing
MAX_SLEEP = 1.0  # a callable rate is asked again at least this often while waiting

Rate = float | None
RateSource = Rate | Callable[[], Rate]


def parse_rate(text: str | int | float | None) -> Rate:
    """Bytes per second: '4Mbit' → 500000.0, '20MiB/s' → 20971520.0, 250000 → 250000.0;
    'unlimited', '0', 0 or None → None (no limit). Units are case-insensitive; bits only when
    spelled 'bit'."""
    if text is None:
        return None
    if isinstance(text, bool):
        raise UsageError(f"not a rate: {text!r} (try 4Mbit, 500KiB, 2MB)")
    if isinstance(text, int | float):
        if text < 0:
            raise UsageError(f"not a rate: {text!r} (a rate is positive)")
        return float(text) if text > 0 else None
    if text.strip().lower() in ("unlimited", "none", "off", "0", ""):
        return None
    m = _RATE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"not a rate: {text!r} (try 4Mbit, 500KiB, 2MB)")
    rate = float(m.group(1)) * _UNITS[m.group(2).lower()]
    return rate if rate > 0 else None


class TokenBucket:
    """Lets n bytes go when the bucket allows. Debt is allowed, so a piece larger than the burst
    still passes and the long-run rate holds; the debt is then waited off, in sleeps of at most
    `MAX_SLEEP` so that a rate that changes (or becomes unlimited) applies while waiting.
    """

    def __init__(
        self,
        rate: RateSource,
        *,
        burst_seconds: float = 1.0,
        clock: Clock = SYSTEM,
    ) -> None:
        self._rate, self.burst_seconds, self._clock = rate, burst_seconds, clock
        first = self.current_rate()
        self._tokens = first * burst_seconds if first else 0.0
        self._stamp = clock.monotonic()

    def current_rate(self) -> Rate:
        return self._rate() if callable(self._rate) else self._rate

    def _refill(self, rate: float) -> None:
        now = self._clock.monotonic()
        self._tokens = min(self._tokens + (now - self._stamp) * rate, rate * self.burst_seconds)
        self._stamp = now

    async def take(self, n: int) -> None:
        """Wait until `n` bytes may be sent."""
        rate = self.current_rate()
        if rate is None:
            self._tokens, self._stamp = 0.0, self._clock.monotonic()
            return
        self._refill(rate)
        self._tokens -= n
        while self._tokens < 0:
            await self._clock.sleep(min(max(-self._tokens / rate, MIN_SLEEP), MAX_SLEEP))
            rate = self.current_rate()
            if rate is None:
                self._tokens = 0.0
                return
            self._refill(rate)
