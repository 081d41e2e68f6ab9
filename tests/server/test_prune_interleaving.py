"""Prune while others back up (docs/design.md §14), over seeded interleavings on a real
in-process chunk server with a SimulatedClock: two practice machines back up, an admin forgets
and prunes, concurrently, at seeded offsets. After each schedule the undelete window is made
to pass and the server purges; then every snapshot left must restore bit-exact from a fresh
index and `check --read-data` must be clean. The race it closes: a backup that reuses chunks
its index knows (files cache), whose parent or source snapshot is forgotten and pruned while it
runs, commits listing only what changed."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from pathlib import Path

from client.backup import Backup
from client.check import check
from client.prune import prune
from client.repository import Repository
from client.restore import Restorer
from engine.clock import SimulatedClock
from engine.failover import FailoverBackend
from engine.ids import SnapshotId
from engine.prune_plan import MaxUnused
from engine.remote import RemoteBackend
from engine.repoconfig import init_repository
from server.state import DELETIONS, REPOS
from tests.helpers import PASSPHRASE, cheap_kdf, tree_state
from tests.server.conftest import REPO, Harness, ServerFactory

SCHEDULES = int(os.environ.get("PRUNE_SCHEDULES", "100"))
DAY = 86_400.0


async def _open(srv: Harness, cache: Path, role: str) -> Repository:
    return await Repository.open(srv.backend(role), PASSPHRASE, cache)


def _write(folder: Path, rng: random.Random, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"f{i}.bin").write_bytes(rng.randbytes(rng.randrange(200, 6000)))


async def _backup(repo: Repository, folder: Path, host: str) -> str:
    summary = await Backup(repo, host=host, workers=1).run([str(folder)])
    assert not summary.errors
    return summary.snapshot


async def _yields(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _one_schedule(srv: Harness, clock: SimulatedClock, root: Path, seed: int) -> None:
    rng = random.Random(seed)
    a = await _open(srv, root / "cache-a", "backup")
    b = await _open(srv, root / "cache-b", "backup")
    admin = await _open(srv, root / "cache-admin", "admin")
    expected: dict[str, dict[str, tuple[object, ...]]] = {}  # snapshot → tree state
    try:
        folders = [root / f"src{i}" for i in range(3)]
        for f in folders:
            _write(f, rng, rng.randrange(1, 4))
        for f in folders:  # the old snapshots whose chunks later backups reuse
            sid = await _backup(a, f, "a")
            expected[sid] = tree_state(f)
        for _step in range(rng.randrange(2, 4)):
            olds = await admin.snapshots()
            doomed = [s for s, _, _ in olds if rng.random() < 0.6]
            if doomed:
                await admin.backend.forget(doomed)
                for s in doomed:
                    expected.pop(s.hex(), None)
            folder = rng.choice(folders)
            if rng.random() < 0.5:  # change part of it; the rest is reused from the index
                _write(folder, rng, 1)
            state = tree_state(folder)
            other = rng.choice(folders)
            other_state = tree_state(other)

            async def run_prune(delay: int) -> None:
                await _yields(delay)
                await prune(admin, max_unused=MaxUnused(0.0), holder="admin")

            async def run_backup(repo: Repository, f: Path, delay: int) -> str:
                await _yields(delay)
                return await _backup(repo, f, "a" if repo is a else "b")

            results = await asyncio.gather(
                run_backup(a, folder, rng.randrange(0, 40)),
                run_backup(b, other, rng.randrange(0, 40)),
                run_prune(rng.randrange(0, 40)),
            )
            expected[str(results[0])] = state
            expected[str(results[1])] = other_state
        clock.advance(15 * DAY)
        await srv.app[DELETIONS].purge_due(srv.app[REPOS], clock.time())
        await _verify(srv, root, expected)
    finally:
        for repo in (a, b, admin):
            await repo.close()


async def _verify(
    srv: Harness, root: Path, expected: dict[str, dict[str, tuple[object, ...]]]
) -> None:
    fresh = await _open(srv, root / "cache-fresh", "restore")
    try:
        report = await check(fresh, read_data=True)
        assert report.problems == [], report.problems
        listed = {s.hex() for s, _, _ in await fresh.snapshots()}
        assert set(expected) <= listed
        for sid, state in expected.items():
            target = root / "restored" / sid
            summary = await Restorer(fresh, target).run(await fresh.resolve(sid))
            assert not summary.errors, summary.errors
            (source,) = (
                target / p.lstrip("/")
                for p in (await fresh.load_snapshot(await fresh.resolve(sid)))[1].paths
            )
            assert tree_state(source) == state, sid
    finally:
        await fresh.close()


async def test_prune_never_loses_what_a_concurrent_backup_reuses(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    for seed in range(SCHEDULES):
        clock = SimulatedClock(1_900_000_000.0)
        srv = await make_server(clock=clock, purge_interval=3600.0)
        backend = RemoteBackend(f"{srv.base}/{REPO}", srv.tokens[REPO]["backup"])
        await init_repository(backend, PASSPHRASE, cheap_kdf())
        await backend.close()
        root = tmp_path / f"s{seed}"
        await _one_schedule(srv, clock, root, seed)
        shutil.rmtree(root)
        await srv.server.close()


async def test_a_backup_through_several_sites_commits_after_a_prune(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """`FailoverBackend` (several sites) takes part in the prune protocol: without it, the
    first backup after a prune would be refused (`full_refs_required`) for good."""
    srv = await make_server()
    backend = RemoteBackend(f"{srv.base}/{REPO}", srv.tokens[REPO]["backup"])
    await init_repository(backend, PASSPHRASE, cheap_kdf())
    await backend.close()
    a = await Repository.open(FailoverBackend([srv.backend("backup")]), PASSPHRASE, tmp_path / "a")
    admin = await _open(srv, tmp_path / "admin", "admin")
    rng = random.Random(3)
    try:
        folder = tmp_path / "src"
        _write(folder, rng, 3)
        first = await _backup(a, folder, "a")
        await admin.backend.forget([SnapshotId.parse(first)])
        await prune(admin, max_unused=MaxUnused(0.0), holder="admin")
        _write(folder, rng, 1)
        second = await _backup(a, folder, "a")  # reused chunks from the forgotten snapshot
        await _verify(srv, tmp_path, {second: tree_state(folder)})
    finally:
        await a.close()
        await admin.close()
