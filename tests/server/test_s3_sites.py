"""Two sites whose repositories live in a real SeaweedFS (each its own bucket prefix): site-a
replicates to site-b; a pack that rots in site-a's bucket is found by scrub with ranged reads
(nothing copied to local disk), quarantined in the bucket and healed from site-b; and
`reindex --store` rebuilds a new node's index from the bucket."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import obstore
import pytest

from benchmarks.serverkit import cli, server_env
from client.check import check
from engine.store.s3 import S3Store
from server.state import REPOS, SCRUB
from tests.s3kit import SeaweedFS, s3_settings
from tests.server.monitorkit import (
    REPO,
    Site,
    backup,
    make_tree,
    practice,
    start_site,
    wait_for,
)


@pytest.fixture
async def s3_sites(seaweed: SeaweedFS, tmp_path: Path) -> AsyncIterator[tuple[Site, Site]]:
    run = secrets.token_hex(6)
    b = await start_site(tmp_path, "site-b", store=s3_settings(seaweed, f"b-{run}"))
    peer = {"url": b.url, "token": b.replica_token("site-a"), "name": "site-b"}
    a = await start_site(tmp_path, "site-a", [peer], store=s3_settings(seaweed, f"a-{run}"))
    a.add_repo()
    yield a, b
    await a.server.close()
    await b.server.close()


async def _packs(site: Site) -> dict[str, bytes]:
    store = site.app[REPOS].get(REPO).store
    return {name: await store.get(name) async for name in store.list("packs")}


async def test_replication_and_scrub_healing_between_s3_backed_sites(
    s3_sites: tuple[Site, Site], seaweed: SeaweedFS, tmp_path: Path
) -> None:
    a, b = s3_sites
    async with practice(a, tmp_path / "cache") as repo:
        await backup(repo, make_tree(tmp_path, files=6, size=1_500_000))
        await wait_for(a.settled, what="replication to site-b")
        good = await _packs(a)
        assert good and await _packs(b) == good  # site-b's bucket holds the same packs
        victim = sorted(good)[0]
        store = a.app[REPOS].get(REPO).store
        assert isinstance(store, S3Store)
        rotten = bytearray(good[victim])
        rotten[100] ^= 0xFF
        await obstore.put_async(store.bucket, store._key(victim), bytes(rotten))  # bit rot

        report = await a.app[SCRUB].run_pass()
        assert [bad.healed_from for bad in report.bad] == ["site-b"]
        assert await store.get(victim) == good[victim]
        quarantine = a.app[REPOS].get(REPO).quarantine
        kept = [n async for n in quarantine.list() if not n.startswith("log/")]
        assert len(kept) == 1 and await quarantine.get(kept[0]) == bytes(rotten)
        assert not (a.config.data_dir / "repos").exists()  # ranged reads, no local copy
        assert not (a.config.data_dir / "quarantine").exists()
        assert (await check(repo, read_data=True)).problems == []

    settings = b.config.store
    assert settings is not None
    fresh = tmp_path / "fresh-node"
    done = cli(
        "reindex", "--data", str(fresh), "--json",
        "--store", f"s3://{settings.bucket}/{settings.prefix}", env=server_env(seaweed.env),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rebuilt = json.loads(done.stdout)
    assert (rebuilt["repositories"], rebuilt["packs"], rebuilt["bad"]) == (1, len(good), 0)
    assert rebuilt["snapshots"] == 1
