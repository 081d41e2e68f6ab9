"""Load: 20 practices backing up at once to one `dicomvault-server serve` process while 1,000
idle connections sit open. Every backup commits and the server's RSS (from /proc) stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.serverkit import ServerProcess
from client.backup import Backup
from client.repository import Repository
from engine.remote import RemoteBackend
from engine.repoconfig import init_repository
from server.admin import create_repository_offline
from server.config import ServerConfig
from tests.helpers import PASSPHRASE, cheap_kdf, write_pattern_file

pytestmark = pytest.mark.robustness
MiB = 1024 * 1024
AGENTS = 20
IDLE = 1000
RSS_LIMIT = 256 * MiB  # measured ~65 MiB: uploads stream to disk in 1 MiB batches


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    data = tmp_path / "data"
    config = ServerConfig(data, index_map_size=256 * MiB)
    tokens = {f"p{i}": create_repository_offline(config, f"p{i}")["backup"] for i in range(AGENTS)}
    with systemd_default_descriptors():
        proc = ServerProcess(data).start()
    try:
        yield proc, tokens
    finally:
        proc.stop()


@contextlib.contextmanager
def systemd_default_descriptors() -> Iterator[None]:
    """Children started in the block get systemd's default: a soft limit of 1,024 descriptors
    (the hard limit stays), which 1,000 idle sockets and 20 agents would exhaust."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _practice(url: str, token: str, root: Path, seed: int) -> str:
    tree = root / "tree"
    tree.mkdir(parents=True)
    for i in range(3):
        write_pattern_file(tree / f"f{i}.bin", 1_500_000 + i, seed=seed * 10 + i, random_every=2)
    backend = RemoteBackend(url, token)
    try:
        await init_repository(backend, PASSPHRASE, cheap_kdf())
    finally:
        await backend.close()
    repo = await Repository.open(RemoteBackend(url, token), PASSPHRASE, root / "cache")
    try:
        summary = await Backup(repo).run([str(tree)], [])
    finally:
        await repo.close()
    assert not summary.errors, summary.errors
    return summary.snapshot


async def _watch_rss(pid: int, peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], rss(pid))
        await asyncio.sleep(0.2)


async def test_twenty_backups_and_a_thousand_idle_connections(
    server: tuple[ServerProcess, dict[str, str]], tmp_path: Path
) -> None:
    proc, tokens = server
    port = proc.port
    idle = [
        await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{2 + i % 8}", 0))
        for i in range(IDLE)
    ]
    peak = [rss(proc.pid)]
    watcher = asyncio.create_task(_watch_rss(proc.pid, peak))
    try:
        snapshots = await asyncio.gather(
            *(
                _practice(f"{proc.url}/{name}", token, tmp_path / name, n)
                for n, (name, token) in enumerate(tokens.items())
            )
        )
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        for _, writer in idle:
            writer.close()
    assert len(set(snapshots)) == AGENTS
    for (name, token), snapshot in zip(tokens.items(), snapshots, strict=True):
        backend = RemoteBackend(f"{proc.url}/{name}", token)
        try:
            held = [s.hex() for s in await backend.list_snapshots()]
        finally:
            await backend.close()
        assert held == [snapshot], name
    print(f"server RSS peak {peak[0] / MiB:.0f} MiB")
    assert peak[0] < RSS_LIMIT, f"server RSS peaked at {peak[0] / MiB:.0f} MiB"
    assert proc.alive() and os.path.exists(f"/proc/{proc.pid}")
