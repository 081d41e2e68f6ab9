"""The alert conditions that need time or a full disk, on real in-process chunk servers with an
injected clock: replication lag over its threshold while the peer is unreachable (resolved once
it catches up), no commit within the practice's policy (resolved by the next commit), and the
server's disk over `disk_threshold` (an injected disk-usage probe; resolved when space returns).
Each alert is opened by the running alert service and read from its store."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.linkproxy import LinkProxy
from client.cli import unreachable_peers
from engine.remote import RemoteBackend
from server.alerts.settings import AlertSettings
from server.state import ALERTS, REPLICATION
from tests.server.monitorkit import (
    REPO,
    FakeClock,
    Site,
    backup,
    init_practice,
    make_tree,
    practice,
    start_site,
    wait_for,
)
from tests.server.test_tls import self_signed

QUIET = {"evaluate_interval": 0.05, "digest_time": None}


def alerting(**thresholds: Any) -> AlertSettings:
    thresholds.setdefault("disk_threshold", 1.01)  # the test machine's disk is not the subject
    return AlertSettings(**QUIET, **thresholds)


async def next_tick(site: Site) -> None:
    service = site.app[ALERTS]
    before = service.last_tick
    await wait_for(lambda: service.last_tick != before, what="an alert evaluation")


async def evaluated(site: Site) -> list[dict[str, Any]]:
    """The open alerts after an evaluation that started after this call."""
    await next_tick(site)  # may have gathered its facts before the call
    await next_tick(site)
    return site.app[ALERTS].store.open_alerts()


def kinds(alerts: list[dict[str, Any]]) -> list[str]:
    return [a["kind"] for a in alerts]


@pytest.fixture
async def lagging(tmp_path: Path) -> AsyncIterator[tuple[Site, LinkProxy, FakeClock]]:
    clock = FakeClock()
    b = await start_site(tmp_path, "site-b")
    with LinkProxy(b.server.port) as link:
        link.refuse = True  # the peer is unreachable
        peer = {"url": link.url, "token": b.replica_token("site-a"), "name": "site-b"}
        settings = alerting(replication_lag_threshold=600.0)
        a = await start_site(tmp_path, "site-a", [peer], clock=clock, alerts=settings)
        a.add_repo()
        yield a, link, clock
        await a.server.close()
    await b.server.close()


async def test_replication_lag_over_its_threshold_opens_and_resolves_once_the_peer_catches_up(
    lagging: tuple[Site, LinkProxy, FakeClock], tmp_path: Path
) -> None:
    a, link, clock = lagging
    async with practice(a, tmp_path / "cache") as repo:
        await backup(repo, make_tree(tmp_path, files=2, size=100_000))
    assert "replication_lag" not in kinds(await evaluated(a))  # queued, but not for long

    clock.advance(601)
    alerts = await evaluated(a)
    lag = next(x for x in alerts if x["kind"] == "replication_lag")
    assert lag["key"] == f"{REPO}/replication_lag/site-b" and "site-b" in lag["message"]

    link.refuse = False
    await wait_for(a.settled, what="the peer to catch up")
    assert "replication_lag" not in kinds(await evaluated(a))


async def test_no_commit_within_the_policy_opens_and_the_next_commit_resolves_it(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    site = await start_site(tmp_path, "site-a", clock=clock, alerts=alerting(commit_policy_hours=1))
    site.add_repo()
    repo = await init_practice(site, tmp_path / "cache")
    try:
        await backup(repo, make_tree(tmp_path, files=1))
        assert "no_commit" not in kinds(await evaluated(site))

        clock.advance(3601)
        alert = next(a for a in await evaluated(site) if a["kind"] == "no_commit")
        assert alert["repo"] == REPO and "last commit" in alert["message"]

        (tmp_path / "tree" / "new.bin").write_bytes(b"a new study" * 1000)
        await backup(repo, tmp_path / "tree")
        assert "no_commit" not in kinds(await evaluated(site))
    finally:
        await repo.close()
        await site.server.close()


@dataclass
class Disk:
    """A disk-usage probe the test fills and empties (what `shutil.disk_usage` returns)."""

    total: int = 1000 * 10**9
    used: int = 500 * 10**9

    @property
    def free(self) -> int:
        return self.total - self.used

    def __call__(self, path: Path) -> Disk:
        assert Path(path).is_dir()  # asked about the data folder, which exists
        return self


async def test_server_disk_over_its_threshold_is_a_provider_alert_until_space_returns(
    tmp_path: Path,
) -> None:
    disk = Disk()
    site = await start_site(
        tmp_path, "site-a", disk_usage=disk, alerts=alerting(disk_threshold=0.9)
    )
    try:
        assert kinds(await evaluated(site)) == []

        disk.used = 950 * 10**9
        alerts = await evaluated(site)
        assert kinds(alerts) == ["disk_full"] and alerts[0]["repo"] is None  # provider's only
        assert "95% full" in alerts[0]["message"] and "50.0 GB free" in alerts[0]["message"]

        disk.used = 800 * 10**9
        assert kinds(await evaluated(site)) == []
    finally:
        await site.server.close()


async def test_a_peer_whose_certificate_is_not_trusted_is_an_alert_until_its_ca_is_given(
    tmp_path: Path,
) -> None:
    """Issue 17 item 4: a self-signed peer without `ca_file` (`--peer-ca`) fails every push;
    past the grace that is `peer_unreachable`, naming the certificate; with the CA given the
    peer takes the backlog and the alert resolves."""
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    b = await start_site(tmp_path, "site-b", ssl=tls)
    assert b.url.startswith("https://")
    peer = {"url": b.url, "token": b.replica_token("site-a"), "name": "site-b"}
    clock, settings = FakeClock(), alerting(peer_unreachable_grace=600.0)
    a = await start_site(tmp_path, "site-a", [peer], clock=clock, alerts=settings)
    a.add_repo()
    repo = await init_practice(a, tmp_path / "cache")
    try:
        await backup(repo, make_tree(tmp_path, files=2, size=100_000))
    finally:
        await repo.close()
    (r,) = a.app[REPLICATION].replicators
    await wait_for(lambda: r.status.down_since is not None, what="a failed push")
    assert "peer_unreachable" not in kinds(await evaluated(a))  # within the grace

    clock.advance(601)
    (alert,) = [x for x in await evaluated(a) if x["kind"] == "peer_unreachable"]
    assert alert["key"] == "site-a/peer_unreachable/site-b" and alert["repo"] is None
    assert "site-b" in alert["message"] and "certificate" in alert["message"]
    # What `dicomvault snapshots` warns, from the practice's replication status over HTTP.
    practice = RemoteBackend(f"{a.url}/{REPO}", a.tokens[REPO]["restore"])
    try:
        (warning,) = unreachable_peers(await practice.replication_status())
    finally:
        await practice.close()
    assert warning.startswith("site-b:unreachable since") and "certificate" in warning
    await a.server.close()

    trusting = [{**peer, "ca_file": str(cert)}]
    a = await start_site(tmp_path, "site-a", trusting, clock=clock, alerts=settings)
    try:
        await wait_for(a.settled, what="the peer to take the backlog")
        assert "peer_unreachable" not in kinds(await evaluated(a))
    finally:
        await a.server.close()
        await b.server.close()
