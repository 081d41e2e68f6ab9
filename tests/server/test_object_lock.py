"""S3 Object Lock retention (server.objectlock, engine.store.s3, server.deletion's purge;
docs/design.md §14 "Object Lock") against the session's real SeaweedFS, in a bucket created with
Object Lock: what a backup stores is COMPLIANCE-locked before the server acknowledges it and the
provider's own credentials cannot delete it; the purge destroys a scheduled object only once its
lock has passed, keeping its row until then; live locks are extended, scheduled ones are not;
and `[object_lock]` on a bucket without Object Lock stops the server (exit 14).

The server's clock is a SimulatedClock set about `days` in the past, so the locks it puts end
seconds after the real now (S3 compares with its own clock) and nothing waits for days. The
schedules are made through `server.deletion` directly: forget and prune refuse a repository on
a store shared by several nodes (§14), which every S3 store is.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from benchmarks.serverkit import cli, server_env
from client.cli_forget import pending_line
from engine.clock import SimulatedClock
from engine.errors import UsageError
from engine.ids import PackId, SnapshotId
from engine.pack import pack_name
from engine.remote import RemoteBackend
from engine.store.s3 import open_api
from server.catchup import publish_tokens
from server.config import ObjectLockSettings, load_config
from server.deletion import DAY, Window, pack_entries
from server.handlers_deletion import purge_once
from server.objectlock import LockTable, extend_once, sweep_once
from server.quarantine import quarantine
from server.state import DELETIONS, INDEX, REPOS, SHARED_DELETIONS
from tests.client.test_remote import agent, random_tree
from tests.helpers import CHEAP_KDF_ARGS
from tests.s3kit import SeaweedFS, locked_bucket, s3_node, s3_settings
from tests.server.monitorkit import REPO, Site, backup, init_practice, make_tree, start_site

UNDELETE_DAYS = 14.0
LOCK_DAYS = UNDELETE_DAYS + 3  # the least `[object_lock]` accepts
WINDOW = Window(UNDELETE_DAYS * DAY)


async def _site(weed: SeaweedFS, tmp_path: Path, lead: float) -> tuple[Site, SimulatedClock]:
    """A server on a new Object Lock bucket whose locks, put now, end `lead` seconds from the
    real now."""
    clock = SimulatedClock(time.time() - LOCK_DAYS * DAY + lead)
    site = await start_site(
        tmp_path,
        "site-a",
        clock=clock,
        store=locked_bucket(weed, f"ol-{secrets.token_hex(4)}"),
        undelete_days=UNDELETE_DAYS,
        object_lock=ObjectLockSettings("COMPLIANCE", LOCK_DAYS),
    )
    site.add_repo()
    return site, clock


async def _backed_up(site: Site, tmp_path: Path, runs: int = 1) -> list[str]:
    repo = await init_practice(site, tmp_path / "cache")
    tree = make_tree(tmp_path, files=3, size=400_000)
    snapshots = []
    try:
        for run in range(runs):
            (tree / f"new{run}.bin").write_bytes(os.urandom(300_000))
            snapshots.append(await backup(repo, tree))
    finally:
        await repo.close()
    return snapshots


def _keys(site: Site) -> list[str]:
    settings = site.config.store
    assert settings is not None
    pages = _api(site).get_paginator("list_objects_v2")
    prefix = f"{settings.prefix}/repos/{REPO}/"
    return [o["Key"] for p in pages.paginate(Bucket=settings.bucket, Prefix=prefix)
            for o in p.get("Contents", [])]  # fmt: skip


def _api(site: Site) -> Any:
    """The provider's own client on the bucket (its credentials, not the server's code)."""
    assert site.config.store is not None
    return open_api(site.config.store)


def _retention(site: Site, key: str) -> tuple[str, float] | None:
    assert site.config.store is not None
    try:
        doc = _api(site).get_object_retention(Bucket=site.config.store.bucket, Key=key)
    except ClientError:
        return None
    return doc["Retention"]["Mode"], doc["Retention"]["RetainUntilDate"].timestamp()


def _versions(site: Site, key: str) -> list[tuple[str, bool]]:
    assert site.config.store is not None
    page = _api(site).list_object_versions(Bucket=site.config.store.bucket, Prefix=key)
    found = [(v["VersionId"], False) for v in page.get("Versions", []) if v["Key"] == key]
    return found + [(m["VersionId"], True) for m in page.get("DeleteMarkers", [])
                    if m["Key"] == key]  # fmt: skip


def _key(site: Site, name: str) -> str:
    assert site.config.store is not None
    return f"{site.config.store.prefix}/repos/{REPO}/{name}"


def _is_locked_kind(key: str) -> bool:
    name = key.split(f"/repos/{REPO}/", 1)[1]
    return name == "config" or name.startswith(("packs/", "snapshots/", "keys/"))


async def test_what_a_backup_stores_is_locked_before_it_is_acknowledged(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    site, clock = await _site(seaweed, tmp_path, lead=300.0)
    try:
        await _backed_up(site, tmp_path)
        keys = _keys(site)
        locked = [k for k in keys if _is_locked_kind(k)]
        kinds = {k.split(f"/repos/{REPO}/", 1)[1].split("/")[0] for k in locked}
        assert kinds == {"config", "keys", "packs", "snapshots"}
        for key in locked:
            mode, until = _retention(site, key) or ("none", 0.0)
            assert mode == "COMPLIANCE", key
            assert abs(until - (clock.time() + LOCK_DAYS * DAY)) < 60, key
        assert all(_retention(site, k) is None for k in keys if not _is_locked_kind(k))
        # The provider's own credentials cannot destroy them: every version delete is refused.
        store = site.config.store
        assert store is not None
        for key in [k for k in locked if "/packs/" in k or "/snapshots/" in k]:
            ((version, _),) = _versions(site, key)
            with pytest.raises(ClientError, match="AccessDenied"):
                _api(site).delete_object(Bucket=store.bucket, Key=key, VersionId=version)
    finally:
        await site.server.close()


async def _schedule_everything(site: Site, snapshot: str, now: float) -> list[PackId]:
    """What forget and prune would schedule: the snapshot and every pack of the repository,
    in the store too (an S3 store is shared: server.deletion_shared)."""
    deletions, repo = site.app[DELETIONS], site.app[REPOS].get(REPO)
    shared = site.app[SHARED_DELETIONS]
    await shared.schedule_snapshots(repo, [SnapshotId.parse(snapshot)], now, WINDOW, "test")
    packs = [row.pack_id for row in site.app[INDEX].packs(REPO)]
    for pack_id in packs:
        entries = await pack_entries(repo, pack_id)
        doc = deletions.schedule_pack(REPO, pack_id, entries, now, WINDOW, "test")
        await shared.publish(repo, [doc] if doc else [])
    return packs


async def _listed(site: Site) -> list[dict[str, Any]]:
    """`GET deletions` through the practice's admin token, as `dicomvault undelete` lists."""
    # Published as the node's task would, so its recheck after the clock's jump keeps it.
    await publish_tokens(site.app[INDEX], site.app[REPOS].site)
    backend = RemoteBackend(f"{site.url}/{REPO}", site.tokens[REPO]["admin"])
    try:
        return await backend.pending_deletions()
    finally:
        await backend.close()


async def test_the_purge_destroys_a_locked_object_only_after_its_date(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    site, clock = await _site(seaweed, tmp_path, lead=25.0)  # a slow backup fits
    try:
        (snapshot,) = await _backed_up(site, tmp_path)
        packs = await _schedule_everything(site, snapshot, clock.time())
        names = [f"snapshots/{snapshot}", *(pack_name(p) for p in packs)]
        clock.advance(WINDOW.seconds + 1)  # the undelete window has passed ...
        assert await purge_once(site.app) == []  # ... but the store still locks them
        pending = site.app[DELETIONS].pending(REPO)
        assert len(pending) == len(names)
        until = max(d["locked_until"] for d in pending)
        assert all(d["purge_after"] == d["locked_until"] for d in pending)
        for name in names:  # hidden, not destroyed: the locked version is still there
            assert [m for _, m in _versions(site, _key(site, name))].count(False) == 1
        # Past the window it is purged, only not destroyed yet: undelete brings nothing back,
        # and its listing says so, with the lock's date.
        listed = await _listed(site)
        assert {d["id"]: d["locked_until"] for d in listed} == {
            d["id"]: d["locked_until"] for d in pending
        }
        line = pending_line(next(d for d in listed if d["kind"] == "snapshot"))
        assert "can no longer be undone" in line and "Object Lock keeps it until" in line
        deletions = site.app[DELETIONS]
        assert deletions.undelete(REPO, None) == []
        assert await deletions.revive_all_packs(site.app[REPOS].get(REPO)) == 0
        assert len(deletions.pending(REPO)) == len(names)
        await asyncio.sleep(max(0.0, until - time.time()) + 1.5)
        clock.advance(until - clock.time() + 1)
        done = await purge_once(site.app)
        assert len(done) == len(names) and site.app[DELETIONS].pending(REPO) == []
        for name in names:  # destroyed for real: no version, no delete marker left
            assert _versions(site, _key(site, name)) == []
    finally:
        await site.server.close()


async def test_leftover_locked_versions_are_removed_once_their_lock_has_passed(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """A pack quarantined while locked, and one quarantined then uploaded again, leave their
    old locked versions (and markers) behind; the sweep removes them after their date only,
    and leaves live packs and the quarantined copies alone."""
    site, clock = await _site(seaweed, tmp_path, lead=40.0)  # three backups fit
    try:
        await _backed_up(site, tmp_path, runs=3)  # a pack each
        repo, index = site.app[REPOS].get(REPO), site.app[INDEX]
        gone, again, kept, *_ = [row.pack_id for row in index.packs(REPO)]
        data = await repo.store.get(pack_name(again))
        for pack_id in (gone, again):
            await quarantine(repo, index, pack_name(pack_id), by="t", reason="t", now=clock.time())
        await repo.store.put(pack_name(again), data)  # a client sends it again while hidden
        markers = {p: [m for _, m in _versions(site, _key(site, pack_name(p)))]
                   for p in (gone, again, kept)}  # fmt: skip
        assert markers == {gone: [False, True], again: [False, False, True], kept: [False]}
        quarantined = len(
            [
                n
                async for n in repo.quarantine.list("")
                if "-packs-" in n and not n.endswith(".json")
            ]
        )
        assert quarantined == 2

        early = await sweep_once(site.app)  # still locked: nothing goes
        assert (early.removed, early.locked) == (1, 2)  # only the noncurrent marker of `again`
        assert early.requests == 2 + 2 + 1  # a listing per prefix, a retention read, a DELETE
        assert len(_versions(site, _key(site, pack_name(gone)))) == 2

        await asyncio.sleep(max(0.0, clock.time() + LOCK_DAYS * DAY - time.time()) + 1.5)
        clock.advance(LOCK_DAYS * DAY + 2)
        done = await sweep_once(site.app)
        assert (done.removed, done.locked) == (3, 0)  # `gone`: data and marker; `again`: data
        assert done.requests == 2 + 2 + 3
        assert _versions(site, _key(site, pack_name(gone))) == []
        assert [m for _, m in _versions(site, _key(site, pack_name(again)))] == [False]
        assert [m for _, m in _versions(site, _key(site, pack_name(kept)))] == [False]
        assert (
            len(
                [
                    n
                    async for n in repo.quarantine.list("")
                    if "-packs-" in n and not n.endswith(".json")
                ]
            )
            == quarantined
        )
        assert await repo.store.get(pack_name(again)) == data
        assert (await sweep_once(site.app)).removed == 0
    finally:
        await site.server.close()


async def test_live_locks_are_extended_and_scheduled_ones_are_not(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    site, clock = await _site(seaweed, tmp_path, lead=120.0)
    try:
        first, second = await _backed_up(site, tmp_path, runs=2)
        deletions, repo = site.app[DELETIONS], site.app[REPOS].get(REPO)
        deletions.schedule_snapshots(REPO, [SnapshotId.parse(first)], clock.time(), WINDOW, "t")
        doomed = next(iter(site.app[INDEX].packs(REPO))).pack_id
        entries = await pack_entries(repo, doomed)
        deletions.schedule_pack(REPO, doomed, entries, clock.time(), WINDOW, "t")
        assert await extend_once(site.app) == 0  # all locked well ahead: not a request each
        table = LockTable(site.app[INDEX])
        assert table.until(REPO, f"snapshots/{second}") is not None  # recorded at the put
        before = {n: _retention(site, _key(site, n)) for n in (f"snapshots/{first}",
                  pack_name(doomed))}  # fmt: skip
        live = [pack_name(r.pack_id) for r in site.app[INDEX].packs(REPO)]
        # Someone with the provider's credentials hides a live pack behind a delete marker,
        # hoping its lock runs out unextended.
        bucket = site.config.store.bucket if site.config.store else ""
        _api(site).delete_object(Bucket=bucket, Key=_key(site, live[0]))
        ((hidden, _),) = [v for v in _versions(site, _key(site, live[0])) if not v[1]]
        clock.advance(2 * DAY)  # now every lock ends within the window + margin
        extended = await extend_once(site.app)
        assert extended == len(live) + 1 + 1 + 1  # the live packs, `second`, a key, the config
        for name in [*live[1:], f"snapshots/{second}", "config"]:
            mode, until = _retention(site, _key(site, name)) or ("none", 0.0)
            assert mode == "COMPLIANCE" and abs(until - (clock.time() + LOCK_DAYS * DAY)) < 60
            assert table.until(REPO, name) == pytest.approx(clock.time() + LOCK_DAYS * DAY)
        doc = _api(site).get_object_retention(Bucket=bucket, Key=_key(site, live[0]),
                                              VersionId=hidden)["Retention"]  # fmt: skip
        assert doc["RetainUntilDate"].timestamp() == pytest.approx(
            clock.time() + LOCK_DAYS * DAY, abs=60
        )  # the hidden version was extended all the same
        for name, held in before.items():  # scheduled: its lock still ends when it did
            assert _retention(site, _key(site, name)) == held
        assert await extend_once(site.app) == 0
    finally:
        await site.server.close()


def test_a_serve_process_locks_what_a_cli_backup_stores(seaweed: SeaweedFS, tmp_path: Path) -> None:
    """The same through the command lines: `dicomvault-server serve --config` with
    `[object_lock]` on an Object Lock bucket, and `dicomvault init` + `backup`."""
    settings = locked_bucket(seaweed, f"olp-{secrets.token_hex(4)}")
    config = tmp_path / "server.toml"
    config.write_text(f"undelete_days = 14\n[object_lock]\ndays = {LOCK_DAYS}\n")
    server = s3_node(
        tmp_path / "node", f"s3://{settings.bucket}/{settings.prefix}", seaweed, config
    )
    server.start()
    try:
        tokens = server.create_repo(REPO)
        pc = agent(tmp_path / "pc", f"{server.url}/{REPO}", tokens["backup"])
        pc.ok("init", *CHEAP_KDF_ARGS)
        pc.ok("backup", str(random_tree(tmp_path / "tree", [1.0, 2.5])))
        client = open_api(settings)
        listed = client.list_objects_v2(Bucket=settings.bucket, Prefix=f"{settings.prefix}/")
        keys = [o["Key"] for o in listed.get("Contents", [])]
        locked = [k for k in keys if "/repos/" in k and _is_locked_kind(k)]
        assert any("/packs/" in k for k in locked) and any("/snapshots/" in k for k in locked)
        for key in locked:
            doc = client.get_object_retention(Bucket=settings.bucket, Key=key)["Retention"]
            assert doc["Mode"] == "COMPLIANCE"
            days = (doc["RetainUntilDate"].timestamp() - time.time()) / DAY
            assert LOCK_DAYS - 0.01 < days <= LOCK_DAYS, key
    finally:
        server.stop()


def test_object_lock_on_a_bucket_without_it_stops_the_server(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    settings = s3_settings(seaweed, f"nolock-{secrets.token_hex(4)}")
    config = tmp_path / "server.toml"
    config.write_text('[object_lock]\nmode = "COMPLIANCE"\ndays = 30\n')
    done = cli(
        "serve", "--data", str(tmp_path / "data"), "--config", str(config),
        "--store", f"s3://{settings.bucket}/{settings.prefix}", env=server_env(seaweed.env),
    )  # fmt: skip
    assert done.returncode == 14, done.stderr
    assert "no Object Lock enabled" in done.stderr


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[object_lock]\ndays = 30\n", "needs an S3 store"),
        ('store = "s3://b/p"\n[object_lock]\ndays = 10\n', "object_lock.days must be at least"),
        ('store = "s3://b/p"\n[object_lock]\nmode = "LEGAL"\n', "object_lock.mode"),
        ('store = "s3://b/p"\n[object_lock]\nyears = 1\n', "unknown \\[object_lock\\]"),
        ('store = "s3://b/p"\n[object_lock]\ndays = "30"\n', "object_lock.days must be"),
    ],
)
def test_a_bad_object_lock_setting_is_a_usage_error_naming_it(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = tmp_path / "server.toml"
    path.write_text(toml)
    with pytest.raises(UsageError, match=message):
        load_config(path, data_dir=tmp_path / "data")
