"""A pack the chunk server's index still lists but whose file is gone (disk damage, an operator's
`rm`): prune drops a doomed one and completes, reads a repack source from the peer or stops with
nothing changed, and `check` names the damaged site while the peer keeps the data safe. Two real
chunk servers on loopback (tests/client/test_sites_read_fallback's kit), real LMDB, nothing mocked.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from secrets import token_hex

import pytest

from client.prune import PruneReport, prune
from client.repository import Repository
from client.stats import stats
from engine.errors import ObjectNotFound
from engine.ids import PackId, SnapshotId
from engine.pack import pack_name
from engine.prune_plan import MaxUnused
from engine.remote import RemoteBackend
from engine.repoconfig import init_repository
from server.state import INDEX, REPOS
from tests.client.test_sites_read_fallback import (
    backup,
    both,
    copy_repository,
    restored,
    sites,
    tree,
)
from tests.helpers import PASSPHRASE, cheap_kdf, tree_state, write_pattern_file
from tests.s3kit import SeaweedFS, s3_settings
from tests.server.monitorkit import REPO, Site, pack_files, start_site

__all__ = ["sites"]  # the two-site fixture, used by name


def one(site: Site, role: str) -> RemoteBackend:
    return RemoteBackend(f"{site.url}/{REPO}", site.tokens[REPO][role])


def ids(paths: list[Path]) -> list[str]:
    return sorted(PackId.parse(p.name).hex() for p in paths)


async def two_snapshots(site: Site, cache: Path, source: Path) -> tuple[SnapshotId, list[Path]]:
    """A first snapshot of `source`, then a second after one file went and one came: the
    first's packs hold the two files both snapshots share (live) and the one that went."""
    pc = await Repository.open(one(site, "backup"), PASSPHRASE, cache)
    try:
        old = await backup(pc, source)
        old_packs = pack_files(site)
        (source / "f0.bin").unlink()
        write_pattern_file(source / "f3.bin", 150_000, seed=99, random_every=1)
        await backup(pc, source)
    finally:
        await pc.close()
    return old, old_packs


async def pruned(
    backend: RemoteBackend | object, cache: Path, old: SnapshotId | None
) -> PruneReport:
    """Forget `old` (unless None: forgotten already), then prune with `--max-unused 0%`."""
    admin = await Repository.open(backend, PASSPHRASE, cache)  # type: ignore[arg-type]
    try:
        if old is not None:
            await admin.backend.forget([old])
        return await prune(admin, max_unused=MaxUnused(0.0), holder="admin")
    finally:
        await admin.close()


@pytest.mark.parametrize("admin_cache", ["pc", "fresh-admin"])
async def test_a_doomed_pack_the_server_lost_is_reported_absent_and_the_prune_completes(
    sites: tuple[Site, Site], tmp_path: Path, caplog: pytest.LogCaptureFixture, admin_cache: str
) -> None:
    """From the machine that backed up (its index knows the lost pack) and from a fresh one
    (whose index cannot read it: it is scheduled as lost, since no snapshot needs it)."""
    a, _ = sites
    pc = await Repository.open(one(a, "backup"), PASSPHRASE, tmp_path / "pc")
    try:
        old = await backup(pc, tree(tmp_path / "old", 1))
        old_packs = pack_files(a)
        keep_source = tree(tmp_path / "new", 2)
        keep = await backup(pc, keep_source)
    finally:
        await pc.close()
    lost = old_packs[0]
    lost.unlink()  # an operator's `rm`: the server's index still lists it
    lost_id = PackId.parse(lost.name)
    counting = await Repository.open(one(a, "admin"), PASSPHRASE, tmp_path / "stats")
    try:  # forgotten, the lost pack is dead: stats counts it nowhere and says so
        await counting.backend.forget([old])
        await stats(counting)
        assert [w for w in counting.warnings if lost_id.hex() in w]
    finally:
        await counting.close()

    with caplog.at_level(logging.WARNING, logger="server.handlers_deletion"):
        report = await pruned(one(a, "admin"), tmp_path / admin_cache, None)
    assert report.absent == [lost_id.hex()]
    assert sorted(report.scheduled + report.absent) == ids(old_packs)
    assert report.as_json()["packs_absent"] == [lost_id.hex()]
    assert any(lost_id.hex() in r.getMessage() for r in caplog.records)
    assert not a.app[INDEX].has_pack(REPO, lost_id)

    fresh = await Repository.open(one(a, "restore"), PASSPHRASE, tmp_path / "fresh")
    try:
        assert {s for s, _, _ in await fresh.snapshots()} == {keep}
        assert await restored(fresh, keep, keep_source, tmp_path / "out") == tree_state(keep_source)
    finally:
        await fresh.close()


async def test_on_a_bucket_a_doomed_pack_deleted_behind_the_servers_back_is_absent(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """The same on the shared S3 store path (`server.deletion_shared`): an object deleted
    from the bucket behind the server's back; the prune completes through that node."""
    a = await start_site(tmp_path, "site-a", store=s3_settings(seaweed, f"lost-{token_hex(6)}"))
    try:
        a.add_repo()
        await init_repository(one(a, "backup"), PASSPHRASE, cheap_kdf())
        pc = await Repository.open(one(a, "backup"), PASSPHRASE, tmp_path / "pc")
        try:
            old = await backup(pc, tree(tmp_path / "old", 5))
            old_packs = [row.pack_id for row in a.app[INDEX].packs(REPO)]
            keep_source = tree(tmp_path / "new", 6)
            keep = await backup(pc, keep_source)
        finally:
            await pc.close()
        lost_id = old_packs[0]
        await a.app[REPOS].get(REPO).store.delete(pack_name(lost_id))

        report = await pruned(one(a, "admin"), tmp_path / "pc", old)
        assert report.absent == [lost_id.hex()]
        assert sorted(report.scheduled + report.absent) == sorted(p.hex() for p in old_packs)
        assert not a.app[INDEX].has_pack(REPO, lost_id)
        fresh = await Repository.open(one(a, "restore"), PASSPHRASE, tmp_path / "fresh")
        try:
            state = await restored(fresh, keep, keep_source, tmp_path / "out")
            assert state == tree_state(keep_source)
        finally:
            await fresh.close()
    finally:
        await a.server.close()


async def test_a_repack_source_the_primary_lost_is_read_from_the_peer(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, b = sites
    source = tree(tmp_path / "src", 3)
    old, old_packs = await two_snapshots(a, tmp_path / "pc", source)
    await copy_repository(a, b)
    for pack in old_packs:
        pack.unlink()

    backend = both(a, b, "admin")
    report = await pruned(backend, tmp_path / "pc", old)
    assert report.plan.repack and report.packs_written > 0
    assert sorted(report.absent) == ids(old_packs)  # gone at the primary: dropped there
    assert backend.served_elsewhere > 0

    fresh = await Repository.open(one(a, "restore"), PASSPHRASE, tmp_path / "fresh")
    try:  # the live chunks are in the primary's new packs: no peer needed to restore
        (keep,) = [s for s, _, _ in await fresh.snapshots()]
        assert await restored(fresh, keep, source, tmp_path / "out") == tree_state(source)
    finally:
        await fresh.close()


async def test_without_a_peer_a_lost_repack_source_stops_the_prune_with_nothing_changed(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, _ = sites
    old, old_packs = await two_snapshots(a, tmp_path / "src-pc", tree(tmp_path / "src", 4))
    aside = tmp_path / "aside"
    aside.mkdir()
    for pack in old_packs:
        shutil.move(pack, aside / pack.name)
    before = {p.name for p in pack_files(a)}

    with pytest.raises(ObjectNotFound) as e:
        await pruned(one(a, "admin"), tmp_path / "src-pc", old)
    assert e.value.exit_code == 14
    assert "nothing was pruned" in str(e.value)
    assert any(PackId.parse(p.name).hex() in str(e.value) for p in old_packs)
    assert {p.name for p in pack_files(a)} == before
    assert all(a.app[INDEX].has_pack(REPO, PackId.parse(p.name)) for p in old_packs)
    admin = one(a, "admin")
    try:
        assert [d["kind"] for d in await admin.pending_deletions()] == ["snapshot"]
    finally:
        await admin.close()
