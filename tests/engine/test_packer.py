"""The engine's pack writer and manifest reader on a real backend and a real LMDB index, with no
client around them: durable before indexed, a sealed header that lists each chunk, a pack named
in every format error."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import blob
from engine.backend import LocalBackend
from engine.catalogue import PACK_HEADER_AD
from engine.errors import FormatError, TransientError
from engine.index import LocalIndex
from engine.keys import MasterKey
from engine.pack import header_entry, pack_id_of, pack_name
from engine.packer import BackendSink, Packer, read_manifest
from engine.store.faulty import Fault, FaultyStore
from engine.store.memory import MemoryStore

DATA = [b"first chunk " * 100, b"second"]


def packer_on(backend: LocalBackend, index: LocalIndex, key: MasterKey) -> tuple[Packer, list]:
    heard: list[bool] = []
    packer = Packer(
        key,
        index,
        BackendSink(backend.put_pack),
        lambda: heard.append(len(list(index.pack_ids())) == 1),
    )
    for n, data in enumerate(DATA):
        cid = key.chunk_id(data)
        packer.add(cid, blob.seal_plaintext(key, cid, data), len(data), n)
    return packer, heard


async def test_a_flushed_pack_is_at_the_backend_indexed_and_its_header_lists_each_chunk(
    tmp_path: Path,
) -> None:
    key, backend = MasterKey.generate(), LocalBackend(MemoryStore())
    index = LocalIndex(tmp_path / "index")
    try:
        packer, heard = packer_on(backend, index, key)
        await packer.flush()
        (pack_id,) = [p async for p in backend.list_packs()]
        size, entries = await read_manifest(backend, pack_id)
        assert [e.chunk_id for e in entries] == [key.chunk_id(d) for d in DATA]
        assert index.has_pack(pack_id) and heard == [True]  # told after the index has it
        assert (packer.packs_written, packer.bytes_written) == (1, size)
        data = await backend.get_pack_range(pack_id, 0, size)
        sealed = data[entries[-1].offset + entries[-1].length : size - 24 - 40 * len(entries)]
        header = blob.open_plaintext(key, PACK_HEADER_AD, sealed)
        assert header == header_entry(len(DATA[0]), 0) + header_entry(len(DATA[1]), 1)
    finally:
        index.close()


async def test_a_pack_that_fails_to_reach_the_backend_is_not_indexed(tmp_path: Path) -> None:
    store = FaultyStore(MemoryStore(), [Fault("put", match=lambda n: n.startswith("packs/"))])
    key, backend = MasterKey.generate(), LocalBackend(store)
    index = LocalIndex(tmp_path / "index")
    try:
        packer, heard = packer_on(backend, index, key)
        with pytest.raises(TransientError):
            await packer.flush()
        assert list(index.pack_ids()) == [] and heard == [] and packer.packs_written == 0
    finally:
        index.close()


async def test_read_manifest_names_the_pack_whose_trailer_is_bad() -> None:
    store = MemoryStore()  # a pack planted in the store: the backend would refuse it
    junk = b"not a pack at all, but long enough for a trailer"
    pack_id = pack_id_of(junk)
    await store.put(pack_name(pack_id), junk)
    backend = LocalBackend(store)
    with pytest.raises(FormatError, match=f"pack {pack_id.hex()}: not a pack"):
        await read_manifest(backend, pack_id)
