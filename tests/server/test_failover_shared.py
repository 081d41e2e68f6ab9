"""`server.failover_shared` on the memory store: two nodes (two real LMDB indexes) sharing one
site store, with the listing yielding to the other node so their reads and appends interleave
exactly as two processes' may (docs/design.md §17, "Several nodes")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from engine.store.memory import MemoryStore
from server.failover_shared import PromoteRaced, SharedFailover
from server.index import ServerIndex
from server.replication.state import Generation, ReplicationState

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
def nodes(tmp_path: Path) -> Iterator[list[SharedFailover]]:
    site = InterleavingStore()
    indexes = [ServerIndex(tmp_path / f"node{i}", 64 << 20) for i in range(2)]
    yield [SharedFailover(site, ReplicationState(index), tidy=True) for index in indexes]
    for index in indexes:
        index.close()


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
    assert not await a.fence(REPO, 2, "site-b")  # old news changes nothing


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
