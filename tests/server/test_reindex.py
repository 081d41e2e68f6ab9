"""The server index is a cache: reindex rebuilds exactly what intake and commits wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from engine.backend import LocalBackend
from engine.commit import snapshot_id_of, snapshot_name
from engine.pack import pack_name
from engine.protocol.errors import HashMismatch
from engine.store.local import LocalStore
from server.admin import create_repository
from server.app import make_app
from server.config import ServerConfig
from server.index import ServerIndex
from server.reindex import reindex
from server.repos import open_repositories
from server.state import INDEX, REPOS
from tests.server.conftest import REPO, Harness, MiB, make_commit, make_key_object, make_pack


async def test_reindex_rebuilds_identical_index(srv: Harness) -> None:
    backend = srv.backend()
    refs = []
    for _ in range(4):
        pack_id, data, ids = make_pack(chunks=20, size=300)
        await backend.put_pack(pack_id, data)
        refs += ids
    await backend.commit(make_commit(refs[:30], agent="pc-1"))
    await backend.commit(make_commit(refs[30:], agent="pc-2"))
    await backend.heartbeat({"agent": "pc-1"})
    index = srv.app[INDEX]
    before = index.dump(REPO)
    assert len(before["chunks"]) == 80 and len(before["snapshots"]) == 2

    index.drop_repo_cache(REPO)
    assert index.dump(REPO) == {"chunks": [], "packs": [], "snapshots": []}
    assert await backend.missing(refs) == set(refs)

    report = await reindex(srv.app[REPOS], index, verify=True)
    assert (report.packs, report.chunks, report.snapshots, report.bad) == (4, 80, 2, 0)
    assert index.dump(REPO) == before
    assert len(index.heartbeats(REPO)) == 1  # not a cache: kept


async def test_reindex_skips_stray_files(srv: Harness) -> None:
    pack_id, data, _ = make_pack()
    await srv.backend().put_pack(pack_id, data)
    stray = srv.config.repos_dir / REPO / "packs" / "zz"
    stray.mkdir()
    (stray / "not-a-pack").write_bytes(b"junk")
    report = await reindex(srv.app[REPOS], srv.app[INDEX])
    assert (report.packs, report.bad) == (1, 1)


async def test_server_repository_folder_is_a_local_repository(srv: Harness) -> None:
    backend = srv.backend()
    await backend.put_key("k0", make_key_object())
    await backend.put_config(b"cfg")
    pack_id, data, ids = make_pack()
    await backend.put_pack(pack_id, data)
    snapshot_id = await backend.commit(make_commit(ids))
    local = LocalBackend(LocalStore(srv.config.repos_dir / REPO))
    assert await local.get_config() == b"cfg"
    assert await local.list_keys() == ["k0"]
    assert [p async for p in local.list_packs()] == [pack_id]
    assert await local.get_pack(pack_id) == data
    assert await local.list_snapshots() == [snapshot_id]


async def test_start_finishes_the_intakes_a_kill_interrupted(tmp_path: Path) -> None:
    """A server killed after storing a pack or commit but before indexing it indexes it when it
    starts again; a journalled object that was never stored is forgotten."""
    config = ServerConfig(data_dir=tmp_path, index_map_size=64 * MiB)
    repos, index = open_repositories(config), ServerIndex(config.index_path, 64 * MiB)
    create_repository(repos, index, REPO, 0.0)
    repo = repos.get(REPO)
    pack_id, data, ids = make_pack()
    commit = make_commit(ids)
    never_stored, _, _ = make_pack()
    stored = {pack_name(pack_id): data, snapshot_name(snapshot_id_of(commit)): commit}
    for name in (*stored, pack_name(never_stored)):
        index.begin_intake(REPO, name)
    for name, body in stored.items():  # the kill comes after the store, before the index
        await repo.store.put(name, body)
    index.close()

    server = TestServer(make_app(config))
    await server.start_server()
    try:
        restarted = server.app[INDEX]
        assert restarted.has_pack(REPO, pack_id)
        assert [sid for sid, _ in restarted.snapshots(REPO)] == [snapshot_id_of(commit)]
        assert restarted.intakes() == []
        report_index = ServerIndex(tmp_path / "rebuilt", 64 * MiB)
        await reindex(server.app[REPOS], report_index)
        assert restarted.dump(REPO) == report_index.dump(REPO)
        report_index.close()
    finally:
        await server.close()


async def test_a_refused_upload_leaves_no_intake_behind(srv: Harness) -> None:
    pack_id, data, _ = make_pack()
    other, _, _ = make_pack()
    with pytest.raises(HashMismatch):
        await srv.backend().put_pack(other, data)
    await srv.backend().put_pack(pack_id, data)
    assert srv.app[INDEX].intakes() == []
