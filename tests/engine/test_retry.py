"""RetryingBackend: transient failures are retried until a deadline; others pass at once."""

from __future__ import annotations

from typing import Any

import pytest

from engine.backend import DrillReceiver, LocalBackend, Replicated
from engine.clock import SimulatedClock
from engine.errors import (
    ObjectNotFound,
    RepositoryNotFound,
    TransientError,
    Unreachable,
    UsageError,
)
from engine.ids import SnapshotId
from engine.remote import RemoteBackend
from engine.retry import RetryingBackend, parse_duration, with_retries
from engine.store.faulty import Fault, FaultyStore
from engine.store.memory import MemoryStore


class FakeTime(SimulatedClock):
    """The simulated clock, keeping what was slept."""

    def __init__(self) -> None:
        super().__init__(start=0.0)
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


def backend(*faults: Fault) -> tuple[RetryingBackend, FakeTime, FaultyStore]:
    store = FaultyStore(MemoryStore(), list(faults))
    clock = FakeTime()
    retrying = RetryingBackend(LocalBackend(store), deadline=60, clock=clock)
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
    assert 0 < clock.monotonic() <= 60


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


class ServerLike(LocalBackend):
    """A local backend given the chunk server's optional capabilities, each failing `fails`
    times with a `TransientError` first (as a dropped connection would)."""

    def __init__(self, fails: int) -> None:
        super().__init__(FaultyStore(MemoryStore(), []))
        self.fails = fails
        self.reports: list[dict[str, Any]] = []

    def _flaky(self) -> None:
        if self.fails:
            self.fails -= 1
            raise TransientError("connection reset")

    async def replication_status(self) -> dict[str, Any] | None:
        self._flaky()
        return {"site": "here", "peers": []}

    async def snapshot_sites(self) -> dict[SnapshotId, dict[str, bool]] | None:
        self._flaky()
        return {}

    async def report_drill(self, report: dict[str, Any]) -> None:
        self._flaky()
        self.reports.append(report)


def retrying(inner: LocalBackend) -> RetryingBackend:
    return with_retries(inner, deadline=60, clock=FakeTime())


def test_the_wrapper_declares_exactly_the_capabilities_of_what_it_wraps() -> None:
    remote = RemoteBackend("http://127.0.0.1:1/clinic", "token")
    assert isinstance(remote, Replicated) and isinstance(remote, DrillReceiver)
    assert isinstance(with_retries(remote), Replicated)
    assert isinstance(with_retries(remote), DrillReceiver)
    plain = with_retries(LocalBackend(MemoryStore()))
    assert not isinstance(plain, Replicated) and not isinstance(plain, DrillReceiver)
    with pytest.raises(AttributeError):
        plain.replication_status  # type: ignore[attr-defined]  # noqa: B018 - nothing forwarded


async def test_optional_capabilities_are_retried_like_the_rest() -> None:
    inner = ServerLike(fails=2)
    b = retrying(inner)
    assert isinstance(b, Replicated) and isinstance(b, DrillReceiver)
    assert await b.replication_status() == {"site": "here", "peers": []}
    assert b.retries == 2
    inner.fails = 2
    assert await b.snapshot_sites() == {}
    inner.fails = 2
    await b.report_drill({"ok": True})
    assert inner.reports == [{"ok": True}] and b.retries == 6


class NoAnswerYet(LocalBackend):
    """A local backend whose `get_config` gets no answer for its first `fails` calls."""

    def __init__(self, fails: int) -> None:
        super().__init__(MemoryStore())
        self.fails = fails

    async def get_config(self) -> bytes:
        if self.fails:
            self.fails -= 1
            raise Unreachable("get config: connection refused by 127.0.0.1:1")
        return b"{}"


async def test_no_answer_on_first_contact_fails_at_once_with_its_cause() -> None:
    b = retrying(NoAnswerYet(fails=1))
    with pytest.raises(Unreachable, match="connection refused"):
        await b.get_config()
    assert b.retries == 0 and not b.established


async def test_no_answer_after_the_first_exchange_is_an_outage_and_retried() -> None:
    inner = NoAnswerYet(fails=0)
    b = retrying(inner)
    assert await b.get_config() == b"{}" and b.established
    inner.fails = 3  # the server restarts
    assert await b.get_config() == b"{}"
    assert b.retries == 3


async def test_retry_for_zero_fails_an_established_backend_at_once() -> None:
    store = FaultyStore(MemoryStore(), [Fault("get", times=-1)])
    clock = FakeTime()
    b = RetryingBackend(LocalBackend(store), deadline=0, clock=clock)
    b.established = True
    with pytest.raises(TransientError):
        await b.get_config()
    assert clock.sleeps == []


def test_durations_read_seconds_minutes_and_hours() -> None:
    assert [parse_duration(t) for t in ("0", "45", "30s", "5m", "2h", "1.5m")] == [
        0,
        45,
        30,
        300,
        7200,
        90,
    ]
    for bad in ("", "m", "-1s", "5d", "nan", "soon"):
        with pytest.raises(UsageError, match="duration"):
            parse_duration(bad)
