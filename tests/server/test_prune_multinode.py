"""Forget, prune and undelete on a repository two server nodes serve from one SeaweedFS bucket
(docs/design.md §14, several nodes), in process on one SimulatedClock: schedules, the prune
generation and lock live in the store, so what one node schedules leaves the other's listings
and index, a second prune through the other node is refused, catch-up does not index a
scheduled pack again, a commit cannot revive a pack another node's purge has claimed, and
the seeded interleavings of tests/server/test_prune_interleaving.py hold with each machine
backing up through its own node."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from client.repository import Repository
from engine.clock import SimulatedClock
from engine.ids import PackId
from engine.pack import pack_name
from engine.remote import RemoteBackend
from server.handlers_deletion import purge_once
from server.state import DELETIONS, REPOS, SHARED_DELETIONS
from tests.helpers import PASSPHRASE
from tests.s3kit import SeaweedFS, s3_settings
from tests.server.conftest import make_commit, make_pack
from tests.server.monitorkit import REPO, Site, init_practice, start_site, wait_token
from tests.server.test_prune_interleaving import _one_schedule

SCHEDULES = int(os.environ.get("PRUNE_MULTINODE_SCHEDULES", "100"))
DAY = 86_400.0

Nodes = Callable[..., Awaitable[list[Site]]]


@pytest.fixture
async def nodes(seaweed: SeaweedFS, tmp_path: Path) -> AsyncIterator[Nodes]:
    """Two nodes on a fresh bucket prefix, one SimulatedClock, the repository created on the
    first and its tokens accepted by the second."""
    started: list[Site] = []

    async def start(
        clock: SimulatedClock, names: tuple[str, ...] = ("node-a", "node-b")
    ) -> list[Site]:
        settings = s3_settings(seaweed, f"prune-{secrets.token_hex(6)}")
        root = tmp_path / f"nodes{len(started)}"
        pair = [
            await start_site(
                root,
                name,
                clock=clock,
                store=settings,
                purge_interval=3600.0,
                token_publish_interval=0.05,
            )
            for name in names
        ]
        started.extend(pair)
        pair[0].add_repo()
        for other in pair[1:]:
            other.tokens = pair[0].tokens
            await wait_token(other, "admin")
        return pair

    yield start
    for site in started:
        await site.server.close()


def _url(site: Site, path: str) -> str:
    return f"{site.url}/v1/repos/{REPO}/{path}"


def _auth(site: Site, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {site.tokens[REPO][role]}"}


async def _listed(http: aiohttp.ClientSession, site: Site) -> set[str]:
    async with http.get(_url(site, "snapshots"), headers=_auth(site, "restore")) as r:
        assert r.status == 200, await r.text()
        return {s["id"] for s in (await r.json())["snapshots"]}


async def _scheduled_through_a(
    http: aiohttp.ClientSession, a: Site, b: Site, pack_id: PackId, data: bytes
) -> None:
    """The pack stored through node A and indexed by node B (a HEAD there), then scheduled for
    deletion through A under prune lock holder "p" (the lock stays held)."""
    put = http.put(_url(a, f"packs/{pack_id.hex()}"), data=data, headers=_auth(a, "backup"))
    async with put as r:
        assert r.status in (200, 201)
    async with http.head(_url(b, f"packs/{pack_id.hex()}"), headers=_auth(b, "restore")) as r:
        assert r.status == 200  # B indexes it
    take = http.post(_url(a, "prune/lock"), json={"holder": "p"}, headers=_auth(a, "admin"))
    async with take as r:
        assert r.status == 200
    body = {"holder": "p", "packs": [pack_id.hex()]}
    async with http.post(_url(a, "prune/schedule"), json=body, headers=_auth(a, "admin")) as r:
        assert (await r.json())["scheduled"] == [pack_id.hex()]


async def test_a_snapshot_forgotten_through_one_node_leaves_both_listings_and_comes_back(
    nodes: Nodes,
) -> None:
    a, b = await nodes(SimulatedClock(1_900_000_000.0))
    pack_id, data, chunks = make_pack()
    async with aiohttp.ClientSession() as http:
        put = http.put(_url(a, f"packs/{pack_id.hex()}"), data=data, headers=_auth(a, "backup"))
        async with put as r:
            assert r.status in (200, 201), await r.text()
        commit = http.post(
            _url(a, "snapshots"), data=make_commit(chunks), headers=_auth(a, "backup")
        )
        async with commit as r:
            assert r.status == 201, await r.text()
            sid = (await r.json())["snapshot"]
        assert await _listed(http, b) == {sid}  # B caught up A's commit
        forget = http.post(_url(b, "forget"), json={"snapshots": [sid]}, headers=_auth(b, "admin"))
        async with forget as r:
            assert r.status == 200, await r.text()
        assert await _listed(http, a) == set() and await _listed(http, b) == set()
        async with http.get(_url(a, f"snapshots/{sid}"), headers=_auth(a, "restore")) as r:
            assert r.status == 404
        async with http.post(_url(a, "undelete"), json={}, headers=_auth(a, "admin")) as r:
            assert r.status == 200, await r.text()
        assert await _listed(http, a) == {sid} and await _listed(http, b) == {sid}


async def test_a_second_prune_through_the_other_node_is_refused(nodes: Nodes) -> None:
    a, b = await nodes(SimulatedClock(1_900_000_000.0))
    async with aiohttp.ClientSession() as http:
        take = http.post(_url(a, "prune/lock"), json={"holder": "one"}, headers=_auth(a, "admin"))
        async with take as r:
            assert r.status == 200, await r.text()
            first = await r.json()
        take = http.post(_url(b, "prune/lock"), json={"holder": "two"}, headers=_auth(b, "admin"))
        async with take as r:
            assert r.status == 409 and (await r.json())["code"] == "prune_locked"
        async with http.get(_url(b, "generation"), headers=_auth(b, "backup")) as r:
            seen = await r.json()
        assert seen["generation"] == first["generation"] and seen["prune"]["holder"] == "one"
        release = http.delete(_url(a, "prune/lock?holder=one"), headers=_auth(a, "admin"))
        async with release as r:
            assert r.status == 200
        take = http.post(_url(b, "prune/lock"), json={"holder": "two"}, headers=_auth(b, "admin"))
        async with take as r:
            assert r.status == 200, await r.text()


async def test_a_pack_scheduled_through_one_node_leaves_the_others_index_and_catch_up(
    nodes: Nodes,
) -> None:
    """B indexed the pack before A scheduled it; C, which never served the repository, would
    catch it up from the pack log. All answer its chunks missing and the pack absent; undelete
    through B brings it back everywhere."""
    clock = SimulatedClock(1_900_000_000.0)
    a, b, c = await nodes(clock, ("node-a", "node-b", "node-c"))
    pack_id, data, chunks = make_pack()
    async with aiohttp.ClientSession() as http:
        await _scheduled_through_a(http, a, b, pack_id, data)  # B indexed it first
        clock.advance(3.0)  # past the missing-query's freshness window
        for site in (a, b, c):
            missing = http.post(
                _url(site, "missing"), data=b"".join(chunks), headers=_auth(site, "backup")
            )
            async with missing as r:
                assert len(await r.read()) == 32 * len(chunks), site.config.site_name
            async with http.head(
                _url(site, f"packs/{pack_id.hex()}"), headers=_auth(site, "restore")
            ) as r:
                assert r.status == 404, site.config.site_name
        async with http.post(_url(b, "undelete"), json={}, headers=_auth(b, "admin")) as r:
            assert r.status == 200
        clock.advance(3.0)
        for site in (a, b, c):
            missing = http.post(
                _url(site, "missing"), data=b"".join(chunks), headers=_auth(site, "backup")
            )
            async with missing as r:
                assert await r.read() == b"", site.config.site_name


async def test_prune_on_two_nodes_never_loses_what_a_concurrent_backup_reuses(
    nodes: Nodes, tmp_path: Path
) -> None:
    """Machine a backs up through node A, machine b through node B, the admin forgets and
    prunes through either (seeded), concurrently; then the window passes, both nodes purge,
    and a fresh machine restores every snapshot through B with `check --read-data` clean."""
    for seed in range(SCHEDULES):
        clock = SimulatedClock(1_900_000_000.0)
        a, b = await nodes(clock)
        repo = await init_practice(a, tmp_path / f"init{seed}")
        await repo.close()
        admin_node = a if seed % 2 else b
        through = {"cache-a": a, "cache-b": b, "cache-admin": admin_node, "cache-fresh": b}

        async def open_repo(
            cache: Path, role: str, through: dict[str, Site] = through
        ) -> Repository:
            site = through[cache.name]
            backend = RemoteBackend(f"{site.url}/{REPO}", site.tokens[REPO][role])
            return await Repository.open(backend, PASSPHRASE, cache)

        async def purge(pair: list[Site] = [a, b], clock: SimulatedClock = clock) -> object:  # noqa: B006
            clock.advance(15 * DAY)
            return [await purge_once(site.app) for site in pair]

        root = tmp_path / f"s{seed}"
        await _one_schedule(open_repo, purge, root, seed)
        shutil.rmtree(root)
        for site in (a, b):
            await site.server.close()


async def test_a_commit_reviving_a_pack_a_purge_has_claimed_is_told_its_chunks_are_missing(
    nodes: Nodes,
) -> None:
    """Node A's purge has claimed pack P (its window is over) and is about to destroy it when
    a commit through B names P's chunks: B withdraws P's schedule, sees the claim, and refuses
    the commit (409 missing_chunks: the client uploads them again) instead of accepting a
    snapshot whose chunks A then destroys."""
    clock = SimulatedClock(1_900_000_000.0)
    a, b = await nodes(clock)
    pack_id, data, chunks = make_pack()
    async with aiohttp.ClientSession() as http:
        # B indexed P first: its sync will condemn P's chunks, not drop them
        await _scheduled_through_a(http, a, b, pack_id, data)
        async with http.delete(_url(a, "prune/lock?holder=p"), headers=_auth(a, "admin")) as r:
            assert r.status == 200
        clock.advance(15 * DAY)
        repo = a.app[REPOS].get(REPO)
        (doc,) = a.app[DELETIONS].pending(REPO)
        assert await a.app[SHARED_DELETIONS].still_scheduled(repo, doc)  # A's purge claims P
        commit = make_commit(chunks)
        url = _url(b, "snapshots?full=1")
        async with http.post(url, data=commit, headers=_auth(b, "backup")) as r:
            assert r.status == 409 and (await r.json())["code"] == "missing_chunks"
        # The rest of A's purge, past its last look: P is destroyed, and no snapshot names it.
        await a.app[DELETIONS].purge_due(a.app[REPOS], clock.time())
        assert not await repo.store.exists(pack_name(pack_id))
        assert await _listed(http, b) == set()
        missing = http.post(_url(b, "missing"), data=b"".join(chunks), headers=_auth(b, "backup"))
        async with missing as r:
            assert len(await r.read()) == 32 * len(chunks)
