"""RateLimiter, Schedule and ScheduleFile on simulated time: no test here sleeps for real.

A `FakeClock` supplies `monotonic`, `now` and `sleep` to the limiter; `sleep` only moves the clock.
An "upload" is a loop of `acquire(piece)` calls, each granted piece recorded at the simulated
time the call returned, which is when the bytes would reach the socket.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from benchmarks.linkproxy import max_in_window
from client.ratelimit import (
    RateLimiter,
    Schedule,
    ScheduleFile,
    Window,
    parse_days,
)
from engine.errors import UsageError

PIECE = 64 * 1024  # what the uploader hands to the limiter at a time (client.spool.SEND_PIECE)
MONDAY = datetime(2024, 5, 6)  # a Monday


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.start, self.t = start, 0.0
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return self.now().timestamp()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.t)

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps += 1
        self.t += max(seconds, 1e-6)  # a real sleep always takes a little time


def limiter(schedule: Schedule | Callable[[], Schedule], clock: FakeClock) -> RateLimiter:
    return RateLimiter(schedule, clock=clock)


async def upload(
    lim: RateLimiter, clock: FakeClock, *, seconds: float, piece: int = PIECE
) -> list[tuple[float, int]]:
    """Acquire pieces for `seconds` of simulated time; return (time, bytes so far) samples."""
    samples, total = [], 0
    end = clock.t + seconds
    while clock.t < end:
        await lim.acquire(piece)
        total += piece
        samples.append((clock.t, total))
    return samples


def bytes_between(samples: list[tuple[float, int]], t0: float, t1: float) -> int:
    inside = [n for t, n in samples if t0 <= t < t1]
    before = [n for t, n in samples if t < t0]
    return (inside[-1] if inside else 0) - (before[-1] if before else 0) if inside else 0


# parsing


def test_parse_days_handles_names_ranges_and_wraparound() -> None:
    assert parse_days("weekdays") == frozenset(range(5))
    assert parse_days("sat,sun") == frozenset({5, 6})
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    with pytest.raises(UsageError):
        parse_days("someday")


# schedules


def office_hours() -> Schedule:
    """Weekdays 07:00-19:00 at 4 Mbit/s, otherwise unlimited (the issue's example)."""
    doc = {"windows": [{"days": "weekdays", "start": "07:00", "end": "19:00", "rate": "4Mbit"}]}
    return Schedule.from_config(doc)


def test_office_hours_schedule_limits_weekdays_only() -> None:
    s = office_hours()
    assert s.rate_at(MONDAY.replace(hour=6, minute=59)) is None
    assert s.rate_at(MONDAY.replace(hour=7)) == 500_000.0
    assert s.rate_at(MONDAY.replace(hour=18, minute=59)) == 500_000.0
    assert s.rate_at(MONDAY.replace(hour=19)) is None
    assert s.rate_at(MONDAY.replace(hour=12) + timedelta(days=5)) is None  # Saturday


def test_overnight_window_belongs_to_the_day_it_starts() -> None:
    w = Window.from_config({"days": "fri", "start": "22:00", "end": "06:00", "rate": 1000})
    friday = MONDAY + timedelta(days=4)
    assert w.contains(friday.replace(hour=23))
    assert w.contains((friday + timedelta(days=1)).replace(hour=5, minute=59))  # Saturday 05:59
    assert not w.contains((friday + timedelta(days=1)).replace(hour=6))
    assert not w.contains(friday.replace(hour=5))  # Friday morning: Thursday's night, not listed
    assert not w.contains(friday.replace(hour=21, minute=59))


def test_first_matching_window_wins_and_default_applies_elsewhere() -> None:
    s = Schedule.from_config(
        {
            "rate": "1MB",
            "windows": [
                {"days": "daily", "start": "12:00", "end": "13:00", "rate": "unlimited"},
                {"days": "daily", "start": "08:00", "end": "18:00", "rate": "100KB"},
            ],
        }
    )
    assert s.rate_at(MONDAY.replace(hour=12, minute=30)) is None
    assert s.rate_at(MONDAY.replace(hour=9)) == 100_000.0
    assert s.rate_at(MONDAY.replace(hour=20)) == 1_000_000.0


# the token bucket


@pytest.mark.parametrize("rate", [50_000.0, 500_000.0, 1_250_000.0, 12_500_000.0])
async def test_rate_is_honoured_within_5_percent_over_any_10_second_window(rate: float) -> None:
    clock = FakeClock(MONDAY)
    lim = limiter(Schedule(default=rate), clock)
    samples = await upload(lim, clock, seconds=60)
    assert max_in_window(samples, 10.0) <= rate * 10 * 1.05
    # ... and the limiter does not waste the link either: the whole minute runs near the rate.
    assert samples[-1][1] >= rate * 60 * 0.98


async def test_idle_time_does_not_buy_a_burst_beyond_a_fraction_of_a_second() -> None:
    clock = FakeClock(MONDAY)
    lim = limiter(Schedule(default=100_000.0), clock)
    await upload(lim, clock, seconds=1)
    clock.t += 3600  # an hour with nothing to send
    samples = await upload(lim, clock, seconds=10)
    start = clock.t - 10
    assert bytes_between(samples, start, start + 1) <= 100_000 * 1.25 + PIECE


async def test_unlimited_schedule_never_sleeps() -> None:
    clock = FakeClock(MONDAY)
    lim = limiter(Schedule(), clock)
    for _ in range(1000):
        await lim.acquire(PIECE)
    assert clock.sleeps == 0


async def test_window_boundary_changes_the_rate_mid_upload() -> None:
    """06:59:30 Monday: unlimited until 07:00, then 4 Mbit/s — without restarting anything."""
    clock = FakeClock(MONDAY.replace(hour=6, minute=59, second=30))
    lim = limiter(office_hours(), clock)
    n_before = 0
    while clock.t < 30:  # unlimited: acquire never sleeps, so step the clock as a link would
        await lim.acquire(PIECE)
        n_before += 1
        clock.t += PIECE / 10e6
    assert clock.sleeps == 0 and n_before > 1000
    samples = await upload(lim, clock, seconds=60)
    assert clock.now().hour == 7
    assert max_in_window(samples, 10.0) <= 500_000 * 10 * 1.05
    assert samples[-1][1] >= 500_000 * 60 * 0.98


async def test_limited_window_ending_mid_upload_lifts_the_limit_within_a_second() -> None:
    clock = FakeClock(MONDAY.replace(hour=18, minute=59, second=50))
    lim = limiter(office_hours(), clock)
    samples = await upload(lim, clock, seconds=10)  # the last 10 s of the window
    assert max_in_window(samples, 10.0) <= 500_000 * 10 * 1.05
    await lim.acquire(50 * 500_000)  # a large debt taken just before 19:00 ...
    assert clock.now() < MONDAY.replace(hour=19, second=2)  # ... is forgiven once unlimited


async def test_overnight_window_limits_through_midnight() -> None:
    night = Schedule(windows=(Window.from_config({"start": "22:00", "end": "06:00", "rate": 2e5}),))
    clock = FakeClock(MONDAY.replace(hour=23, minute=59, second=40))
    lim = limiter(night, clock)
    samples = await upload(lim, clock, seconds=40)
    assert clock.now().day == MONDAY.day + 1
    assert max_in_window(samples, 10.0) <= 200_000 * 10 * 1.05
    assert samples[-1][1] >= 200_000 * 40 * 0.97


async def test_rate_drop_mid_upload_applies_without_a_burst_of_old_credit() -> None:
    clock = FakeClock(MONDAY)
    current = [Schedule(default=10_000_000.0)]
    lim = limiter(lambda: current[0], clock)
    await upload(lim, clock, seconds=5)
    current[0] = Schedule(default=100_000.0)
    samples = await upload(lim, clock, seconds=30)
    assert max_in_window(samples, 10.0) - samples[0][1] <= 100_000 * 10 * 1.05 + PIECE
    assert samples[-1][1] <= 100_000 * 30 * 1.05 + 10_000_000 * 0.2 + PIECE


# live configuration


def write_schedule(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))  # distinct mtimes even within one clock tick


async def test_schedule_file_edit_applies_to_an_upload_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "dicomvault.toml"
    write_schedule(path, '[upload]\nrate = "1MB"\n', 1_000_000_000)
    clock = FakeClock(MONDAY.replace(hour=10))
    lim = limiter(ScheduleFile(path, check_every=0), clock)
    first = await upload(lim, clock, seconds=20)
    assert max_in_window(first, 10.0) <= 1_000_000 * 10 * 1.05
    write_schedule(
        path,
        '[upload]\nrate = "1MB"\n[[upload.windows]]\n'
        'days = "mon-fri"\nstart = "07:00"\nend = "19:00"\nrate = "200KB"\n',
        2_000_000_000,
    )
    second = await upload(lim, clock, seconds=20)
    sent = [(t, n - first[-1][1]) for t, n in second]
    assert max_in_window(sent[1:], 10.0) <= 200_000 * 10 * 1.05 + PIECE
    assert lim.current_rate() == 200_000.0


async def test_schedule_file_without_rate_keeps_the_command_line_default(tmp_path: Path) -> None:
    path = tmp_path / "dicomvault.toml"
    write_schedule(
        path,
        '[upload]\n[[upload.windows]]\ndays = "sat,sun"\nstart = "00:00"\nend = "24:00"\n'
        'rate = "unlimited"\n',
        1_000_000_000,
    )
    schedule = ScheduleFile(path, Schedule(default=500_000.0), check_every=0)
    assert schedule().rate_at(MONDAY.replace(hour=10)) == 500_000.0
    assert schedule().rate_at(MONDAY.replace(hour=10) + timedelta(days=6)) is None


async def test_broken_schedule_edit_keeps_the_previous_schedule(tmp_path: Path) -> None:
    path = tmp_path / "dicomvault.toml"
    write_schedule(path, '[upload]\nrate = "300KB"\n', 1_000_000_000)
    schedule = ScheduleFile(path, check_every=0)
    assert schedule().default == 300_000.0
    write_schedule(path, '[upload]\nrate = "fast please"\n', 2_000_000_000)
    assert schedule().default == 300_000.0
    write_schedule(path, "[upload\n", 3_000_000_000)
    assert schedule().default == 300_000.0
    write_schedule(path, '[upload]\nrate = "2MB"\n', 4_000_000_000)
    assert schedule().default == 2_000_000.0
