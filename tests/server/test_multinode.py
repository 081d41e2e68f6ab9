"""Several chunk-server nodes on one SeaweedFS bucket, in process: each node's LMDB index is a
cache that catches up from the store (server.catchup). A token minted on one node works on the
others; a commit through node B may name chunks uploaded through node A; a missing-query on B
knows A's chunks; snapshots committed through A are listed by B; a fresh node serves a restore
and a `check --read-data` from the pack log, without reading the packs to index them."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from client.check import check
from client.restore import Restorer
from engine.ids import SnapshotId
from server.auth import hash_token
from server.catchup import PACKLOG
from server.state import CATCHUP, METRICS, REPOS, SCRUB
from tests.helpers import restored, tree_state
from tests.s3kit import SeaweedFS, s3_settings
from tests.server.conftest import make_commit, make_pack
from tests.server.monitorkit import (
    REPO,
    Site,
    backup,
    make_tree,
    open_practice,
    practice,
    start_site,
    wait_token,
)

NodeFactory = Callable[[str], Awaitable[Site]]


@pytest.fixture
async def node(seaweed: SeaweedFS, tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """Start nodes on one bucket prefix, each with its own DATA (its own index)."""
    settings = s3_settings(seaweed, f"multi-{secrets.token_hex(6)}")
    started: list[Site] = []

    async def start(name: str) -> Site:
        site = await start_site(tmp_path, name, store=settings, token_publish_interval=0.05)
        if started:
            site.tokens = started[0].tokens  # the same practice, through any node
        started.append(site)
        return site

    yield start
    for site in started:
        await site.server.close()


async def test_a_commit_through_b_may_name_chunks_uploaded_through_a(node: NodeFactory) -> None:
    a = await node("node-a")
    a.add_repo()
    b = await node("node-b")
    await wait_token(b)
    headers = {"Authorization": f"Bearer {a.tokens[REPO]['backup']}"}
    pack_id, data, chunks = make_pack()
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.put(f"{a.url}/v1/repos/{REPO}/packs/{pack_id.hex()}", data=data) as r:
            assert r.status in (200, 201), await r.text()
        async with http.post(f"{b.url}/v1/repos/{REPO}/missing", data=b"".join(chunks)) as r:
            assert await r.read() == b""  # B learned A's pack from the pack log
        async with http.post(f"{b.url}/v1/repos/{REPO}/snapshots", data=make_commit(chunks)) as r:
            assert r.status == 201, await r.text()
            sid = (await r.json())["snapshot"]
        async with http.get(f"{a.url}/v1/repos/{REPO}/snapshots") as r:
            assert [s["id"] for s in (await r.json())["snapshots"]] == [sid]  # A lists B's
        async with http.get(f"{b.url}/v1/repos/{REPO}/packs/{pack_id.hex()}") as r:
            assert r.status == 200 and await r.read() == data
        other, _, _ = make_pack()
        async with http.get(f"{b.url}/v1/repos/{REPO}/packs/{other.hex()}") as r:
            assert r.status == 404  # caught up, and still unknown: absent
    c = await node("node-c")  # scrub on a node that never served this repository
    report = await c.app[SCRUB].run_pass()
    assert (report.packs_checked, report.bad) == (1, [])


async def test_backups_through_two_nodes_dedup_and_a_fresh_node_restores(
    node: NodeFactory, tmp_path: Path
) -> None:
    a = await node("node-a")
    a.add_repo()
    b = await node("node-b")
    await wait_token(b)
    tree = make_tree(tmp_path, files=6, size=1_200_000)
    async with practice(a, tmp_path / "cache-a") as repo:
        first = await backup(repo, tree)
    # The same tree again from another machine through node B: B's index never saw these
    # chunks, yet it answers them present, so no pack crosses the wire again.
    received = b.app[METRICS].bytes_received
    repo = await open_practice(b, tmp_path / "cache-b")
    try:
        second = await backup(repo, tree)
    finally:
        await repo.close()
    assert b.app[METRICS].bytes_received - received < 100_000  # commit and metadata only
    fresh = await node("node-c")
    await wait_token(fresh, "restore")
    repo = await open_practice(fresh, tmp_path / "cache-c", role="restore")
    try:
        report = await check(repo, read_data=True)
        assert report.problems == []
        for sid, out in ((first, "out1"), (second, "out2")):
            await Restorer(repo, tmp_path / out).run(SnapshotId.parse(sid))
            assert tree_state(restored(tmp_path / out, tree)) == tree_state(tree)
    finally:
        await repo.close()
    # The fresh node learned every pack from the pack log (one small object per pack), not
    # by reading the packs.
    logged = [n async for n in a.app[REPOS].get(REPO).store.list(PACKLOG)]
    assert fresh.app[CATCHUP].total.packs == len(logged) > 0


async def test_a_token_revoked_through_one_node_stops_working_on_the_others(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    settings = s3_settings(seaweed, f"revoke-{secrets.token_hex(6)}")
    kw = {"store": settings, "token_publish_interval": 0.05, "token_recheck_interval": 0.2}
    a = await start_site(tmp_path, "node-a", **kw)
    b = await start_site(tmp_path, "node-b", **kw)
    try:
        a.add_repo()
        b.tokens = a.tokens
        await wait_token(b)
        digest = hash_token(a.tokens[REPO]["backup"])
        await b.app[REPOS].site.delete(f"tokens/{digest.hex()}")  # revoked (as replica.py does)
        await wait_token(b, "backup", status=401)  # node-b drops the revoked token
    finally:
        await a.server.close()
        await b.server.close()
