"""Kill loops: SIGKILL of `dicomvault backup` (to a local folder and to a chunk server), of
`dicomvault restore`, and of `dicomvault-server serve` under a backup, each at seeded random
moments drawn from a measured run's duration.

After every kill: `check --read-data` is clean, the last committed snapshot restores bit for bit,
the next backup completes and restores bit for bit, a restore re-run into the killed restore's
folder is bit-exact, and a restarted server's index (no reindex) matches its packs. A failure
prints the seed; `DICOMVAULT_KILL_SEED=N` replays it, `DICOMVAULT_KILLS=N` changes the count.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.killcore import KillLoop, index_problems, seeded
from engine.ids import PackId
from engine.pack import pack_name
from tests.client.test_remote import Agent
from tests.helpers import Vault
from tests.robustness.killkit import KILLS, kill_seed, make_loop, remote_vault
from tests.server.test_replication_process import REPO, Site, wait_until

pytestmark = [pytest.mark.robustness, pytest.mark.slow]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    server = Site(tmp_path, "site-a")
    yield server
    server.stop()


@pytest.fixture
def agent(tmp_path: Path, site: Site) -> Agent:
    """A practice machine with an initialised repository on `site`, which is running."""
    tokens = site.create_repo()
    site.start()
    return remote_vault(tmp_path / "practice", site, tokens["backup"])


def _report(loop: KillLoop, what: str) -> None:
    for kind, tally in (
        ("backup", loop.backups),
        ("restore", loop.restores),
        ("server", loop.servers),
    ):
        if tally.kills:
            print(tally.line(f"{what} loop, {kind}"))


def _backup_kills(loop: KillLoop, seed: int, what: str) -> None:
    with seeded(seed, what):
        loop.start()
        for _ in range(KILLS):
            loop.backup_cycle()
    _report(loop, what)
    assert loop.backups.kills == loop.restores.kills == KILLS
    # The draws must reach the interesting window, not only a finished process.
    assert loop.backups.outcomes["killed before commit"] >= KILLS // 4, loop.backups.outcomes


def test_backup_to_a_local_folder_killed_at_random_moments(tmp_path: Path) -> None:
    seed = kill_seed()
    vault = Vault(tmp_path / "vault").init()
    _backup_kills(make_loop(tmp_path, vault, seed), seed, "local")


def test_backup_to_a_chunk_server_killed_at_random_moments(tmp_path: Path, agent: Agent) -> None:
    seed = kill_seed()
    _backup_kills(make_loop(tmp_path, agent, seed), seed, "chunk server")


def test_chunk_server_killed_under_a_backup_at_random_moments(
    tmp_path: Path, site: Site, agent: Agent
) -> None:
    seed = kill_seed()
    loop = make_loop(tmp_path, agent, seed)
    with seeded(seed, "server"):
        loop.start()
        for _ in range(KILLS):
            loop.server_cycle(site)
    _report(loop, "server")
    assert loop.servers.kills == KILLS
    assert loop.servers.outcomes["client mid-backup"] >= KILLS // 4, loop.servers.outcomes


def test_pack_linked_but_not_indexed_by_a_killed_server_is_healed(
    tmp_path: Path, site: Site, agent: Agent
) -> None:
    loop = make_loop(tmp_path, agent, seed=1)
    # A slow uplink holds the first pack in the spool, mid-upload, when both sides die.
    proc = agent.popen("--limit-upload", "64KiB", "backup", str(loop.history.tree), "--json")
    wait_until(lambda: agent.spool(), what="a spooled pack")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    site.kill()
    for spooled in agent.spool():  # what the server had linked when it died, before indexing
        stored = site.data / "repos" / REPO / pack_name(PackId.parse(spooled.name))
        stored.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(spooled, stored)
    site.start()
    loop.start()  # the next backup completes
    assert index_problems(site.data) == [], "the server's index lacks a stored pack"
    loop.history.assert_restores(loop.history.listing()[-1])
