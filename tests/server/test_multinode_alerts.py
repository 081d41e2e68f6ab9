"""Alerts from two chunk-server nodes on one SeaweedFS bucket (docs/design.md §3.1.3): an agent's
heartbeat that reached only node A keeps it alive at node B, and an agent silent everywhere is
announced once across both nodes (alert, repeat and resolution), and so is the daily digest,
received by a real webhook.
Both nodes share one injected clock; the test drives their evaluations itself."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.remote import RemoteBackend
from server.alerts.conditions import AGENT_SILENT
from server.alerts.settings import AlertSettings, RepoPolicy
from server.alerts.shared import HEARTBEATS, PUBLISH_INTERVAL
from server.state import ALERTS, REPOS
from tests.s3kit import SeaweedFS, s3_settings
from tests.server.monitorkit import REPO, FakeClock, Site, Webhook, start_site, wait_for, wait_token

Nodes = tuple[Site, Site, FakeClock]


@pytest.fixture
async def nodes(seaweed: SeaweedFS, tmp_path: Path, hook: Webhook) -> AsyncIterator[Nodes]:
    """Nodes A and B on one bucket prefix, one practice (agent timeout 60 s), one webhook."""
    store = s3_settings(seaweed, f"alerts-{secrets.token_hex(6)}")
    clock = FakeClock()
    alerts = AlertSettings(
        webhooks=(hook.url,),
        repeat_interval=600.0,
        evaluate_interval=3600.0,  # one evaluation at start; the test calls `tick` itself
        digest_time="00:00",  # due at once: each node's first evaluation sends it, or not
        disk_threshold=1.01,
    )
    kw = {"clock": clock, "store": store, "alerts": alerts, "token_publish_interval": 0.05}
    policy = RepoPolicy(REPO, heartbeat_timeout=60.0)
    a = await start_site(tmp_path, "node-a", repos=(policy,), **kw)
    a.add_repo()
    b = await start_site(tmp_path, "node-b", repos=(policy,), **kw)
    b.tokens = a.tokens
    await wait_token(b)
    for site in (a, b):
        await wait_for(lambda s=site: s.app[ALERTS].last_tick is not None, what="first tick")
    yield a, b, clock
    for site in (a, b):
        await site.server.close()


async def _heartbeat(site: Site, agent: str) -> None:
    backend = RemoteBackend(f"{site.url}/{REPO}", site.tokens[REPO]["backup"])
    try:
        await backend.heartbeat({"agent": agent})
    finally:
        await backend.close()


async def _tick_both(a: Site, b: Site) -> None:
    await asyncio.gather(a.app[ALERTS].tick(), b.app[ALERTS].tick())


async def test_an_agent_heartbeating_only_to_node_a_is_not_silent_at_node_b(nodes: Nodes) -> None:
    a, b, clock = nodes
    await _heartbeat(b, "reception-pc")
    clock.advance(100)
    await _heartbeat(a, "reception-pc")  # from now on the balancer picks A
    seen_by_a = clock.time()
    clock.advance(30)  # B heard it 130 s ago, A 30 s ago; the policy allows 60 s

    conditions = await b.app[ALERTS].tick()
    assert [c for c in conditions if c.kind == AGENT_SILENT] == []
    facts = b.app[ALERTS].last_facts
    assert facts is not None  # what the status page shows
    (row,) = facts.repos[0].heartbeats
    assert row["agent"] == "reception-pc" and row["received"] == pytest.approx(seen_by_a)

    clock.advance(60)  # now silent everywhere: B says so too
    conditions = await b.app[ALERTS].tick()
    assert [c.kind for c in conditions] == [AGENT_SILENT]


async def test_an_agent_silent_everywhere_is_announced_once_across_both_nodes(
    nodes: Nodes, hook: Webhook
) -> None:
    a, b, clock = nodes
    await _heartbeat(a, "pc-2")
    await _heartbeat(b, "pc-2")  # the balancer spread its heartbeats over both nodes
    clock.advance(120)

    await _tick_both(a, b)
    assert len(hook.events("alert", "silent")) == 1
    for site in (a, b):  # the node that did not send records it as sent
        (doc,) = site.app[ALERTS].store.open_alerts()
        assert doc["sends"] == 1 and doc["kind"] == AGENT_SILENT
    await _tick_both(a, b)
    assert len(hook.events("alert")) == 1 and not hook.events("repeat")

    clock.advance(600)
    await _tick_both(a, b)
    await _tick_both(a, b)
    assert len(hook.events("repeat", "silent")) == 1

    await _heartbeat(b, "pc-2")  # back, through B only
    await _tick_both(a, b)
    await _tick_both(a, b)
    assert len(hook.events("resolved")) == 1
    assert a.app[ALERTS].store.open_alerts() == b.app[ALERTS].store.open_alerts() == []


async def test_one_daily_digest_across_both_nodes(nodes: Nodes, hook: Webhook) -> None:
    a, b, _ = nodes
    await _tick_both(a, b)  # both evaluated at start, too
    digests = hook.events("digest")
    assert digests and len(digests) == len({d["date"] for d in digests})  # one per day
    for site in (a, b):
        assert site.app[ALERTS].store.last_digest() is not None  # recorded as sent


async def test_heartbeat_objects_are_bounded_per_agent(nodes: Nodes) -> None:
    """At most one put per agent per node per minute; an evaluation keeps only the newest."""
    a, _, clock = nodes
    store = a.app[REPOS].get(REPO).store

    async def published() -> list[str]:
        return [n async for n in store.list(HEARTBEATS)]

    for _ in range(3):
        await _heartbeat(a, "pc-3")
        clock.advance(10)
    assert len(await published()) == 1
    clock.advance(PUBLISH_INTERVAL)
    await _heartbeat(a, "pc-3")
    both = await published()
    assert len(both) == 2
    await a.app[ALERTS].tick()
    assert await published() == [max(both)]  # the newest stays, the superseded one is gone
