"""The one multi-site backend's two rules (docs/design.md §17), on two in-process chunk servers:
an object the site in use lost, holds damaged or fails with a 5xx is read from the other site
without leaving the site in use (and without the site's retries), while listings, and so a
prune's mark, come only from the site in use, never from a peer that lags; read-only (dicom-serve,
§13), listings fall back too and nothing but an audit event is written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.backup import Backup
from client.check import check
from client.prune import prune
from client.repository import Repository
from client.restore import Restorer
from engine.clock import SimulatedClock
from engine.errors import ObjectNotFound, PermissionDenied
from engine.events import event_name
from engine.failover import FailoverBackend, ReadOnly
from engine.ids import PackId, SnapshotId
from engine.prune_plan import MaxUnused
from engine.remote import RemoteBackend
from engine.repoconfig import init_repository
from engine.retry import RetryingBackend, with_retries
from server.index import ServerIndex
from server.state import INDEX
from tests.helpers import PASSPHRASE, cheap_kdf, tree_state, write_pattern_file
from tests.server.monitorkit import REPO, Site, flip_byte, pack_files, start_site


@pytest.fixture
async def sites(tmp_path: Path) -> AsyncIterator[tuple[Site, Site]]:
    """The practice's primary and a peer, each with the repository's tokens of its own."""
    a = await start_site(tmp_path, "site-a")
    b = await start_site(tmp_path, "site-b")
    a.add_repo()
    b.add_repo()
    direct = RemoteBackend(f"{a.url}/{REPO}", a.tokens[REPO]["backup"])
    await init_repository(direct, PASSPHRASE, cheap_kdf())
    await direct.close()
    yield a, b
    await a.server.close()
    await b.server.close()


def both(a: Site, b: Site, role: str) -> FailoverBackend:
    """A client configured with both sites, the primary first (no retries: one try per site)."""
    return FailoverBackend([
        RemoteBackend(f"{site.url}/{REPO}", site.tokens[REPO][role]) for site in (a, b)
    ])  # fmt: skip


def tree(root: Path, seed: int) -> Path:
    root.mkdir(parents=True)
    for i in range(3):
        write_pattern_file(root / f"f{i}.bin", 150_000 + i, seed=seed * 10 + i, random_every=1)
    return root


async def backup(repo: Repository, folder: Path) -> SnapshotId:
    summary = await Backup(repo, host="pc", workers=1).run([str(folder)])
    assert not summary.errors, summary.errors
    return SnapshotId.parse(summary.snapshot)


async def copy_repository(src: Site, dst: Site) -> None:
    """What replication had carried to the peer by now; afterwards the peer lags."""
    s = RemoteBackend(f"{src.url}/{REPO}", src.tokens[REPO]["backup"])
    d = RemoteBackend(f"{dst.url}/{REPO}", dst.tokens[REPO]["backup"])
    try:
        for name in await s.list_keys():  # keys first: then the config, as at init
            await d.put_key(name, await s.get_key(name))
        await d.put_config(await s.get_config())
        async for pack_id in s.list_packs():
            await d.put_pack(pack_id, await s.get_pack(pack_id))
        for sid in await s.list_snapshots():
            await d.commit(await s.get_snapshot(sid))
    finally:
        await s.close()
        await d.close()


async def restored(
    repo: Repository, sid: SnapshotId, source: Path, target: Path
) -> dict[str, tuple[object, ...]]:
    summary = await Restorer(repo, target).run(sid)
    assert not summary.errors, summary.errors
    return tree_state(target / str(source).lstrip("/"))


def snapshots(index: ServerIndex) -> set[SnapshotId]:
    return {sid for sid, _ in index.snapshots(REPO)}


async def test_packs_the_primary_lost_are_restored_and_checked_from_the_peer(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, b = sites
    first = await Repository.open(both(a, b, "backup"), PASSPHRASE, tmp_path / "pc")
    try:
        source = tree(tmp_path / "src", 1)
        sid = await backup(first, source)
    finally:
        await first.close()
    await copy_repository(a, b)
    for pack in pack_files(a):  # the primary lost every pack file; its index still lists them
        pack.unlink()

    backend = both(a, b, "backup")
    repo = await Repository.open(backend, PASSPHRASE, tmp_path / "fresh")
    try:
        report = await check(repo, read_data=True)
        # Safe (the peer served every pack), but the primary is damaged: one problem a pack.
        lost = {PackId.parse(p.name).hex() for p in pack_files(b)}
        assert {d["object"] for d in report.sites_damaged} == {f"pack {h}" for h in lost}
        assert len(report.problems) == len(lost) and report.packs > 0, report.problems
        assert await restored(repo, sid, source, tmp_path / "out") == tree_state(source)
        assert backend.served_elsewhere > 0
        assert backend.location == f"{a.url}/{REPO}"  # the primary is still the site in use
        second = await backup(repo, tree(tmp_path / "src2", 2))
        assert second in snapshots(a.app[INDEX]) and second not in snapshots(b.app[INDEX])
    finally:
        await repo.close()


async def test_a_chunk_that_rotted_at_the_primary_is_read_from_the_peer(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    """A flipped byte in a data chunk of the primary's pack: the range read arrives, the
    client's authentication of the chunk fails, and the same range is read at the peer."""
    a, b = sites
    backend = both(a, b, "backup")
    repo = await Repository.open(backend, PASSPHRASE, tmp_path / "pc")
    try:
        source = tree(tmp_path / "src", 3)
        sid = await backup(repo, source)
        await copy_repository(a, b)
        for pack in pack_files(a):
            flip_byte(pack, 100)  # inside the pack's first blob
        assert await restored(repo, sid, source, tmp_path / "out") == tree_state(source)
        report = await check(repo, read_data=True)  # safe, but the primary needs repair
        assert {d["site"] for d in report.sites_damaged} == {f"{a.url}/{REPO}"}
        assert report.problems and all("data is safe" in p for p in report.problems)
        assert backend.served_elsewhere > 0 and backend.location == f"{a.url}/{REPO}"
    finally:
        await repo.close()


async def test_a_pack_the_primary_fails_with_a_5xx_is_read_from_the_peer_without_retries(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    """The primary answers 5xx for a pack (its file is unreadable: here a folder in its place):
    the peer serves it at once, not after the primary's retry grace (an hour here, on an
    injected clock: a retry would show in `retries` and the clock, not in wall time)."""
    a, b = sites
    clock = SimulatedClock(1_900_000_000.0)
    start = clock.monotonic()
    backend = FailoverBackend([
        with_retries(RemoteBackend(f"{site.url}/{REPO}", site.tokens[REPO]["backup"]),
                     deadline=3600.0, clock=clock)
        for site in (a, b)
    ])  # fmt: skip
    repo = await Repository.open(backend, PASSPHRASE, tmp_path / "pc")
    try:
        source = tree(tmp_path / "src", 4)
        sid = await backup(repo, source)
        await copy_repository(a, b)
        for pack in pack_files(a):
            pack.unlink()
            pack.mkdir()
        assert await restored(repo, sid, source, tmp_path / "out") == tree_state(source)
        primary = backend.sites[0]
        assert isinstance(primary, RetryingBackend) and primary.retries == 0
        assert clock.monotonic() == start  # no retry slept
        assert backend.served_elsewhere > 0 and backend.location == f"{a.url}/{REPO}"
    finally:
        await repo.close()


async def test_a_prune_lists_at_the_site_in_use_never_at_a_lagging_peer(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    """The peer lags (it holds only the first snapshot) and has served the admin's reads of a
    pack the primary could not read for a while: the prune still lists the primary's snapshots,
    so the second snapshot's packs stay. Listed at the peer, the forgotten first snapshot would
    be the live one and the second's packs would be scheduled for deletion."""
    a, b = sites
    pc = await Repository.open(both(a, b, "backup"), PASSPHRASE, tmp_path / "pc")
    try:
        old = await backup(pc, tree(tmp_path / "old", 1))
        old_packs = pack_files(a)
        await copy_repository(a, b)  # the peer's last news
        keep_source = tree(tmp_path / "new", 2)
        keep = await backup(pc, keep_source)
    finally:
        await pc.close()
    unreadable = old_packs[0]
    aside = unreadable.rename(tmp_path / "aside")  # an old pack the primary cannot read now

    admin_backend = both(a, b, "admin")
    admin = await Repository.open(admin_backend, PASSPHRASE, tmp_path / "admin")
    try:
        await admin.sync_index()
        assert admin_backend.served_elsewhere > 0  # that pack's manifest, from the peer
        aside.rename(unreadable)  # back again; the server deletes only what it can move
        await admin_backend.forget([old])
        result = await prune(admin, max_unused=MaxUnused(0.0), holder="admin")
        assert sorted(result.scheduled) == sorted(PackId.parse(p.name).hex() for p in old_packs)
    finally:
        await admin.close()

    fresh = await Repository.open(both(a, b, "restore"), PASSPHRASE, tmp_path / "fresh")
    try:
        assert {s for s, _, _ in await fresh.snapshots()} == {keep}
        state = await restored(fresh, keep, keep_source, tmp_path / "out")
        assert state == tree_state(keep_source)
    finally:
        await fresh.close()


async def test_read_only_sites_refuse_every_write_but_an_audit_event(
    sites: tuple[Site, Site],
) -> None:
    a, b = sites
    sites = [RemoteBackend(f"{site.url}/{REPO}", site.tokens[REPO]["backup"]) for site in (a, b)]
    backend = FailoverBackend(sites, read_only=True)
    try:
        assert not backend.knows_chunks
        for write in (
            backend.put_config(b"x"),
            backend.put_key("k", b"x"),
            backend.commit(b"x"),
            backend.forget([]),
            backend.heartbeat({}),
            backend.put_pack(PackId(bytes(32)), b"x"),
        ):
            with pytest.raises(ReadOnly):
                await write
        sealed = b"an audit event, sealed by the client"
        await backend.put_event(event_name(sealed), sealed)
        assert await backend.list_events() == [event_name(sealed)]
        with pytest.raises(ObjectNotFound):
            await backend.get_event(event_name(b"never written"))
    finally:
        await backend.close()


async def test_a_listing_the_site_in_use_fails_is_asked_elsewhere_only_when_read_only(
    sites: tuple[Site, Site],
) -> None:
    """The site in use answers, but refuses (here: a token it does not know): its config is
    read at the peer, its snapshot list is not — except for a read-only reader, which never
    prunes."""
    a, b = sites
    await copy_repository(a, b)
    token = b.tokens[REPO]["restore"]

    def sites_for(read_only: bool) -> FailoverBackend:
        urls = (f"{a.url}/{REPO}", f"{b.url}/{REPO}")
        return FailoverBackend([RemoteBackend(u, token) for u in urls], read_only=read_only)

    for read_only in (False, True):
        backend = sites_for(read_only)
        try:
            assert await backend.get_config() == await backend.sites[1].get_config()
            if read_only:
                assert await backend.list_snapshots() == []
            else:
                with pytest.raises(PermissionDenied):
                    await backend.list_snapshots()
            assert backend.location == f"{a.url}/{REPO}"
        finally:
            await backend.close()
