"""RetryingBackend: transient failures are retried until a deadline; others pass at once."""

from __future__ import annotations

import pytest

from engine.backend import LocalBackend
from engine.errors import ObjectNotFound, RepositoryNotFound, TransientError
from engine.retry import RetryingBackend
from engine.store.faulty import Fault, FaultyStore
from engine.store.memory import MemoryStore


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def backend(*faults: Fault) -> tuple[RetryingBackend, FakeTime, FaultyStore]:
    store = FaultyStore(MemoryStore(), list(faults))
    clock = FakeTime()
    retrying = RetryingBackend(
        LocalBackend(store), deadline=60, sleep=clock.sleep, monotonic=clock.monotonic
    )
    return retrying, clock, store


async def test_transient_failures_are_retried_with_growing_delays() -> None:
    b, clock, store = backend(Fault("get", times=3))
    await store.inner.put("config", b"{}")
    assert await b.get_config() == b"{}"
    assert b.retries == 3
    assert clock.sleeps[0] < clock.sleeps[1] < clock.sleeps[2]


async def test_a_failure_that_outlasts_the_deadline_is_raised() -> None:
    b, clock, _ = backend(Fault("get", times=-1))
    with pytest.raises(TransientError):
        await b.get_config()
    assert 0 < clock.now <= 60


async def test_permanent_errors_are_not_retried() -> None:
    b, clock, _ = backend()
    with pytest.raises(RepositoryNotFound):
        await b.get_config()
    with pytest.raises(ObjectNotFound):
        await b.get_key("nokey")
    assert clock.sleeps == []


async def test_listing_restarts_cleanly_after_a_failure() -> None:
    b, _, store = backend(Fault("list", times=1))
    pack_name = "packs/ab/" + "ab" * 32
    await store.inner.put(pack_name, b"x")
    assert [p.hex() async for p in b.list_packs()] == ["ab" * 32]
