"""Conformance: `LocalBackend` and `RemoteBackend` honour the same `Backend` contract."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.backend import Backend, LocalBackend
from engine.commit import snapshot_id_of
from engine.errors import IntegrityError, ObjectNotFound, RepositoryNotFound
from engine.ids import PackId, SnapshotId
from engine.store.local import LocalStore
from tests.server.conftest import Harness, ServerFactory, make_commit, make_key_object, make_pack


@pytest.fixture(params=["local", "remote"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, make_server: ServerFactory
) -> AsyncIterator[Backend]:
    if request.param == "local":
        local = LocalBackend(LocalStore(tmp_path / "repo"), str(tmp_path / "repo"))
        yield local
        await local.close()
    else:
        srv: Harness = await make_server()
        yield srv.backend()


async def test_config_missing_then_written_once(backend: Backend) -> None:
    with pytest.raises(RepositoryNotFound):
        await backend.get_config()
    await backend.put_config(b'{"version":1}')
    await backend.put_config(b'{"version":1}')  # same bytes again: a no-op
    assert await backend.get_config() == b'{"version":1}'


async def test_key_objects_listed_and_read(backend: Backend) -> None:
    assert await backend.list_keys() == []
    k0, k1 = make_key_object(), make_key_object()
    await backend.put_key("k1", k1)
    await backend.put_key("k0", k0)
    assert await backend.list_keys() == ["k0", "k1"]
    assert await backend.get_key("k1") == k1
    with pytest.raises(ObjectNotFound):
        await backend.get_key("nope")


async def test_pack_round_trip_range_and_idempotent_put(backend: Backend) -> None:
    pack_id, data, _ = make_pack()
    assert not await backend.has_pack(pack_id)
    await backend.put_pack(pack_id, data)
    assert await backend.has_pack(pack_id)
    await backend.put_pack(pack_id, data)
    assert await backend.get_pack(pack_id) == data
    assert await backend.get_pack_range(pack_id, 10, 100) == data[10:110]
    assert await backend.get_pack_range(pack_id, len(data) - 5, 100) == data[-5:]
    assert await backend.get_pack_range(pack_id, len(data) + 10, 100) == b""
    assert [p async for p in backend.list_packs()] == [pack_id]
    assert await backend.get_pack_tail(pack_id, 24) == (len(data), data[-24:])
    assert await backend.get_pack_tail(pack_id, len(data) + 50) == (len(data), data)


async def test_pack_with_wrong_name_is_refused(backend: Backend) -> None:
    pack_id, data, _ = make_pack()
    wrong = PackId(bytes(32))
    with pytest.raises(IntegrityError):
        await backend.put_pack(wrong, data)
    with pytest.raises(ObjectNotFound):
        await backend.get_pack(wrong)
    assert [p async for p in backend.list_packs()] == []
    del pack_id


async def test_missing_is_authoritative_only_when_backend_knows_chunks(backend: Backend) -> None:
    pack_id, data, ids = make_pack()
    _, _, others = make_pack(chunks=3)
    await backend.put_pack(pack_id, data)
    answer = await backend.missing(ids + others)
    if backend.knows_chunks:
        assert answer == set(others)
    else:
        assert answer == set(ids + others)


async def test_commit_stores_record_under_its_hash(backend: Backend) -> None:
    pack_id, data, ids = make_pack()
    await backend.put_pack(pack_id, data)
    record = make_commit(ids)
    snapshot_id = await backend.commit(record)
    assert snapshot_id == snapshot_id_of(record)
    assert await backend.list_snapshots() == [snapshot_id]
    assert await backend.get_snapshot(snapshot_id) == record
    with pytest.raises(ObjectNotFound):
        await backend.get_snapshot(SnapshotId(bytes(32)))
