"""The pack spool of a backup to a chunk server: a pack is built straight into its spool file and
uploaded from it in pieces, so neither step holds the pack in memory (docs/design.md §2.2), and
a backup killed while a pack is being built leaves only whole, verified packs in the spool.

Real parts throughout: a `dicomvault-server` process on loopback, the client's real repository,
packer, spool and uploader (in a fresh child process, so tracemalloc sees only them), the CLI.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.linkproxy import LinkProxy
from benchmarks.serverkit import REPO, ServerProcess
from client.spool import DAMAGED, Spool, Uploader
from engine import blob
from engine.errors import IntegrityError
from engine.ids import PackId
from engine.index import LocalIndex
from engine.keys import MasterKey
from engine.pack import TARGET_SIZE, verify_pack
from engine.packer import Packer
from engine.remote import RemoteBackend
from tests.client.test_remote import (
    agent,
    assert_restores_bit_exact,
    random_tree,
    server,  # noqa: F401 - the fixture
    wait_until,
)
from tests.helpers import CHEAP_KDF_ARGS, PASSPHRASE, MiB

# The child opens the repository as `backup` does, then measures Python's traced peak (every
# bytes object the pack could be assembled or read into) while the packer builds one 16 MiB pack
# from 1 MiB blobs and flushes it into the spool, and while the uploader sends it; and memray's
# peak (every allocation, native ones too) over the flush. memray is left out of the upload:
# it would count the spool file's read-only map, whose pages are the page cache's.
CHILD = """
import asyncio, json, os, sys, tracemalloc
from pathlib import Path
import memray
from client.repository import Repository
from engine import blob
from engine.pack import TARGET_SIZE
from engine.remote import RemoteBackend

async def main(url, token, passphrase, cache, trace):
    repo = await Repository.open(RemoteBackend(url, token), passphrase.encode(), Path(cache))
    tracemalloc.start()
    while not repo.packer.full:
        data = os.urandom(1 << 20)
        cid = repo.key.chunk_id(data)
        repo.packer.add(cid, blob.seal_plaintext(repo.key, cid, data), len(data), 0)
        del data
    adding = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    with memray.Tracker(trace):  # every malloc and mmap too, by Python or native code
        await repo.packer.flush()
    flushing = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    await repo.uploader.drain()
    uploading = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    (pack_id,) = repo.index.pack_ids()
    print(json.dumps({
        "adding": adding, "flushing": flushing, "uploading": uploading,
        "flushing_native": memray.FileReader(trace).metadata.peak_memory,
        "size": repo.packer.bytes_written, "at_server": await repo.backend.has_pack(pack_id),
        "spooled": repo.uploader.spool.pending(),
    }))
    await repo.close()

asyncio.run(main(*sys.argv[1:]))
"""


def test_a_16_mib_pack_is_built_spooled_and_uploaded_without_being_held_in_memory(
    server: ServerProcess,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Before, the pack was assembled in memory at its flush (16 MiB traced) and read whole
    from the spool to be sent (16 MiB more): a backup's peak RSS to a chunk server sat at the
    128 MiB budget. Now Python holds a blob or two while adding, and one piece while sending."""
    tokens = server.create_repo()
    a = agent(tmp_path / "pc", f"{server.url}/{REPO}", tokens["backup"])
    a.ok("init", *CHEAP_KDF_ARGS)
    args = [f"{server.url}/{REPO}", tokens["backup"], PASSPHRASE.decode(), str(a.cache)]
    args.append(str(tmp_path / "flush.memray"))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=a.env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["size"] > TARGET_SIZE and got["at_server"] and got["spooled"] == []
    peaks = {
        k: f"{got[k] / MiB:.1f} MiB" for k in ("adding", "flushing", "flushing_native", "uploading")
    }
    assert got["adding"] < 4 * MiB, peaks  # the blob being sealed and its plaintext
    assert got["flushing"] < 2 * MiB, peaks  # the manifest and sealed header, not the pack
    assert got["flushing_native"] < 2 * MiB, peaks  # nor in native code (BLAKE3, the write)
    assert got["uploading"] < 2 * MiB, peaks  # one 64 KiB piece and aiohttp's buffers


def spool_files(cache: Path) -> tuple[list[Path], list[Path]]:
    """(packs, temp files) in the one repository's spool under `cache` (none before it exists)."""
    folders = list(cache.glob("*/spool"))
    files = [f for folder in folders for f in folder.iterdir()]
    return [p for p in files if not p.name.startswith(".")], [
        p for p in files if p.name.startswith(".tmp-")
    ]


def test_a_backup_killed_while_a_pack_is_built_leaves_only_whole_verified_packs(
    server: ServerProcess,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A pack being built lives in the spool under a temp name; killed then, the spool holds
    that partial file and whole packs only under pack ids, each matching its name. The next
    run removes the partial file, uploads the whole packs and completes the backup."""
    tokens = server.create_repo()
    tree = random_tree(tmp_path / "tree", [15, 15, 15, 4])  # four packs
    with LinkProxy(server.port, rate=4 * MiB) as link:  # slow: whole packs wait in the spool
        a = agent(tmp_path / "pc1", f"{link.url}/{REPO}", tokens["backup"])
        a.ok("init", *CHEAP_KDF_ARGS)
        proc = a.popen("backup", "--json", str(tree))

        def a_pack_spooled_and_another_half_built() -> bool:
            packs, temps = spool_files(a.cache)
            return bool(packs) and any(t.stat().st_size > 4 * MiB for t in temps)

        wait_until(a_pack_spooled_and_another_half_built, what="a pack being built in the spool")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        packs, temps = spool_files(a.cache)
        assert temps, "the pack being built should have been left half-written"
        for path in packs:
            verify_pack(PackId.parse(path.name), path.read_bytes())
        link.rate = None
        a.json("backup", str(tree))
    assert spool_files(a.cache) == ([], [])
    a = a.direct(server)
    assert a.json("check", "--read-data")["problems"] == []
    assert_restores_bit_exact(a, tree, tmp_path / "restored")


def packer_into(spool: Spool, index: LocalIndex) -> Packer:
    key = MasterKey.generate()
    packer = Packer(key, index, spool)
    for data in (b"first " * 1000, b"second"):
        cid = key.chunk_id(data)
        packer.add(cid, blob.seal_plaintext(key, cid, data), len(data), 0)
    return packer


async def test_a_flushed_pack_is_in_the_spool_under_its_id_and_its_temp_name_is_gone(
    tmp_path: Path,
) -> None:
    spool, index = Spool(tmp_path / "spool"), LocalIndex(tmp_path / "index")
    try:
        packer = packer_into(spool, index)
        assert [p.name[:5] for p in spool.folder.iterdir()] == [".tmp-"]  # being built there
        await packer.flush()
        (pack_id,) = spool.pending()
        assert [p.name for p in spool.folder.iterdir()] == [pack_id.hex()]
        data = (spool.folder / pack_id.hex()).read_bytes()
        assert verify_pack(pack_id, data).size == packer.bytes_written == len(data)
        assert index.has_pack(pack_id)
    finally:
        index.close()


async def test_a_pack_dropped_before_it_is_sealed_leaves_nothing_in_the_spool(
    tmp_path: Path,
) -> None:
    """A repository closed mid-pack (a backup that failed) takes its partial file away; its
    chunks were never indexed, so nothing refers to them."""
    spool, index = Spool(tmp_path / "spool"), LocalIndex(tmp_path / "index")
    try:
        packer = packer_into(spool, index)
        packer.discard()
        assert list(spool.folder.iterdir()) == [] and list(index.pack_ids()) == []
        await packer.flush()  # nothing left to write
        assert spool.pending() == []
    finally:
        index.close()


async def test_opening_the_spool_again_leaves_a_pack_being_built_alone(tmp_path: Path) -> None:
    """A second repository opened on the same cache (`snapshots` while a backup runs) sweeps
    the temp files of dead writers only: the pack being built is locked, and still publishes."""
    spool, index = Spool(tmp_path / "spool"), LocalIndex(tmp_path / "index")
    try:
        packer = packer_into(spool, index)
        dead = spool.folder / ".tmp-from-a-killed-run"
        dead.write_bytes(b"half a pack")
        Spool(spool.folder)
        assert not dead.exists()
        await packer.flush()
        assert len(spool.pending()) == 1 and index.has_pack(spool.pending()[0])
    finally:
        index.close()


async def test_a_spooled_pack_damaged_on_disk_is_set_aside_and_its_chunks_forgotten(
    server: ServerProcess,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The uploader sends the spool file's bytes as they are: a pack whose file rotted after it
    was spooled fails the server's BLAKE3 check (422). Its file no longer matches its name, so
    it leaves the queue for `.damaged/` and its chunks leave the index (the next backup sends
    them again); the error names it. A refused pack whose file is whole stays queued."""
    tokens = server.create_repo()
    spool, index = Spool(tmp_path / "spool"), LocalIndex(tmp_path / "index")
    backend = RemoteBackend(f"{server.url}/{REPO}", tokens["backup"])
    try:
        await packer_into(spool, index).flush()
        (pack_id,) = spool.pending()
        chunks = [bytes(cid) for cid, loc, _ in index.locations() if loc.pack_id == pack_id]
        assert len(chunks) == 2
        path = spool.folder / pack_id.hex()
        data = bytearray(path.read_bytes())
        data[100] ^= 1
        path.write_bytes(bytes(data))
        uploader = Uploader(backend, spool, max_attempts=1, forget=index.drop_packs)
        with pytest.raises(IntegrityError, match=f"{pack_id.hex()}.*set aside"):
            await uploader.drain()
        assert spool.pending() == [] and spool.bytes_pending() == 0
        assert (spool.folder / DAMAGED / pack_id.hex()).read_bytes() == data
        assert not index.has_pack(pack_id) and not any(c in index for c in chunks)
        assert not await backend.has_pack(pack_id)
    finally:
        await backend.close()
        index.close()


def test_a_backup_after_a_spooled_pack_rotted_sends_its_chunks_again(
    server: ServerProcess,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The CLI end to end: a backup killed while packs wait in the spool (slow link), one
    spooled pack damaged on disk meanwhile. The next backup uploads the others, sets the
    damaged one aside and fails naming it (exit 13, nothing committed); the one after reads
    those files again, and everything restores bit-exact."""
    tokens = server.create_repo()
    tree = random_tree(tmp_path / "tree", [15, 15, 15, 4])
    with LinkProxy(server.port, rate=4 * MiB) as link:
        a = agent(tmp_path / "pc1", f"{link.url}/{REPO}", tokens["backup"])
        a.ok("init", *CHEAP_KDF_ARGS)
        proc = a.popen("backup", "--json", str(tree))
        wait_until(lambda: len(spool_files(a.cache)[0]) >= 2, what="two packs in the spool")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        link.rate = None
    a = a.direct(server)
    victim = spool_files(a.cache)[0][-1]
    with victim.open("r+b") as f:
        f.seek(victim.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    failed = a.run("backup", str(tree))
    assert failed.rc == 13 and victim.name in failed.err and "set aside" in failed.err
    assert a.json("snapshots")["snapshots"] == []
    assert (victim.parent / DAMAGED / victim.name).is_file()
    a.json("backup", str(tree))
    assert spool_files(a.cache) == ([], [])
    assert a.json("check", "--read-data")["problems"] == []
    assert_restores_bit_exact(a, tree, tmp_path / "restored")
