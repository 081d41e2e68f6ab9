"""The agent's own alerts reach the server: pack uploads that keep failing on a link that lets
heartbeats through raise "uploads in a row failed" at the server (GET …/alerts and a webhook),
and the next acknowledged pack resolves it. Agent and server run in process; the link is
tests/linkproxy.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from benchmarks.linkproxy import LinkProxy
from client.agent.alerts import REFUSAL_ALERT_SECONDS, agent_alerts
from client.agent.config import DicomSettings, Policy, load_policy
from client.agent.door import Door
from client.spool import UploadStats
from server.alerts.settings import AlertSettings
from tests.client.agentloop import (
    agent_config,
    agent_port,
    ct_instance,
    practice_repository,
    running,
    send,
    server_alerts,
)
from tests.server.monitorkit import REPO, Site, Webhook, start_site, wait_for

SMALL_REQUESTS = 16 * 1024  # heartbeats and missing-queries pass; a 128 KiB pack never does


@pytest.fixture
async def site(tmp_path: Path, hook: Webhook) -> AsyncIterator[Site]:
    alerts = AlertSettings(
        webhooks=(hook.url,), evaluate_interval=0.05, digest_time=None, disk_threshold=1.01
    )
    s = await start_site(tmp_path, "site-a", alerts=alerts)
    s.add_repo()
    yield s
    await s.server.close()


async def test_repeated_upload_failures_are_an_alert_at_the_server_until_an_upload_succeeds(
    site: Site, hook: Webhook, tmp_path: Path
) -> None:
    config = agent_config(tmp_path, upload_failures_alert=3)
    with LinkProxy(site.server.port) as link:
        repo = await practice_repository(site, config, url=f"{link.url}/{REPO}")
        async with running(config, repo) as agent:
            link.max_connection_bytes = SMALL_REQUESTS
            statuses = await asyncio.to_thread(send, agent_port(agent), [ct_instance()])
            assert statuses == [0]

            opened = await wait_for(
                lambda: server_alerts(site, "agent_alert"), timeout=30, what="the alert"
            )
            assert "pack uploads in a row failed" in opened[0]["message"]
            assert "pc-1" in opened[0]["message"]
            assert agent.last_commit is None  # nothing committed while uploads fail
            await wait_for(lambda: hook.events("alert", "uploads in a row"), what="alert hook")

            link.max_connection_bytes = None
            await wait_for(lambda: agent.last_commit, timeout=60, what="the commit")
            await wait_for(lambda: hook.events("resolved", "uploads"), what="resolved hook")
            assert await server_alerts(site, "agent_alert") == []
            assert agent.alerts == [] and agent.status()["alerts"] == []


def test_the_upload_failure_threshold_is_read_from_the_alerts_table(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text("[alerts]\nupload_failures = 2\n")
    policy = load_policy(tmp_path / "agent.toml")
    assert policy.upload_failures_alert == 2
    failing = UploadStats(failures_in_row=2, last_error="pack 1a2b: ConnectionResetError")
    assert agent_alerts(policy, 0, failing) == [
        "2 pack uploads in a row failed (last error: pack 1a2b: ConnectionResetError)"
    ]
    assert agent_alerts(policy, 0, UploadStats(failures_in_row=1)) == []
    assert agent_alerts(Policy(upload_failures_alert=0), 0, failing) == []  # 0: off


def test_a_refused_association_raises_an_alert_for_an_hour() -> None:
    door = Door(DicomSettings())
    assert agent_alerts(Policy(), 0, None, door, 1000.0) == []
    door.refuse(1000.0, "10.0.0.9", "INTRUDER", "calling AE title 'INTRUDER' is not allow-listed")
    door.refuse(1010.0, "10.0.0.9", "", "8 connections from this host already")
    raised = agent_alerts(Policy(), 0, None, door, 1010.0 + REFUSAL_ALERT_SECONDS - 1)
    assert raised == [
        "DICOM listener refused 2 since start; "
        "latest: 10.0.0.9: 8 connections from this host already"
    ]
    assert agent_alerts(Policy(), 0, None, door, 1010.0 + REFUSAL_ALERT_SECONDS) == []
