"""Alerts that reach someone: an agent heartbeats and goes silent; the dead-man alert arrives by
SMTP (a real aiosmtpd server on loopback) to every recipient of the practice and the provider and
by webhook (a real aiohttp receiver), repeats while it lasts, and resolves when the heartbeat
returns; the daily digest says all is well. Time is an injected clock moved by the test.
"""

from __future__ import annotations

import asyncio
import json
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.remote import RemoteBackend
from server.alerts.settings import AlertSettings, RepoPolicy, alerts_from_dict
from server.state import ALERTS
from tests.server.monitorkit import REPO, FakeClock, MailSink, Site, Webhook, start_site, wait_for

PRACTICE = ("dr.smith@clinic.test", "it@clinic.test")
PROVIDER = ("ops@provider.test", "oncall@provider.test")


@pytest.fixture
async def watched(
    tmp_path: Path, smtp: MailSink, hook: Webhook
) -> AsyncIterator[tuple[Site, FakeClock]]:
    clock = FakeClock()
    alerts = AlertSettings(
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        sender="dicomvault@provider.test",
        provider_recipients=PROVIDER,
        webhooks=(hook.url,),
        repeat_interval=600.0,
        evaluate_interval=0.05,
        digest_time="00:00",
        disk_threshold=1.01,  # never: the test machine's disk is not the subject here
    )
    policy = RepoPolicy(REPO, recipients=PRACTICE, heartbeat_timeout=60.0)
    site = await start_site(tmp_path, "site-a", clock=clock, alerts=alerts, repos=(policy,))
    site.add_repo()
    yield site, clock
    await site.server.close()


async def test_dead_man_alert_arrives_by_mail_and_webhook_repeats_and_resolves(
    watched: tuple[Site, FakeClock], smtp: MailSink, hook: Webhook, tmp_path: Path
) -> None:
    site, clock = watched
    agent = RemoteBackend(f"{site.url}/{REPO}", site.tokens[REPO]["backup"])
    try:
        await agent.heartbeat({"agent": "reception-pc"})
        clock.advance(120)  # the agent stopped: two minutes of silence, policy 60 s

        mail = (await wait_for(lambda: smtp.events("alert", "silent"), what="alert mail"))[0]
        assert set(mail.rcpt_tos) == set(PRACTICE + PROVIDER)
        assert "reception-pc" in mail.subject and "ALERT" in mail.subject
        doc = (await wait_for(lambda: hook.events("alert", "silent"), what="alert webhook"))[0]
        assert doc["repo"] == REPO and doc["kind"] == "agent_silent"
        rc, out = await _cli(site, "alerts", "--json")
        assert rc == 0 and [a["kind"] for a in json.loads(out)["alerts"]] == ["agent_silent"]

        await asyncio.sleep(0.3)
        assert len(smtp.events("alert")) == 1 and not smtp.events("repeat")  # not before due
        clock.advance(600)
        await wait_for(lambda: smtp.events("repeat", "silent"), what="repeated mail")
        await wait_for(lambda: hook.events("repeat", "silent"), what="repeated webhook")

        await agent.heartbeat({"agent": "reception-pc"})
        resolved = await wait_for(lambda: smtp.events("resolved"), what="resolved mail")
        assert "RESOLVED" in resolved[0].subject and set(resolved[0].rcpt_tos) == set(
            PRACTICE + PROVIDER
        )
        await wait_for(lambda: hook.events("resolved"), what="resolved webhook")
        assert site.app[ALERTS].store.open_alerts() == []
        rc, out = await _cli(site, "alerts")
        assert rc == 0 and "no open alerts" in out
    finally:
        await agent.close()
    await asyncio.sleep(0.3)
    assert len(smtp.events("resolved")) == 1  # one resolved message, not one per evaluation


async def test_daily_digest_says_all_is_well_to_provider_and_practice(
    watched: tuple[Site, FakeClock], smtp: MailSink, hook: Webhook
) -> None:
    _, clock = watched
    # The practice was added just after the server started, so today's digest may have gone out
    # before it existed: let today's round finish, then look at tomorrow's.
    await wait_for(lambda: smtp.events("digest"), what="today's digest")
    await asyncio.sleep(0.3)
    today = len(smtp.events("digest"))
    clock.advance(86400)
    await wait_for(lambda: len(smtp.events("digest")) >= today + 2, what="tomorrow's digests")
    tomorrow = smtp.events("digest")[today:]
    provider = next(m for m in tomorrow if set(m.rcpt_tos) == set(PROVIDER))
    practice = next(m for m in tomorrow if set(m.rcpt_tos) == set(PRACTICE))
    assert "all is well" in provider.subject and "all is well" in practice.subject
    body = provider.message.get_payload()
    assert f"{REPO}: OK" in str(body)
    webhook = await wait_for(lambda: [d for d in hook.docs if d["event"] == "digest"])
    assert webhook[-1]["ok"] is True and REPO in webhook[-1]["repositories"]
    await asyncio.sleep(0.3)
    assert len(smtp.events("digest")) == today + 2  # once a day, not once per evaluation


async def test_agent_reported_troubles_become_alerts(
    watched: tuple[Site, FakeClock], smtp: MailSink
) -> None:
    site, _ = watched
    agent = RemoteBackend(f"{site.url}/{REPO}", site.tokens[REPO]["backup"])
    try:
        trouble = "spool holds 9,000,000 bytes, over the alert threshold of 1,000,000"
        await agent.heartbeat({"agent": "pc-2", "alerts": [trouble]})
        mail = (await wait_for(lambda: smtp.events("alert", "pc-2"), what="agent alert"))[0]
        assert "spool holds" in mail.subject
        await agent.heartbeat({"agent": "pc-2", "alerts": []})
        await wait_for(lambda: smtp.events("resolved", "pc-2"), what="resolved")
    finally:
        await agent.close()


def test_alert_settings_are_validated() -> None:
    doc = {"smtp_host": "mail", "provider_recipients": ["a@b.test"], "digest_time": "07:30"}
    assert alerts_from_dict(doc).digest_minute() == 450
    for bad in ({"digest_time": "7pm"}, {"provider_recipients": ["nobody"]},
                {"webhooks": ["ftp://x"]}, {"repeat_interval": 0}, {"smtp": "x"}):  # fmt: skip
        with pytest.raises(Exception, match=r"."):
            alerts_from_dict(bad)


async def _cli(site: Site, *args: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "server", args[0], "--data", str(site.config.data_dir)]
    proc = await asyncio.create_subprocess_exec(*cmd, *args[1:], stdout=PIPE, stderr=PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


def test_the_documented_example_config_loads() -> None:
    from server.config import load_config

    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "docs" / "server.example.toml")
    assert config.alerts.provider_recipients and config.alerts.smtp_starttls
    assert {p.name for p in config.repos} == {"smith-radiology", "night-clinic"}
    assert config.scrub_rate == 50 * 1024 * 1024
