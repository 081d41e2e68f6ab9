"""The one clock: everything whose behaviour depends on time takes a `Clock` it is given.

`time()` is wall-clock seconds since the epoch (records, expiry, alerts), `now()` the local
date and time (windows and schedules), `monotonic()` for intervals, `sleep()` to wait. The
system clock is the default; `SimulatedClock` moves only when told to (or when something
sleeps on it), so windows, grace periods, heartbeats and alerts are tested on simulated time,
as kopia's `clock` package does. Knows nothing else.
"""

from __future__ import annotations

import asyncio
import time as _time
from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...
    def now(self) -> datetime: ...
    def monotonic(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return _time.time()

    def now(self) -> datetime:
        return datetime.now()

    def monotonic(self) -> float:
        return _time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM = SystemClock()


class SimulatedClock:
    """Starts at `start` (epoch seconds); `advance()` or `sleep()` moves it. Monotonic time
    counts from 0 and moves with it. A sleep yields to the event loop once, so other tasks
    run, then returns with the clock moved."""

    def __init__(self, start: float) -> None:
        self._start, self._elapsed = start, 0.0

    def time(self) -> float:
        return self._start + self._elapsed

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time())

    def monotonic(self) -> float:
        return self._elapsed

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._elapsed += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)
