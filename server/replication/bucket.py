"""A token bucket that paces replication traffic to a peer (bytes per second).

Owns only the pacing arithmetic; the clock and the sleep are injected so tests run without
waiting. Must not know peers or HTTP. (The practice-side limiter lives in `client/`, which the
server must not import.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

BURST_SECONDS = 1.0  # an idle link may send one second's worth at once


class TokenBucket:
    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self._clock, self._sleep = clock, sleep
        self._tokens = rate * BURST_SECONDS if rate else 0.0
        self._stamp = clock()

    async def take(self, n: int) -> None:
        """Wait until `n` bytes may be sent. Debt is allowed, so pieces larger than the burst
        still pass, and the long-run rate stays `rate`."""
        if not self.rate:
            return
        now = self._clock()
        refill = (now - self._stamp) * self.rate
        self._tokens = min(self.rate * BURST_SECONDS, self._tokens + refill)
        self._stamp = now
        self._tokens -= n
        if self._tokens < 0:
            await self._sleep(-self._tokens / self.rate)
