"""`[spool] delete_after = "peer"`: a received instance stays in the agent's spool (and its Storage
Commitment stays unanswered) while the peer site is down, even across an agent restart, and is
deleted (and reported committed) once the peer has caught up. A primary and a peer chunk server
run in process; the link to the peer is tests/linkproxy.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.linkproxy import LinkProxy
from client.agent import daemon
from client.agent.config import load_policy
from client.agent.daemon import Agent
from client.agent.peerhold import held_by_every_peer
from engine.errors import UsageError
from server.state import REPLICATION
from tests.client.agentloop import (
    Reports,
    agent_config,
    agent_port,
    commitment_request,
    ct_instance,
    practice_repository,
    running,
    send,
    store_and_commit,
)
from tests.server.monitorkit import REPO, Site, start_site, wait_for

POLL = 0.1  # the agent asks the primary which snapshots the peer holds this often (test only)


@pytest.fixture
async def sites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.setattr(daemon, "PEER_POLL", POLL)
    b = await start_site(tmp_path, "site-b")
    with LinkProxy(b.server.port) as link:
        link.refuse = True  # the peer site is down until the test brings it up
        peer = {"url": link.url, "token": b.replica_token("site-a"), "name": "site-b"}
        a = await start_site(tmp_path, "site-a", [peer])
        a.add_repo()
        yield a, link
        await a.server.close()
    await b.server.close()


def peer_holds(a: Site, snapshot: str) -> bool | None:
    """What the primary says about `snapshot` at the peer (None: the primary has no such one)."""
    held = a.app[REPLICATION].repo_status(REPO)["peers"][0]["snapshots"]
    return held.get(snapshot)


async def committed_but_not_at_peer(a: Site, agent: Agent) -> str:
    commit = await wait_for(lambda: agent.last_commit, what="the commit at the primary")
    assert peer_holds(a, commit.snapshot) is False
    await asyncio.sleep(20 * POLL)  # the agent asks many times meanwhile; the answer is "no"
    assert len(agent.inbox.pending()) == 1 and agent.hold.instances == 1
    assert agent.status()["spool"]["held_for_peer"] == 1
    return str(commit.snapshot)


async def test_instance_and_its_storage_commitment_wait_for_the_peer(
    sites: tuple[Site, LinkProxy], tmp_path: Path
) -> None:
    a, link = sites
    config = agent_config(tmp_path, delete_after="peer")
    ds, reports = ct_instance(64), Reports()
    request = commitment_request([ds])
    async with running(config, await practice_repository(a, config)) as agent:
        port = agent_port(agent)
        modality = asyncio.create_task(
            asyncio.to_thread(store_and_commit, port, ds, request, reports, 60.0)
        )
        snapshot = await committed_but_not_at_peer(a, agent)
        assert not reports.arrived.is_set()  # not committed until the peer holds it too

        link.refuse = False  # the peer comes back and catches up
        await wait_for(lambda: peer_holds(a, snapshot), what="the peer to hold the snapshot")
        await wait_for(lambda: not agent.inbox.pending(), what="the spooled instance deleted")
        await modality
    assert agent.hold.instances == 0
    event_type, info = reports.received[0]
    assert event_type == 1 and info.TransactionUID == request.TransactionUID
    assert [r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence] == [ds.SOPInstanceUID]


async def test_held_instances_survive_a_restart_without_being_sent_again(
    sites: tuple[Site, LinkProxy], tmp_path: Path
) -> None:
    a, link = sites
    config = agent_config(tmp_path, delete_after="peer")
    ds = ct_instance(64)
    async with running(config, await practice_repository(a, config)) as agent:
        assert await asyncio.to_thread(send, agent_port(agent), [ds]) == [0]
        await committed_but_not_at_peer(a, agent)

    repo = await practice_repository(a, config, init=False)
    async with running(config, repo) as agent:
        assert agent.hold.instances == 1 and agent.queue.files == 0  # held, not queued again
        link.refuse = False
        await wait_for(lambda: not agent.inbox.pending(), what="the spooled instance deleted")
        key = (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        assert agent.ledger.committed([key]) == ({key}, set()) and agent.ledger.held() == {}
    assert len(a.app[REPLICATION].repo_status(REPO)["peers"][0]["snapshots"]) == 1


def test_delete_after_is_validated_and_needs_every_peer(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text('[spool]\ndelete_after = "peer"\n')
    assert load_policy(tmp_path / "agent.toml").delete_after == "peer"
    (tmp_path / "agent.toml").write_text('[spool]\ndelete_after = "later"\n')
    with pytest.raises(UsageError, match="delete_after"):
        load_policy(tmp_path / "agent.toml")
    status = {"peers": [{"snapshots": {"s1": True, "s2": True}}, {"snapshots": {"s1": True}}]}
    assert held_by_every_peer(status, ["s1", "s2", "s3"]) == ["s1"]
    assert held_by_every_peer({"peers": []}, ["s1"]) == []  # no peer: never "held by the peer"
    assert held_by_every_peer(None, ["s1"]) == []  # a server that does not replicate
