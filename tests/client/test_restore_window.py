"""Restore holds a bounded window of decoded chunks, shared by every file in flight
(issue 15 item 4), and the client's heap returns large frames to the system (client/heap.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from client.backup import Backup
from client.heap import bound_heap
from client.repository import Repository
from client.restore import ByteWindow, Restorer
from engine.backend import LocalBackend
from engine.repoconfig import init_repository
from engine.store.local import LocalStore
from tests.helpers import PASSPHRASE, MiB, cheap_kdf, write_pattern_file


async def _open(root: Path) -> Repository:
    backend = LocalBackend(LocalStore(root / "repo"), str(root / "repo"))
    await init_repository(backend, PASSPHRASE, cheap_kdf())
    return await Repository.open(backend, PASSPHRASE, root / "cache")


async def test_a_window_waits_until_bytes_are_given_back() -> None:
    window = ByteWindow(10)
    assert window.try_take(6) == 6
    assert window.try_take(6) is None  # does not fit beside the first
    waiting = asyncio.create_task(window.take(6))
    await asyncio.sleep(0)
    assert not waiting.done()
    window.give(6)
    assert await asyncio.wait_for(waiting, 60) == 6
    assert window.used == 6 and window.peak == 6


def test_a_chunk_larger_than_the_window_takes_all_of_it_alone() -> None:
    window = ByteWindow(10)
    assert window.try_take(25) == 10
    assert window.try_take(1) is None
    window.give(10)
    assert window.try_take(1) == 1


async def test_restore_keeps_decoded_chunks_within_the_window_and_restores_every_byte(
    tmp_path: Path,
) -> None:
    """Eight multi-chunk files restored at once through a window of about two chunks: without the
    hand-on-first rule they would hold it between them and wait forever."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        write_pattern_file(src / f"f{i}.raw", 6 * MiB + i * 4099, seed=i, random_every=3)
    repo = await _open(tmp_path)
    try:
        summary = await Backup(repo).run([str(src)])
        assert summary.errors == []
        restorer = Restorer(repo, tmp_path / "out")
        restorer.window = ByteWindow(2 * MiB)
        result = await asyncio.wait_for(restorer.run(await repo.resolve("latest")), 300)
    finally:
        await repo.close()
    assert result.errors == [] and result.files == 8
    assert 0 < restorer.window.peak <= 2 * MiB
    assert restorer.window.used == 0  # every byte given back
    out = tmp_path / "out" / str(src).lstrip("/")
    for i in range(8):
        assert (out / f"f{i}.raw").read_bytes() == (src / f"f{i}.raw").read_bytes()


def test_the_heap_policy_is_taken_by_glibc() -> None:
    assert bound_heap()
