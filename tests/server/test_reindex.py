"""The server index is a cache: reindex rebuilds exactly what intake and commits wrote."""

from __future__ import annotations

from engine.backend import LocalBackend
from engine.store.local import LocalStore
from server.reindex import reindex
from server.state import INDEX, REPOS
from tests.server.conftest import REPO, Harness, make_commit, make_key_object, make_pack


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
