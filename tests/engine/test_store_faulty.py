"""FaultyStore: the fault-injecting wrapper the crash and corruption tests rely on."""

from __future__ import annotations

import pytest

from engine.errors import ObjectNotFound, PermissionDenied, TransientError
from engine.store.faulty import Fault, FaultyStore
from engine.store.memory import MemoryStore


async def test_fault_raises_its_error_the_given_number_of_times() -> None:
    store = FaultyStore(MemoryStore(), [Fault("put", times=2)])
    for _ in range(2):
        with pytest.raises(TransientError):
            await store.put("a", b"x")
    await store.put("a", b"x")
    assert await store.get("a") == b"x"


async def test_fault_matches_only_its_operation_and_names() -> None:
    fault = Fault("get", match=lambda n: n.startswith("packs/"), times=-1, error=PermissionDenied)
    store = FaultyStore(MemoryStore(), [fault])
    await store.put("packs/aa/p", b"data")
    await store.put("config", b"cfg")
    assert await store.get("config") == b"cfg"
    assert await store.size("packs/aa/p") == 4
    for _ in range(3):
        with pytest.raises(PermissionDenied):
            await store.get("packs/aa/p")


async def test_wildcard_fault_applies_to_every_operation() -> None:
    store = FaultyStore(MemoryStore(), [Fault("*", times=-1)])
    with pytest.raises(TransientError):
        await store.put("a", b"x")
    with pytest.raises(TransientError):
        [n async for n in store.list("packs")]
    with pytest.raises(TransientError):
        await store.delete("a")


async def test_corrupt_fault_flips_one_byte_of_what_is_read() -> None:
    faults = [Fault("get", corrupt=True), Fault("get_range", corrupt=True)]
    store = FaultyStore(MemoryStore(), faults)
    data = bytes(100)
    await store.put("obj", data)
    corrupted = await store.get("obj")
    assert len(corrupted) == len(data)
    assert sum(a != b for a, b in zip(corrupted, data, strict=True)) == 1
    assert await store.get("obj") == data  # times=1: the next read is clean
    assert await store.get_range("obj", 0, 10) != bytes(10)
    assert await store.get_range("obj", 0, 10) == bytes(10)


async def test_faulty_store_records_calls_and_passes_errors_through() -> None:
    store = FaultyStore(MemoryStore())
    with pytest.raises(ObjectNotFound):
        await store.get("missing")
    await store.put("x", b"1")
    assert store.calls == [("get", "missing"), ("put", "x")]
