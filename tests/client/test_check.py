"""`check --read-data` through the Python API: packs are read in windows, never whole."""

from __future__ import annotations

import os
from pathlib import Path

from client.backup import Backup
from client.check import PACK_WINDOW, check
from client.repository import Repository
from engine.backend import LocalBackend
from engine.repoconfig import init_repository
from engine.store.faulty import FaultyStore
from engine.store.local import LocalStore
from tests.helpers import PASSPHRASE, cheap_kdf


async def test_read_data_streams_each_pack_in_windows_and_verifies_every_byte(
    tmp_path: Path,
) -> None:
    store = FaultyStore(LocalStore(tmp_path / "repo"))
    backend = LocalBackend(store)
    await init_repository(backend, PASSPHRASE, cheap_kdf())
    src = tmp_path / "src"
    src.mkdir()
    (src / "noise.bin").write_bytes(os.urandom(3 * PACK_WINDOW))  # one pack of several windows
    repo = await Repository.open(backend, PASSPHRASE, tmp_path / "cache")
    try:
        await Backup(repo, host="h").run([str(src)])
        packs = [p async for p in backend.list_packs()]
        sizes = [await store.size(f"packs/{p.hex()[:2]}/{p.hex()}") for p in packs]
        store.calls.clear()
        report = await check(repo, read_data=True)
    finally:
        await repo.close()
    assert report.problems == [] and report.bytes_verified == sum(sizes)
    pack_reads = [op for op, name in store.calls if name.startswith("packs/")]
    assert "get" not in pack_reads  # no pack is ever held whole
    assert pack_reads.count("get_range") >= 3 + 2  # windows, the tail, trailer and manifest
