"""The repository through the Python API: init, unlock, write order, index reconciliation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from client.backup import Backup
from client.repository import Repository
from engine.backend import LocalBackend
from engine.errors import RepositoryExists, RepositoryNotFound, TransientError, WrongPassphrase
from engine.ids import ChunkId
from engine.pack import PackBuilder
from engine.packer import read_manifest
from engine.repoconfig import init_repository
from engine.store.faulty import Fault, FaultyStore
from engine.store.local import LocalStore
from engine.store.memory import MemoryStore
from tests.helpers import PASSPHRASE, cheap_kdf


async def open_repo(backend: LocalBackend, cache: Path) -> Repository:
    return await Repository.open(backend, PASSPHRASE, cache)


async def test_init_then_open_with_the_passphrase(tmp_path: Path) -> None:
    backend = LocalBackend(LocalStore(tmp_path / "repo"))
    config = await init_repository(backend, PASSPHRASE, cheap_kdf())
    repo = await open_repo(backend, tmp_path / "cache")
    try:
        assert repo.config == config
        assert (tmp_path / "cache" / config.repo_id).is_dir()
    finally:
        await repo.close()


async def test_open_with_the_wrong_passphrase_raises_wrong_passphrase(tmp_path: Path) -> None:
    backend = LocalBackend(MemoryStore())
    await init_repository(backend, PASSPHRASE, cheap_kdf())
    with pytest.raises(WrongPassphrase):
        await Repository.open(backend, b"wrong", tmp_path)


async def test_init_twice_raises_repository_exists() -> None:
    backend = LocalBackend(MemoryStore())
    await init_repository(backend, PASSPHRASE, cheap_kdf())
    with pytest.raises(RepositoryExists):
        await init_repository(backend, PASSPHRASE, cheap_kdf())


async def test_opening_a_missing_repository_raises_repository_not_found(tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFound):
        await Repository.open(LocalBackend(LocalStore(tmp_path / "none")), PASSPHRASE, tmp_path)


async def test_init_writes_the_key_before_the_config() -> None:
    store = FaultyStore(MemoryStore())
    await init_repository(LocalBackend(store), PASSPHRASE, cheap_kdf())
    puts = [name for op, name in store.calls if op == "put"]
    assert puts[0].startswith("keys/") and puts[-1] == "config"


async def test_failed_pack_upload_leaves_no_index_entry_and_no_snapshot(tmp_path: Path) -> None:
    store = FaultyStore(MemoryStore(), [Fault("put", match=lambda n: n.startswith("packs/"))])
    backend = LocalBackend(store)
    await init_repository(backend, PASSPHRASE, cheap_kdf())
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"some data " * 1000)
    repo = await open_repo(backend, tmp_path / "cache")
    try:
        with pytest.raises(TransientError):
            await Backup(repo, host="h").run([str(src)])
        assert repo.index.chunk_count() == 0  # invariant 1: pack durable before indexed
        assert await backend.list_snapshots() == []
    finally:
        await repo.close()


async def test_sync_index_rebuilds_locations_from_pack_manifests(tmp_path: Path) -> None:
    backend = LocalBackend(LocalStore(tmp_path / "repo"))
    await init_repository(backend, PASSPHRASE, cheap_kdf())
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(bytes(range(256)) * 4000)
    repo = await open_repo(backend, tmp_path / "cache")
    try:
        summary = await Backup(repo, host="h").run([str(src)])
        before = {cid: repo.index.lookup(cid) for cid in _all_chunks(repo)}
        repo.index.clear()
        assert await repo.sync_index() == summary.packs
        assert {cid: repo.index.lookup(cid) for cid in before} == before
        assert await repo.sync_index() == 0  # already indexed: nothing fetched again
    finally:
        await repo.close()


def _all_chunks(repo: Repository) -> list[ChunkId]:
    with repo.index.env.begin(db=repo.index._chunks) as txn:
        return [ChunkId(bytes(k)) for k in txn.cursor().iternext(keys=True, values=False)]


@pytest.mark.parametrize("planted_first", [True, False], ids=["planted-first", "planted-last"])
async def test_a_pack_reusing_chunk_ids_never_displaces_a_good_copy(
    tmp_path: Path, planted_first: bool
) -> None:
    """Whichever order the index learns the packs in, every chunk still reads, and the copy
    that failed authentication is not kept as the chunk's location."""
    backend = LocalBackend(LocalStore(tmp_path / "repo"))
    await init_repository(backend, PASSPHRASE, cheap_kdf())
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.bin").write_bytes(os.urandom(300_000))
    repo = await open_repo(backend, tmp_path / "cache")
    try:
        await Backup(repo).run([str(tmp_path / "src")], [])
        (good,) = [p async for p in backend.list_packs()]
        _, entries = await read_manifest(backend, good)
    finally:
        await repo.close()
    builder = PackBuilder()
    for e in entries:
        builder.add(e.chunk_id, os.urandom(e.length))
    planted, data = builder.finish(sealed_header=os.urandom(64))
    await backend.put_pack(planted, data)

    repo = await open_repo(backend, tmp_path / "fresh-cache")
    try:
        order = [planted, good] if planted_first else [good, planted]
        for pack_id in order:
            size, manifest = await read_manifest(backend, pack_id)
            repo.index.add_pack(pack_id, size, manifest)
        for e in entries:
            await repo.read_chunk(e.chunk_id)
            loc = repo.index.lookup(e.chunk_id)
            assert loc is not None and loc.pack_id == good
            others = {o.pack_id for o in repo.index.others(e.chunk_id)}
            assert planted not in others if planted_first else others == {planted}
        assert any(planted.hex() in w for w in repo.warnings) == planted_first
    finally:
        await repo.close()
