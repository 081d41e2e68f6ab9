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
    idx = LocalIndex(tmp_path / "index", files_key=FILES_KEY)
    yield idx
    idx.close()


def cid(n: int) -> ChunkId:
    return ChunkId(n.to_bytes(32, "big"))


PACK = PackId(b"\xaa" * 32)
FILES_KEY = bytes(range(32))


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
    assert index.get_file(long_b) == {"n": 2}
    very_long = "/" + "é" * 2000
    index.put_files([(very_long, {"n": 3})])
    assert index.get_file(very_long) == {"n": 3}


def test_files_cache_accepts_undecodable_file_names(index: LocalIndex) -> None:
    path = b"/data/\xff\xfe.dcm".decode("utf-8", "surrogateescape")
    index.put_files([(path, {"n": 1})])
    assert index.get_file(path) == {"n": 1}


def test_files_cache_holds_no_plaintext_paths_or_attributes(tmp_path: Path) -> None:
    index = LocalIndex(tmp_path / "index", files_key=FILES_KEY)
    record = {"sig": [1], "dicom": {"PatientName": "Doe^Jane", "StudyInstanceUID": "1.2.840.9"}}
    index.put_files([("/export/Doe_Jane/1.2.840.9.dcm", record)])
    index.close()
    data = (tmp_path / "index" / "data.mdb").read_bytes()
    assert b"Doe" not in data and b"1.2.840.9" not in data
    other = LocalIndex(tmp_path / "index", files_key=bytes(32))  # another repository's key
    try:
        assert other.get_file("/export/Doe_Jane/1.2.840.9.dcm") is None
    finally:
        other.close()


def test_without_a_key_no_files_cache_is_kept(tmp_path: Path) -> None:
    index = LocalIndex(tmp_path / "index")
    try:
        index.put_files([("/a", {"n": 1})])
        assert index.get_file("/a") is None
    finally:
        index.close()


def test_a_plaintext_files_cache_from_before_is_dropped(tmp_path: Path) -> None:
    import lmdb

    env = lmdb.open(str(tmp_path / "index"), max_dbs=4)
    with env.begin(write=True, db=env.open_db(b"files")) as txn:
        txn.put(b"/export/Doe_Jane.dcm", b'{"dicom": {"PatientName": "Doe^Jane"}}')
    env.close()
    LocalIndex(tmp_path / "index", files_key=FILES_KEY).close()
    env = lmdb.open(str(tmp_path / "index"), max_dbs=6)
    try:
        with pytest.raises(lmdb.NotFoundError):
            env.open_db(b"files", create=False)
    finally:
        env.close()
