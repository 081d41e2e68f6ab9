"""Kill loops: SIGKILL of `dicomvault backup` (to a local folder and to a chunk server), of
`dicomvault restore`, and of `dicomvault-server serve` under a backup, each at seeded random
moments drawn from a measured run's duration.

After every kill: `check --read-data` is clean, the last committed snapshot restores bit for bit,
the next backup completes and restores bit for bit, a restore re-run into the killed restore's
folder is bit-exact, and a restarted server's index (no reindex) matches its packs. A failure
prints the seed; `DICOMVAULT_KILL_SEED=N` replays it, `DICOMVAULT_KILLS=N` changes the count.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.killcore import KillLoop, seeded
from tests.helpers import Vault
from tests.robustness.killkit import KILLS, kill_seed, make_loop, remote_vault
from tests.server.test_replication_process import Site

pytestmark = [pytest.mark.robustness, pytest.mark.slow]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    server = Site(tmp_path, "site-a")
    yield server
    server.stop()


def _report(loop: KillLoop, what: str) -> None:
    for name, tally in (("backup", loop.backups), ("restore", loop.restores)):
        if tally.kills:
            print(tally.line(f"{what} {name}"))
    if loop.servers.kills:
        print(loop.servers.line(f"{what} server"))


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


def test_backup_to_a_chunk_server_killed_at_random_moments(tmp_path: Path, site: Site) -> None:
    seed = kill_seed()
    tokens = site.create_repo()
    site.start()
    agent = remote_vault(tmp_path / "practice", site, tokens["backup"])
    _backup_kills(make_loop(tmp_path, agent, seed), seed, "chunk server")


def test_chunk_server_killed_under_a_backup_at_random_moments(tmp_path: Path, site: Site) -> None:
    seed = kill_seed()
    tokens = site.create_repo()
    site.start()
    agent = remote_vault(tmp_path / "practice", site, tokens["backup"])
    loop = make_loop(tmp_path, agent, seed)
    with seeded(seed, "server"):
        loop.start()
        for _ in range(KILLS):
            loop.server_cycle(site)
    _report(loop, "server")
    assert loop.servers.kills == KILLS
    assert loop.servers.outcomes["client mid-backup"] >= KILLS // 4, loop.servers.outcomes
