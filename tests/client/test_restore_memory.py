"""Restore's memory stays within its window of decoded chunks, however many files are in flight."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

from client.backup import Backup
from client.repository import Repository
from client.restore import FILES_IN_FLIGHT, ByteWindow, Restorer
from engine.backend import LocalBackend
from engine.ids import SnapshotId
from engine.repoconfig import init_repository
from engine.store.local import LocalStore
from tests.helpers import PASSPHRASE, cheap_kdf

MiB = 1024 * 1024
WINDOW = 4 * MiB


async def test_chunks_handed_on_are_freed_once_written_so_the_window_bounds_memory(
    tmp_path: Path,
) -> None:
    """Sixteen files of 6 MiB of seeded noise (the same chunks every run) restored through a
    4 MiB window: the bytes Python holds at the peak stay within the window plus the chunks
    being opened (one per opening thread, sealed and plain): 6.8-7.9 MiB. A file that kept its
    last written chunk (or the finished read behind it) while the window let the next ones in
    adds up to a chunk per file in flight: 11.0-12.4 MiB before that was fixed."""
    backend = LocalBackend(LocalStore(tmp_path / "repo"))
    await init_repository(backend, PASSPHRASE, cheap_kdf())
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2 * FILES_IN_FLIGHT):  # several chunks each
        (src / f"f{i:02}").write_bytes(random.Random(i).randbytes(6 * MiB))
    repo = await Repository.open(backend, PASSPHRASE, tmp_path / "cache")
    try:
        summary = await Backup(repo, host="h").run([str(src)])
        restorer = Restorer(repo, tmp_path / "out")
        restorer.window = ByteWindow(WINDOW)
        tracemalloc.start()
        try:
            await restorer.run(SnapshotId.parse(summary.snapshot))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await repo.close()
    assert restorer.summary.errors == [] and restorer.summary.files == 2 * FILES_IN_FLIGHT
    assert peak < WINDOW + 5 * MiB, f"{peak / MiB:.1f} MiB held at the peak"
