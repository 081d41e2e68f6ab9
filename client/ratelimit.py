"""Upload bandwidth: rates, time-of-day windows, and a token bucket that follows them live.

A `Schedule` maps the wall-clock time to a rate (bytes/s, or None for unlimited): the first
window that contains the time wins, else the default. `RateLimiter.acquire(n)` lets n bytes go
when the bucket allows; the schedule is consulted on every call, so a window boundary or a new
configuration takes effect mid-upload without restarting it. Clock and sleep are injected.
"""

from __future__ import annotations

import logging
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

from engine.clock import SYSTEM, Clock
from engine.errors import UsageError
from engine.rates import TokenBucket, parse_rate

_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_DAY_SETS = {"weekdays": "mon-fri", "weekends": "sat-sun", "daily": "mon-sun", "all": "mon-sun"}
log = logging.getLogger(__name__)
BURST_SECONDS = 0.2  # the bucket holds this much time at the current rate


def parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in _DAY_SETS.get(text.strip().lower(), text).lower().split(","):
        a, _, b = part.strip().partition("-")
        if a not in _DAYS or (b and b not in _DAYS):
            raise UsageError(f"not a day or day range: {part!r} (try mon-fri, sat,sun)")
        lo, hi = _DAYS[a], _DAYS[b or a]
        days.update(range(lo, hi + 1) if lo <= hi else [*range(lo, 7), *range(0, hi + 1)])
    return frozenset(days)


def _clock_time(text: str) -> dtime:
    try:
        h, m = text.split(":")
        return dtime(23, 59, 59, 999999) if text == "24:00" else dtime(int(h), int(m))
    except ValueError:
        raise UsageError(f"not a time of day: {text!r} (try 07:00)") from None


@dataclass(frozen=True, slots=True)
class Window:
    days: frozenset[int]
    start: dtime
    end: dtime
    rate: float | None

    def contains(self, when: datetime) -> bool:
        t = when.time()
        if self.start <= self.end:
            return when.weekday() in self.days and self.start <= t < self.end
        # Overnight window (e.g. 19:00-07:00): the morning part belongs to the previous day.
        if t >= self.start:
            return when.weekday() in self.days
        return t < self.end and (when.weekday() - 1) % 7 in self.days

    @classmethod
    def from_config(cls, doc: dict[str, Any]) -> Window:
        return cls(
            parse_days(str(doc.get("days", "daily"))),
            _clock_time(str(doc["start"])),
            _clock_time(str(doc["end"])),
            parse_rate(doc.get("rate")),
        )


@dataclass(frozen=True, slots=True)
class Schedule:
    default: float | None = None
    windows: tuple[Window, ...] = field(default_factory=tuple)

    def rate_at(self, when: datetime) -> float | None:
        for w in self.windows:
            if w.contains(when):
                return w.rate
        return self.default

    @classmethod
    def from_config(cls, doc: dict[str, Any]) -> Schedule:
        """From the `[upload]` table: rate = "..." and [[upload.windows]] days/start/end/rate."""
        windows = tuple(Window.from_config(w) for w in doc.get("windows", []))
        return cls(parse_rate(doc.get("rate")), windows)


class ScheduleFile:
    """The `[upload]` table of a TOML file, re-read when the file changes (live changes)."""

    def __init__(self, path: Path, base: Schedule = Schedule(), check_every: float = 1.0) -> None:
        self.path, self.base, self.check_every = path, base, check_every
        self._schedule, self._mtime, self._checked = base, -1, -float("inf")

    def __call__(self) -> Schedule:
        t = time.monotonic()
        if t - self._checked >= self.check_every:
            self._checked = t
            try:
                mtime = self.path.stat().st_mtime_ns
                if mtime != self._mtime:
                    self._mtime = mtime
                    doc = tomllib.loads(self.path.read_text())
                    upload = doc.get("upload", {})
                    schedule = Schedule.from_config(upload)
                    if "rate" not in upload:  # the command line's --limit-upload stays default
                        schedule = Schedule(self.base.default, schedule.windows)
                    self._schedule = schedule
            except (OSError, ValueError, KeyError, UsageError) as e:
                log.warning("keeping the previous upload schedule: %s: %s", self.path, e)
        return self._schedule


class RateLimiter(TokenBucket):
    """The engine's token bucket with its rate from a `Schedule` — a fixed one or a callable
    returning the current one (e.g. a `ScheduleFile`) — consulted on every grant at the
    clock's local time."""

    def __init__(
        self, schedule: Schedule | Callable[[], Schedule] = Schedule(), *, clock: Clock = SYSTEM
    ) -> None:
        self.schedule = schedule
        super().__init__(self._scheduled_rate, burst_seconds=BURST_SECONDS, clock=clock)

    def _scheduled_rate(self) -> float | None:
        schedule = self.schedule if isinstance(self.schedule, Schedule) else self.schedule()
        return schedule.rate_at(self._clock.now())

    async def acquire(self, n: int) -> None:
        await self.take(n)
