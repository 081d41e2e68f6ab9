"""A running agent given both sites carries on by itself: the primary is lost, instances keep
arriving and wait in the spool (no site takes writes), the operator promotes the peer, and the
agent's next upload and commit land there without a restart or a new configuration."""

from __future__ import annotations

import asyncio
from pathlib import Path

from client.repository import Repository
from engine.failover import FailoverBackend
from engine.remote import RemoteBackend
from engine.repoconfig import init_repository
from engine.retry import with_retries
from server.index import ServerIndex
from server.state import INDEX, REPLICATION
from tests.client.agentloop import agent_config, agent_port, ct_instance, running, send
from tests.helpers import PASSPHRASE, cheap_kdf
from tests.server.monitorkit import REPO, start_site, wait_for


def snapshots(index: ServerIndex) -> set[str]:
    return {sid.hex() for sid, _ in index.snapshots(REPO)}


async def test_the_agent_moves_to_the_promoted_peer_by_itself(tmp_path: Path) -> None:
    b = await start_site(tmp_path, "site-b")
    peer = {"url": b.url, "token": b.replica_token("site-a"), "name": "site-b"}
    a = await start_site(tmp_path, "site-a", [peer])
    tokens = a.add_repo()
    direct = RemoteBackend(f"{a.url}/{REPO}", tokens["backup"])
    await init_repository(direct, PASSPHRASE, cheap_kdf())
    await direct.close()
    both = FailoverBackend([
        with_retries(RemoteBackend(f"{site.url}/{REPO}", tokens["backup"]), deadline=1.0)
        for site in (a, b)
    ])  # fmt: skip
    config = agent_config(tmp_path / "pc")
    repo = await Repository.open(both, PASSPHRASE, tmp_path / "pc" / "cache",
                                 spool_dir=config.packs_dir)  # fmt: skip
    try:
        async with running(config, repo) as agent:
            await asyncio.to_thread(send, agent_port(agent), [ct_instance(64)])
            await wait_for(lambda: agent.last_commit, what="the first commit, at site-a")
            first = agent.last_commit
            assert first is not None and snapshots(a.app[INDEX]) == {first.snapshot}
            await wait_for(a.settled, what="site-b holding it")

            await a.server.close()  # the primary is lost mid-day
            await asyncio.to_thread(send, agent_port(agent), [ct_instance(64)])
            assert repo.uploader is not None
            stats = repo.uploader.stats
            await wait_for(lambda: "no site takes backups" in (stats.last_error or ""),
                           what="the upload waiting for a primary")  # fmt: skip
            assert agent.last_commit == first  # nothing committed anywhere meanwhile

            b.app[REPLICATION].state.promote(REPO)  # the operator's `promote`
            await wait_for(lambda: agent.last_commit != first, timeout=60,
                           what="the agent's commit at the promoted peer")  # fmt: skip
            assert agent.last_commit is not None
            assert agent.last_commit.snapshot in snapshots(b.app[INDEX])
            assert both.location == f"{b.url}/{REPO}"
    finally:
        await b.server.close()
