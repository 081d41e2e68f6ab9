"""The one rate parser and token bucket (engine/rates.py), on simulated time."""

from __future__ import annotations

import pytest

from engine.clock import SimulatedClock
from engine.errors import UsageError
from engine.rates import TokenBucket, parse_rate


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("4Mbit", 500_000.0),
        ("10Mbit/s", 1_250_000.0),
        ("500KiB", 512_000.0),
        ("2MB", 2_000_000.0),
        ("1.5mib", 1.5 * 2**20),
        ("800kbps", 800_000.0),
        ("1000", 1000.0),
        ("unlimited", None),
        ("0", None),
        (None, None),
        (250_000, 250_000.0),
    ],
)
def test_parse_rate_understands_bits_bytes_and_binary_prefixes(
    text: str | int | None, rate: float | None
) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "4 Mbitz", "-3MB", "MB"])
def test_parse_rate_refuses_nonsense_with_a_hint(text: str) -> None:
    with pytest.raises(UsageError, match="not a rate"):
        parse_rate(text)


def test_rates_written_for_peers_and_scrub_read_the_same() -> None:
    assert parse_rate("80Mbit/s") == 10e6
    assert parse_rate("20MiB/s") == 20 * 2**20
    with pytest.raises(UsageError):
        parse_rate(-1)


class RecordingClock(SimulatedClock):
    """Simulated time that keeps every sleep the bucket asked for."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await super().sleep(seconds)


async def test_token_bucket_paces_to_its_rate_with_a_one_second_burst() -> None:
    clock = RecordingClock()
    bucket = TokenBucket(1000.0, clock=clock)
    await bucket.take(1000)  # the burst
    assert clock.slept == []
    for _ in range(5):
        await bucket.take(500)
    assert sum(clock.slept) == pytest.approx(2.5)
    unlimited = TokenBucket(None, clock=clock)
    await unlimited.take(10**9)
    assert sum(clock.slept) == pytest.approx(2.5)


async def test_a_rate_that_changes_applies_while_waiting_off_a_debt() -> None:
    clock = RecordingClock()

    def rate() -> float | None:
        return None if clock.monotonic() >= 3.0 else 100.0  # the window opens at 3 s

    bucket = TokenBucket(rate, clock=clock)
    await bucket.take(100 + 10_000)  # a 100 s debt at 100 B/s
    assert clock.monotonic() == pytest.approx(3.0)
    assert max(clock.slept) <= 1.0  # the rate is asked again at least every second
