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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from client.backup import Backup
from client.check import check
from client.prune import prune
from client.repository import Repository
from client.restore import Restorer
from engine.backend import LocalBackend
from engine.clock import SimulatedClock
from engine.failover import FailoverBackend
from engine.ids import SnapshotId
from engine.prune_plan import MaxUnused
from engine.remote import RemoteBackend
from engine.repoconfig import init_repository
from engine.store.local import LocalStore
from server.state import DELETIONS, REPOS
from tests.helpers import PASSPHRASE, cheap_kdf, tree_state
from tests.server.conftest import REPO, Harness, ServerFactory

SCHEDULES = int(os.environ.get("PRUNE_SCHEDULES", "100"))
DAY = 86_400.0


Opener = Callable[[Path, str], Awaitable[Repository]]


def _at_server(srv: Harness) -> Opener:
    async def open_repo(cache: Path, role: str) -> Repository:
        return await Repository.open(srv.backend(role), PASSPHRASE, cache)

    return open_repo


def _at_folder(folder: Path) -> Opener:
    """Every machine opens the folder through its own backend, as separate processes would."""

    async def open_repo(cache: Path, role: str) -> Repository:
        backend = LocalBackend(LocalStore(folder), str(folder), poll=0.001)
        return await Repository.open(backend, PASSPHRASE, cache)

    return open_repo


async def _open(srv: Harness, cache: Path, role: str) -> Repository:
    return await _at_server(srv)(cache, role)


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


async def _one_schedule(
    open_repo: Opener, purge: Callable[[], Awaitable[object]], root: Path, seed: int
) -> None:
    rng = random.Random(seed)
    a = await open_repo(root / "cache-a", "backup")
    b = await open_repo(root / "cache-b", "backup")
    admin = await open_repo(root / "cache-admin", "admin")
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
        await purge()  # the undelete window passes: what was scheduled is destroyed
        await _verify(open_repo, root, expected)
    finally:
        for repo in (a, b, admin):
            await repo.close()


async def _verify(
    open_repo: Opener, root: Path, expected: dict[str, dict[str, tuple[object, ...]]]
) -> None:
    fresh = await open_repo(root / "cache-fresh", "restore")
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

        async def purge(srv: Harness = srv, clock: SimulatedClock = clock) -> object:
            clock.advance(15 * DAY)
            return await srv.app[DELETIONS].purge_due(srv.app[REPOS], clock.time())

        await _one_schedule(_at_server(srv), purge, root, seed)
        shutil.rmtree(root)
        await srv.server.close()


async def test_a_local_prune_never_loses_what_a_concurrent_local_backup_reuses(
    tmp_path: Path,
) -> None:
    """The same schedules over a repository folder that every machine opens through its own
    `LocalBackend` (docs/design.md §14, local repositories)."""
    for seed in range(SCHEDULES):
        root = tmp_path / f"s{seed}"
        folder = root / "repo"
        backend = LocalBackend(LocalStore(folder), str(folder))
        await init_repository(backend, PASSPHRASE, cheap_kdf())

        async def purge(backend: LocalBackend = backend) -> object:
            return await backend.purge_trash(time.time() + 15 * DAY)

        await _one_schedule(_at_folder(folder), purge, root, seed)
        await backend.close()
        shutil.rmtree(root)


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
        await _verify(_at_server(srv), tmp_path, {second: tree_state(folder)})
    finally:
        await a.close()
        await admin.close()


class _PruneWhileCommitting(LocalStore):
    """A repository folder where `during_commit` runs just before a commit record is written:
    the moment a local prune can take its lock after the commit looked (docs/design.md §14)."""

    during_commit: Callable[[], Awaitable[object]] | None = None

    async def put(self, name: str, data: bytes | memoryview, *, mtime: float | None = None) -> bool:
        hook, self.during_commit = self.during_commit, None
        if hook is not None and name.startswith("snapshots/"):
            await hook()
        return await super().put(name, data, mtime=mtime)


async def test_a_local_commit_that_raced_a_prunes_start_is_made_again_in_full(
    tmp_path: Path,
) -> None:
    """A prune takes the lock after a local commit looked at it and before its record exists:
    the prune's mark does not see the record and trashes the packs it reuses. The commit sees
    the new generation, takes its record back and commits again listing every chunk, which
    brings them back from trash."""
    folder = tmp_path / "repo"
    await init_repository(LocalBackend(LocalStore(folder), str(folder)), PASSPHRASE, cheap_kdf())
    store = _PruneWhileCommitting(folder)
    a = await Repository.open(LocalBackend(store, str(folder)), PASSPHRASE, tmp_path / "a")
    admin = await _at_folder(folder)(tmp_path / "admin", "admin")
    try:
        source = tmp_path / "src"
        _write(source, random.Random(5), 3)
        first = await _backup(a, source, "a")
        await admin.backend.forget([SnapshotId.parse(first)])

        async def run_prune() -> object:
            return await prune(admin, max_unused=MaxUnused(0.0), holder="admin")

        store.during_commit = run_prune
        second = await _backup(a, source, "a")  # every file reused from the forgotten one
        assert store.during_commit is None  # the prune ran inside the commit
        await _verify(_at_folder(folder), tmp_path, {second: tree_state(source)})
    finally:
        await a.close()
        await admin.close()
