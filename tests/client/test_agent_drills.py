"""The agent's scheduled fire drills (`[drill]`), on simulated time: the first drill runs at
start, the next not before `interval_hours` have passed on the agent's clock, every `peer_every`-th
one restores from the peer site, and each result reaches the server in the heartbeat and as a
drill report. A primary and a peer chunk server run in process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from client import drill
from client.agent.daemon import Agent
from client.agent.drills import DrillSchedule, DrillScheduler
from engine.clock import SimulatedClock
from server.drills import DrillRecords
from server.state import INDEX
from tests.client.agentloop import agent_config, practice_repository, running
from tests.server.monitorkit import REPO, Site, backup, make_tree, wait_for


def heartbeat_drill(site: Site) -> dict[str, Any] | None:
    """The drill summary in the agent's last heartbeat, as the server stored it."""
    for hb in site.app[INDEX].heartbeats(REPO):
        if hb["agent"] == "pc-1":
            return hb["info"].get("drill")
    return None


def drilled_at(site: Site, url: str) -> Any:
    summary = heartbeat_drill(site)
    return summary if summary and summary["site"] == url else None


async def test_drills_run_on_schedule_alternate_to_the_peer_and_reach_the_server(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, b = sites
    config = agent_config(tmp_path)
    repo = await practice_repository(a, config)
    await backup(repo, make_tree(tmp_path, files=3, size=50_000))
    await wait_for(a.settled, what="the peer to hold the snapshot")
    primary_url, peer_url = f"{a.url}/{REPO}", f"{b.url}/{REPO}"
    schedule = DrillSchedule(
        interval_hours=1.0,
        sample_percent=100.0,
        first_delay=0.0,
        peer_every=2,
        peer_url=peer_url,
        peer_token=a.tokens[REPO]["restore"],
    )
    clock = SimulatedClock(start=time.time())  # the backup is recent at the start

    def scheduled(agent: Agent) -> None:
        agent.drills = DrillScheduler(agent.config, agent.repo, schedule, clock=clock)

    async with running(config, repo, setup=scheduled):
        first = await wait_for(lambda: drilled_at(a, primary_url), what="the first drill")
        assert first["ok"] and first["files"] == 3 and first["mismatches"] == 0

        second = await wait_for(lambda: drilled_at(a, peer_url), what="the drill at the peer")
        assert second["ok"] and second["files"] == 3
    reports = DrillRecords(a.app[INDEX]).latest(REPO)
    assert {(r["site"], r["ok"]) for r in reports} == {(primary_url, True), (peer_url, True)}
    done = drill.history(config.state_dir, last=10_000)[:2]  # more ran after: time flies
    assert [d["site"] for d in done] == [primary_url, peer_url]
    times = [drill._parse_time(d["time"]) for d in done]
    assert times[1] - times[0] >= 3600  # the scheduler slept the interval on its clock
