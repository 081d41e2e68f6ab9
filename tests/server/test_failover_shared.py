"""`server.failover_shared` on the memory store: two nodes (two real LMDB indexes) sharing one
site store, with the listing yielding to the other node so their reads and appends interleave
exactly as two processes' may (docs/design.md §17, "Several nodes")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.clock import SYSTEM
from engine.store.local import LocalRoot
from engine.store.memory import MemoryStore
from server.failover_shared import PromoteRaced, SharedFailover
from server.index import ServerIndex
from server.replication.settings import PeerConfig
from server.replication.state import Generation, ReplicationState
from server.replication.worker import Replicator
from server.repos import Repositories

REPO = "clinic"


class InterleavingStore(MemoryStore):
    """The memory store whose listing lets the other node run first, as a network round trip
    would."""

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[str]:
        names = [n async for n in super().list(prefix, start_after)]
        await asyncio.sleep(0)
        for name in names:
            yield name


@pytest.fixture
def nodes(indexes: list[ServerIndex]) -> list[SharedFailover]:
    site = InterleavingStore()
    return [SharedFailover(site, ReplicationState(index), tidy=True) for index in indexes[:2]]


async def test_two_promotions_that_read_the_same_state_one_is_refused(
    nodes: list[SharedFailover],
) -> None:
    a, b = nodes
    await a.bind(REPO, "site-a", 1.0)
    results = await asyncio.gather(a.promote(REPO), b.promote(REPO), return_exceptions=True)
    assert sum(isinstance(r, PromoteRaced) for r in results) == 1, results
    assert [r for r in results if isinstance(r, Generation)] == [Generation(2, 0, "", "site-a")]
    for node in nodes:
        _, gen, replica = await node.refresh(REPO)
        assert (gen.generation, replica) == (2, None)
        assert node.state.replica_owner(REPO) is None


async def test_two_fences_at_once_both_land_and_the_higher_stands(
    nodes: list[SharedFailover],
) -> None:
    a, b = nodes
    await asyncio.gather(a.fence(REPO, 3, "site-c"), b.fence(REPO, 4, "site-d"))
    for node in nodes:
        _, gen, _ = await node.refresh(REPO)
        assert (gen.fenced_by, gen.primary) == (4, "site-d")
    await a.fence(REPO, 2, "site-b")  # old news changes nothing
    _, gen, _ = await b.refresh(REPO)
    assert (gen.fenced_by, gen.primary) == (4, "site-d")


async def test_a_promotion_that_reads_another_nodes_promotion_is_refused(
    nodes: list[SharedFailover],
) -> None:
    """The CLI checked "still a replica" on its own rows; the bucket says otherwise by then."""
    a, b = nodes
    await a.bind(REPO, "site-a", 1.0)
    await b.refresh(REPO)
    await a.promote(REPO)
    with pytest.raises(PromoteRaced, match="another node promoted"):
        await b.promote(REPO)
    _, gen, _ = await a.refresh(REPO)
    assert gen.generation == 2


async def test_a_nodes_own_rows_stand_until_the_first_change_publishes_them(
    nodes: list[SharedFailover],
) -> None:
    a, b = nodes
    a.state.claim_replica(REPO, "site-a", 1.0)  # a binding from before the shared format
    _, _, replica = await a.refresh(REPO)
    assert replica == {"owner": "site-a", "since": 1.0}  # the bucket has none: the rows stand
    assert (await a.promote(REPO)).promoted_from == "site-a"
    _, gen, _ = await b.refresh(REPO)
    assert gen == Generation(2, 0, "", "site-a")


async def test_the_log_keeps_the_newest_two_entries(nodes: list[SharedFailover]) -> None:
    a, _ = nodes
    for generation in range(2, 7):
        await a.fence(REPO, generation, "site-b")
    names = [n async for n in a.site.list(f"failover/{REPO}")]
    assert [int(n.rsplit("/", 1)[-1], 16) for n in names] == [4, 5]


class SharedFolder(LocalRoot):
    """A local folder that several nodes open, as a bucket is (the S3 root's `shared`)."""

    shared = True


async def test_a_fence_the_replicator_hears_from_its_peer_is_published(tmp_path: Path) -> None:
    index = ServerIndex(tmp_path / "index", 64 << 20)
    try:
        repos = Repositories(SharedFolder(tmp_path / "store"))
        peer = PeerConfig("http://127.0.0.1:9", "dv_x", name="site-b")
        worker = Replicator(
            peer, ReplicationState(index), index, repos, clock=SYSTEM, poll=1.0, retry_max=1.0
        )
        worker.client.on_generation(REPO, "2")  # the peer answered: it is primary at 2
        b = ServerIndex(tmp_path / "b", 1 << 24)
        other = SharedFailover(repos.site, ReplicationState(b))
        for _ in range(100):  # published by a task of the worker's
            await asyncio.sleep(0.01)
            _, gen, _ = await other.refresh(REPO)
            if gen.fenced:
                break
        b.close()
        assert (gen.fenced_by, gen.primary) == (2, "site-b")
    finally:
        index.close()
