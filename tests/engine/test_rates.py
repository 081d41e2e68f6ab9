"""The one rate parser and token bucket (engine/rates.py), on simulated time."""

from __future__ import annotations

import pytest

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


async def test_token_bucket_paces_to_its_rate_with_a_one_second_burst() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(1000.0, clock=lambda: now[0], sleep=sleep)
    await bucket.take(1000)  # the burst
    assert slept == []
    for _ in range(5):
        await bucket.take(500)
    assert sum(slept) == pytest.approx(2.5)
    unlimited = TokenBucket(None, clock=lambda: now[0], sleep=sleep)
    await unlimited.take(10**9)
    assert sum(slept) == pytest.approx(2.5)


async def test_a_rate_that_changes_applies_while_waiting_off_a_debt() -> None:
    now = [0.0]
    rate: list[float | None] = [100.0]

    async def sleep(seconds: float) -> None:
        assert seconds <= 1.0  # the rate is asked again at least every second
        now[0] += seconds
        if now[0] >= 3.0:
            rate[0] = None  # the window opens: unlimited

    bucket = TokenBucket(lambda: rate[0], clock=lambda: now[0], sleep=sleep)
    await bucket.take(100 + 10_000)  # a 100 s debt at 100 B/s
    assert now[0] == pytest.approx(3.0)
