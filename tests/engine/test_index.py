"""The client's LMDB index (real LMDB in tmp_path): chunk locations, packs, files cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.ids import ChunkId, PackId
from engine.index import UNKNOWN_PACK, LocalIndex, Location
from engine.pack import ManifestEntry


@pytest.fixture
def index(tmp_path: Path) -> Iterator[LocalIndex]:
    idx = LocalIndex(tmp_path / "index")
    yield idx
    idx.close()


def cid(n: int) -> ChunkId:
    return ChunkId(n.to_bytes(32, "big"))


PACK = PackId(b"\xaa" * 32)


def test_add_pack_then_lookup_gives_each_chunk_location(index: LocalIndex) -> None:
    entries = [ManifestEntry(cid(1), 0, 100), ManifestEntry(cid(2), 100, 50)]
    index.add_pack(PACK, 1000, entries)
    assert index.lookup(cid(1)) == Location(PACK, 0, 100)
    assert index.lookup(cid(2)) == Location(PACK, 100, 50)
    assert index.lookup(cid(2)).known
    assert cid(1) in index and cid(3) not in index
    assert index.lookup(cid(3)) is None
    assert index.has_pack(PACK)
    assert list(index.pack_ids()) == [PACK]
    assert index.chunk_count() == 2


def test_index_survives_reopening(tmp_path: Path) -> None:
    idx = LocalIndex(tmp_path / "index")
    idx.add_pack(PACK, 10, [ManifestEntry(cid(1), 0, 10)])
    idx.close()
    idx = LocalIndex(tmp_path / "index")
    try:
        assert idx.lookup(cid(1)) == Location(PACK, 0, 10)
    finally:
        idx.close()


def test_remote_chunks_are_known_without_a_location(index: LocalIndex) -> None:
    index.add_remote([cid(5)])
    assert cid(5) in index
    loc = index.lookup(cid(5))
    assert loc is not None and loc.pack_id == UNKNOWN_PACK and not loc.known


def test_add_remote_never_hides_a_known_location(index: LocalIndex) -> None:
    index.add_pack(PACK, 10, [ManifestEntry(cid(1), 0, 10)])
    index.add_remote([cid(1)])
    assert index.lookup(cid(1)) == Location(PACK, 0, 10)


def test_clear_forgets_chunks_packs_and_files(index: LocalIndex) -> None:
    index.add_pack(PACK, 10, [ManifestEntry(cid(1), 0, 10)])
    index.put_files([("/a", {"sig": [1]})])
    index.clear()
    assert index.lookup(cid(1)) is None
    assert not index.has_pack(PACK)
    assert index.chunk_count() == 0
    assert index.get_file("/a") is None


def test_files_cache_round_trips_records(index: LocalIndex) -> None:
    record = {"sig": [1, 2, 3, 4], "chunks": [[cid(1).hex(), 10]], "dicom": {"Modality": "CT"}}
    index.put_files([("/data/a.dcm", record)])
    assert index.get_file("/data/a.dcm") == record
    assert index.get_file("/data/b.dcm") is None


def test_files_cache_handles_paths_longer_than_lmdb_keys(index: LocalIndex) -> None:
    stem = "/" + "/".join(["x" * 100] * 5)  # 505 bytes: over LMDB's 511-byte key limit with more
    long_a, long_b = stem + "/a.dcm", stem + "/b.dcm"
    assert len(long_a.encode()) > 500
    index.put_files([(long_a, {"n": 1}), (long_b, {"n": 2})])
    assert index.get_file(long_a) == {"n": 1}
    assert index.get_file(long_b) == {"n": 2}  # same 480-byte prefix, different record
    very_long = "/" + "é" * 2000
    index.put_files([(very_long, {"n": 3})])
    assert index.get_file(very_long) == {"n": 3}


def test_files_cache_accepts_undecodable_file_names(index: LocalIndex) -> None:
    path = b"/data/\xff\xfe.dcm".decode("utf-8", "surrogateescape")
    index.put_files([(path, {"n": 1})])
    assert index.get_file(path) == {"n": 1}
