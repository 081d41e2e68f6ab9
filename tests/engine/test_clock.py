"""The one clock: the system clock agrees with the OS; the simulated one moves only when told."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from engine.clock import SYSTEM, Clock, SimulatedClock


def test_the_system_clock_reads_the_os_clock() -> None:
    clock: Clock = SYSTEM
    assert abs(clock.time() - time.time()) < 5
    assert abs((clock.now() - datetime.now()).total_seconds()) < 5
    a = clock.monotonic()
    assert clock.monotonic() >= a


async def test_simulated_time_moves_only_by_advance_and_sleep() -> None:
    clock: Clock = SimulatedClock(1_800_000_000.0)
    assert clock.time() == 1_800_000_000.0 and clock.monotonic() == 0.0
    await clock.sleep(90.0)
    assert clock.time() == 1_800_000_090.0 and clock.monotonic() == 90.0
    assert clock.now() == datetime.fromtimestamp(1_800_000_090.0)
    assert isinstance(clock, SimulatedClock)
    clock.advance(10)
    assert clock.monotonic() == 100.0
    with pytest.raises(ValueError):
        clock.advance(-1)
