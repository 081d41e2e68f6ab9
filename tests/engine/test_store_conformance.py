"""The `Store` contract (engine/store/base.py), one suite run against every backend."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from engine.clock import SimulatedClock
from engine.errors import IntegrityError, InvalidName, ObjectNotFound, StoreError
from engine.store.base import ObjectStat, Staged, Store
from engine.store.faulty import FaultyStore
from engine.store.local import INCOMING, TMP_PREFIX, LocalStore
from engine.store.memory import MemoryStore
from engine.store.s3 import S3Root, S3Settings, open_api
from tests.s3kit import SeaweedFS, s3_settings

# Each backend makes a store in `place` (a fresh folder or key prefix per test and name).
BACKENDS: dict[str, Callable[[Path], Store]] = {
    "memory": lambda place: MemoryStore(),
    "local": lambda place: LocalStore(place),
    "faulty-no-faults": lambda place: FaultyStore(LocalStore(place)),
}


ALL = [*BACKENDS, "s3", "s3-versioned"]


@pytest.fixture(scope="session")
def versioned_bucket(seaweed: SeaweedFS) -> S3Settings:
    """A bucket that keeps versions, where deletes must destroy every version (3.1.2)."""
    settings = replace(s3_settings(seaweed), bucket=f"versioned-{secrets.token_hex(4)}")
    client = open_api(settings)
    client.create_bucket(Bucket=settings.bucket)
    status = {"Status": "Enabled"}
    client.put_bucket_versioning(Bucket=settings.bucket, VersioningConfiguration=status)
    return settings


def _make(request: pytest.FixtureRequest, place: Path) -> Store:
    if not request.param.startswith("s3"):
        return BACKENDS[request.param](place)
    # A real SeaweedFS (session fixture); each test gets fresh prefixes in the one bucket.
    weed: SeaweedFS = request.getfixturevalue("seaweed")
    settings = s3_settings(weed)
    if request.param == "s3-versioned":
        settings = request.getfixturevalue("versioned_bucket")
    root = S3Root(replace(settings, prefix=f"conf-{secrets.token_hex(6)}"))
    root.check()
    assert root.versioned == (request.param == "s3-versioned")
    return root.child(place.name)


@pytest.fixture(params=ALL)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = _make(request, tmp_path / "store")
    yield s
    await s.close()


@pytest.fixture(params=ALL)
async def two_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores of one backend, as a repository and its quarantine."""
    a, b = (_make(request, tmp_path / place) for place in ("store", "other"))
    yield a, b
    await a.close()
    await b.close()


async def names(store: Store, prefix: str = "") -> list[str]:
    return sorted([n async for n in store.list(prefix)])


async def test_put_then_get_returns_the_bytes(store: Store) -> None:
    await store.put("packs/ab/abcdef", b"hello")
    assert await store.get("packs/ab/abcdef") == b"hello"
    assert await store.size("packs/ab/abcdef") == 5
    assert await store.exists("packs/ab/abcdef")


async def test_put_accepts_memoryview_and_empty_objects(store: Store) -> None:
    await store.put("a", memoryview(b"view"))
    await store.put("empty", b"")
    assert await store.get("a") == b"view"
    assert await store.get("empty") == b""
    assert await store.size("empty") == 0


async def test_put_is_write_once_and_idempotent(store: Store) -> None:
    await store.put("config", b"first")
    await store.put("config", b"first")
    await store.put("config", b"second")  # write-once: a put to an existing name is a no-op
    assert await store.get("config") == b"first"
    assert await names(store) == ["config"]


async def test_get_and_size_of_missing_object_raise_object_not_found(store: Store) -> None:
    with pytest.raises(ObjectNotFound):
        await store.get("nothing")
    with pytest.raises(ObjectNotFound):
        await store.size("nothing")
    with pytest.raises(ObjectNotFound):
        await store.get_range("nothing", 0, 1)
    assert not await store.exists("nothing")


async def test_object_not_found_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError):
        await store.get("keys/none")


async def test_get_range_returns_the_requested_bytes(store: Store) -> None:
    await store.put("obj", bytes(range(100)))
    assert await store.get_range("obj", 10, 5) == bytes(range(10, 15))
    assert await store.get_range("obj", 0, 100) == bytes(range(100))


async def test_get_range_past_the_end_is_short_and_never_raises(store: Store) -> None:
    await store.put("obj", bytes(range(10)))
    assert await store.get_range("obj", 8, 100) == bytes([8, 9])
    assert await store.get_range("obj", 10, 5) == b""
    assert await store.get_range("obj", 50, 5) == b""


async def test_list_yields_full_names_under_a_prefix_folder(store: Store) -> None:
    for name in ("packs/00/p1", "packs/ff/p2", "snapshots/s1", "keys/k1", "config", "packsx"):
        await store.put(name, b"x")
    assert await names(store, "packs") == ["packs/00/p1", "packs/ff/p2"]
    assert await names(store, "snapshots") == ["snapshots/s1"]
    assert await names(store) == sorted(
        ["packs/00/p1", "packs/ff/p2", "snapshots/s1", "keys/k1", "config", "packsx"]
    )


async def test_list_of_a_missing_folder_yields_nothing(store: Store) -> None:
    assert await names(store, "snapshots") == []
    await store.put("keys/k", b"x")
    assert await names(store, "snapshots") == []


async def test_delete_removes_the_object(store: Store) -> None:
    await store.put("snapshots/s", b"x")
    await store.delete("snapshots/s")
    assert not await store.exists("snapshots/s")
    assert await names(store, "snapshots") == []
    await store.put("snapshots/s", b"again")  # the name is free again
    assert await store.get("snapshots/s") == b"again"


async def test_delete_of_missing_object_raises_object_not_found(store: Store) -> None:
    with pytest.raises(ObjectNotFound):
        await store.delete("nothing")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "/abs",
        "..",
        "../escape",
        "packs/../../escape",
        "packs/./x",
        ".hidden",
        "packs/.tmp-1234",
        "Upper",
        "packs/AB/x",
        "trailing/",
        "double//slash",
        "a/b/c/d/e",
        "space name",
        "back\\slash",
        "x" * 129,
    ],
)
async def test_invalid_names_are_refused_by_every_operation(store: Store, name: str) -> None:
    with pytest.raises(InvalidName):
        await store.put(name, b"x")
    with pytest.raises(InvalidName):
        await store.get(name)
    with pytest.raises(InvalidName):
        await store.size(name)
    with pytest.raises(InvalidName):
        await store.delete(name)


async def test_valid_names_include_hex_ids_and_suffixes(store: Store) -> None:
    deep = "packs/ab/" + "ab" * 32
    for name in (deep, "keys/0123abc", "a.json", "x-y_z", "a/b/c/d"):
        await store.put(name, name.encode())
        assert await store.get(name) == name.encode()


@pytest.mark.parametrize("prefix", ["..", "../..", "/", "/etc", "packs/../..", "Packs"])
async def test_list_refuses_a_prefix_outside_the_namespace(store: Store, prefix: str) -> None:
    with pytest.raises(InvalidName):
        await names(store, prefix)


# -- the operations the server needs: created-or-not, stat, streamed reads ------------------


async def test_put_says_whether_it_created_the_object(store: Store) -> None:
    assert await store.put("keys/k1", b"one") is True
    assert await store.put("keys/k1", b"one") is False
    assert await store.put("keys/k1", b"other") is False
    assert await store.get("keys/k1") == b"one"


async def test_stat_reports_size_and_the_given_mtime(store: Store) -> None:
    await store.put("snapshots/s1", b"record", mtime=1_700_000_000.0)
    await store.put("snapshots/s1", b"record", mtime=5.0)  # not created: mtime unchanged
    stat = await store.stat("snapshots/s1")
    assert (stat.size, stat.mtime) == (6, 1_700_000_000.0)
    with pytest.raises(ObjectNotFound):
        await store.stat("snapshots/none")


async def test_the_memory_store_stamps_objects_with_its_injected_clock() -> None:
    clock = SimulatedClock(1_800_000_000.0)
    store = MemoryStore(clock)
    await store.put("snapshots/s1", b"record")
    clock.advance(60)
    await store.put("snapshots/s2", b"record")
    assert (await store.stat("snapshots/s1")).mtime == 1_800_000_000.0
    assert (await store.stat("snapshots/s2")).mtime == 1_800_000_060.0


async def test_get_stream_yields_bounded_pieces_of_the_range(store: Store) -> None:
    from engine.store.base import PIECE

    data = bytes(range(256)) * (PIECE // 128 + 3)  # a little over two pieces
    await store.put("packs/aa/big", data)
    pieces = [p async for p in store.get_stream("packs/aa/big")]
    assert b"".join(pieces) == data
    assert len(pieces) == 3 and max(map(len, pieces)) <= PIECE
    ranged = b"".join([p async for p in store.get_stream("packs/aa/big", 1000, PIECE + 7)])
    assert ranged == data[1000 : 1000 + PIECE + 7]
    past = [p async for p in store.get_stream("packs/aa/big", len(data) - 2, 10)]
    assert b"".join(past) == data[-2:]


async def test_get_stream_of_a_missing_object_raises_before_yielding(store: Store) -> None:
    with pytest.raises(ObjectNotFound):
        async for _ in store.get_stream("packs/aa/none"):
            raise AssertionError("yielded a piece of a missing object")


# -- streamed puts: verified before visible --------------------------------------------------


async def _pieces(*parts: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for i, part in enumerate(parts):
        if i == fail_after:
            raise ConnectionResetError("the upload was cut")
        yield part


async def test_put_stream_stores_the_pieces_once(store: Store) -> None:
    assert await store.put_stream("packs/aa/p", _pieces(b"ab", b"", b"cde"), mtime=42.0)
    assert not await store.put_stream("packs/aa/p", _pieces(b"other"))
    assert await store.get("packs/aa/p") == b"abcde"
    assert await store.stat("packs/aa/p") == ObjectStat(5, 42.0)


async def test_put_stream_verifies_the_whole_object_before_it_is_visible(store: Store) -> None:
    seen: list[tuple[int, bytes, bool]] = []

    async def verify(staged: Staged) -> None:
        visible = await store.exists("packs/aa/p")
        seen.append((staged.size, await staged.read_range(3, 100), visible))

    await store.put_stream("packs/aa/p", _pieces(b"abc", b"defg"), verify)
    await store.put_stream("packs/aa/p", _pieces(b"abcdefg"), verify)  # exists: still verified
    assert seen == [(7, b"defg", False), (7, b"defg", True)]


async def test_a_refused_or_cut_stream_leaves_nothing_visible(store: Store) -> None:
    async def refuse(staged: Staged) -> None:
        raise IntegrityError("hashes to something else")

    with pytest.raises(IntegrityError):
        await store.put_stream("packs/aa/p", _pieces(b"abc"), refuse)
    with pytest.raises(ConnectionResetError):
        await store.put_stream("packs/aa/p", _pieces(b"abc", b"def", fail_after=1))
    assert await names(store) == []
    assert not await store.exists("packs/aa/p")


async def test_local_put_stream_leaves_no_staged_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.put_stream("packs/aa/p", _pieces(b"abc"))
    with pytest.raises(ConnectionResetError):
        await store.put_stream("packs/aa/q", _pieces(b"abc", b"def", fail_after=1))
    assert list((tmp_path / INCOMING).iterdir()) == []


async def test_local_put_stream_receives_the_next_piece_while_writing_one(
    tmp_path: Path,
) -> None:
    """The one worker thread is held until the second piece is asked for: a store that waited
    for each write before asking for the next piece would wait for the hold to time out."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    released, held = threading.Event(), []

    async def pieces() -> AsyncIterator[bytes]:
        hold = loop.run_in_executor(None, released.wait, 3.0)
        yield b"a" * 1000  # its write waits behind the hold
        released.set()
        yield b"b" * 1000
        held.append(await hold)

    store = LocalStore(tmp_path)
    assert await store.put_stream("packs/aa/p", pieces())
    assert held == [True]  # released by the request for the second piece, not by the timeout
    assert await store.get("packs/aa/p") == b"a" * 1000 + b"b" * 1000


async def test_local_put_stream_waits_for_its_last_write_when_the_stream_breaks(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(ConnectionResetError):
        await store.put_stream("packs/aa/q", _pieces(b"a" * 1000, b"b", fail_after=1))
    assert list((tmp_path / INCOMING).iterdir()) == []
    assert not await store.exists("packs/aa/q")


async def test_list_is_sorted_and_resumes_after_a_start_key(store: Store) -> None:
    for name in ["packs/bb/2", "packs/aa/1", "packs/aa/3", "snapshots/x", "config"]:
        await store.put(name, b"x")
    assert [n async for n in store.list("packs")] == ["packs/aa/1", "packs/aa/3", "packs/bb/2"]
    after = [n async for n in store.list("packs", start_after="packs/aa/3")]
    assert after == ["packs/bb/2"]
    assert [n async for n in store.list(start_after="packs/zz")] == ["snapshots/x"]


# -- moving between stores, sweeping staged uploads ------------------------------------------


async def test_move_takes_the_object_out_and_publishes_it_once(
    two_stores: tuple[Store, Store],
) -> None:
    src, dest = two_stores
    await src.put("packs/aa/p", b"rotten", mtime=7.0)
    await src.put("packs/aa/q", b"other")
    assert await src.move("packs/aa/p", dest, "moved-p")
    assert not await src.exists("packs/aa/p")
    assert await dest.get("moved-p") == b"rotten"
    assert (await dest.stat("moved-p")).mtime == 7.0  # a move keeps the object's time
    assert await names(src) == ["packs/aa/q"]
    await src.put("packs/aa/r", b"stamped", mtime=7.0)
    assert await src.move("packs/aa/r", dest, "moved-r", mtime=1_800_000_000.0)
    assert (await dest.stat("moved-r")).mtime == 1_800_000_000.0  # or takes the one given
    await dest.put("taken", b"x")
    assert not await src.move("packs/aa/q", dest, "taken")  # write-once there: source kept
    assert await src.get("packs/aa/q") == b"other" and await dest.get("taken") == b"x"
    with pytest.raises(ObjectNotFound):
        await src.move("packs/aa/p", dest, "again")
    assert not await dest.exists("again")


async def test_sweep_forgets_only_what_was_never_published(store: Store) -> None:
    await store.put("config", b"c")
    await store.put_stream("packs/aa/p", _pieces(b"abc"))
    await store.sweep()
    await store.sweep(cutoff=0.0)
    assert await names(store) == ["config", "packs/aa/p"]


async def test_the_local_sweep_removes_old_temp_files_in_staging_and_top_folders(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    await store.put("keys/k1", b"key")
    await store.put_stream("packs/aa/p", _pieces(b"abc"))
    left = [tmp_path / INCOMING / f"{TMP_PREFIX}a", tmp_path / "keys" / f"{TMP_PREFIX}b"]
    left.append(tmp_path / f"{TMP_PREFIX}c")
    for path in left:
        path.write_bytes(b"half an upload")
        os.utime(path, (1000.0, 1000.0))
    assert await store.sweep(cutoff=500.0) == 0  # younger than the cutoff: kept
    assert await store.sweep(cutoff=2000.0) == 3
    assert not any(p.exists() for p in left)
    assert await names(store) == ["keys/k1", "packs/aa/p"]
