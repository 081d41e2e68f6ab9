"""The client's LMDB index (real LMDB in tmp_path): chunk locations, packs, files cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import index as index_module
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


# Bounded write transactions (docs/design.md §14, "Memory"): LMDB keeps as many page buffers as
# its largest write transaction dirtied until the environment closes, so no operation may
# write more than WRITE_BATCH rows at once, whatever the size of the pack or of the index.


class _Txn:
    """A real LMDB write transaction that counts the rows it writes (puts and deletes)."""

    def __init__(self, env: _CountingEnv, txn: Any) -> None:
        self.env, self.txn, self.rows = env, txn, 0

    def put(self, *args: Any, **kwargs: Any) -> Any:
        self.rows += 1
        return self.txn.put(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        self.rows += 1
        return self.txn.delete(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.txn, name)

    def __enter__(self) -> _Txn:
        self.txn.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        self.env.largest = max(self.env.largest, self.rows)
        self.env.writes += 1
        if exc[0] is None and self.env.writes == self.env.crash_at:
            self.txn.__exit__(RuntimeError, RuntimeError("crash"), None)  # aborted
            raise RuntimeError("crash")
        return self.txn.__exit__(*exc)


class _CountingEnv:
    """The index's real environment; its write transactions are counted (`largest`: the most
    rows one of them wrote) and the `crash_at`-th one can be made to fail (a kill midway)."""

    def __init__(self, env: Any) -> None:
        self.inner, self.largest, self.writes = env, 0, 0
        self.crash_at: int | None = None

    def begin(self, write: bool = False, **kwargs: Any) -> Any:
        txn = self.inner.begin(write=write, **kwargs)
        return _Txn(self, txn) if write else txn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def counted(index: LocalIndex, monkeypatch: pytest.MonkeyPatch) -> _CountingEnv:
    monkeypatch.setattr(index_module, "WRITE_BATCH", 3)
    monkeypatch.setattr(index_module, "SCAN_SLICE", 4)
    env = _CountingEnv(index.env)
    monkeypatch.setattr(index, "env", env)
    return env


OTHER = PackId(b"\xbb" * 32)


def test_a_large_pack_is_indexed_in_bounded_transactions(
    index: LocalIndex, counted: _CountingEnv
) -> None:
    entries = [ManifestEntry(cid(n), 10 * n, 10) for n in range(10, 0, -1)]
    index.add_pack(PACK, 1000, entries)
    assert counted.largest <= 3 + 2  # WRITE_BATCH rows, and the pack's row and its marker
    assert counted.writes == 4
    assert all(index.lookup(cid(n)) == Location(PACK, 10 * n, 10) for n in range(1, 11))
    assert dict(index.pack_sizes()) == {PACK: 1000} and index.indexed_packs() == {PACK}


def test_a_pack_half_indexed_by_a_killed_sync_is_unlisted_but_dropped_when_gone(
    index: LocalIndex, counted: _CountingEnv
) -> None:
    entries = [ManifestEntry(cid(n), 10 * n, 10) for n in range(1, 11)]
    counted.crash_at = 3
    with pytest.raises(RuntimeError):
        index.add_pack(PACK, 1000, entries)
    assert not index.has_pack(PACK) and index.indexed_packs() == {PACK}  # the next sync adds it
    assert index.lookup(cid(1)) == Location(PACK, 10, 10)
    index.drop_packs({PACK})  # gone meanwhile: no row is left pointing into it
    assert index.indexed_packs() == set() and index.chunk_count() == 0
    counted.crash_at = None
    index.add_pack(PACK, 1000, entries)  # or listed: added again, idempotently
    assert index.has_pack(PACK) and index.chunk_count() == 10


def _two_copies(index: LocalIndex, ids: list[ChunkId], others: list[ChunkId]) -> None:
    """`ids` in PACK (10 bytes each), then `others` again in OTHER (5 bytes each)."""
    index.add_pack(PACK, 1000, [ManifestEntry(c, 10 * i, 10) for i, c in enumerate(ids)])
    index.add_pack(OTHER, 500, [ManifestEntry(c, 5 * i, 5) for i, c in enumerate(others)])


def test_dropping_packs_falls_back_to_other_copies_in_bounded_transactions(
    index: LocalIndex, counted: _CountingEnv
) -> None:
    ids = [cid(n) for n in range(1, 14)]
    _two_copies(index, ids, ids[:4])
    index.add_remote([cid(20), cid(21)])
    counted.largest = 0
    index.drop_packs({PACK})
    assert counted.largest <= 3 * 2  # a location and its others row per chunk
    assert dict(index.pack_sizes()) == {OTHER: 500}
    for i, c in enumerate(ids):
        assert index.lookup(c) == (Location(OTHER, 5 * i, 5) if i < 4 else None)
        assert index.others(c) == []
    counted.largest = 0
    assert index.drop_unknown() == 2 and index.chunk_count() == 4
    assert counted.largest <= 3


def test_a_dropped_pack_that_was_the_other_copy_leaves_the_location(
    index: LocalIndex, counted: _CountingEnv
) -> None:
    ids = [cid(n) for n in range(1, 8)]
    _two_copies(index, ids, ids)
    index.drop_packs({OTHER})
    assert all(index.lookup(c) == Location(PACK, 10 * i, 10) for i, c in enumerate(ids))
    assert all(index.others(c) == [] for c in ids) and index.indexed_packs() == {PACK}


def test_many_preferred_locations_are_written_in_bounded_transactions(
    index: LocalIndex, counted: _CountingEnv
) -> None:
    ids = [cid(n) for n in range(1, 11)]
    _two_copies(index, ids, ids)
    counted.largest = 0
    index.prefer_many((c, Location(OTHER, 5 * i, 5)) for i, c in enumerate(ids))
    assert counted.largest <= 3 * 2  # a location and its others row per move
    assert all(index.lookup(c) == Location(OTHER, 5 * i, 5) for i, c in enumerate(ids))
    assert all(index.others(c) == [Location(PACK, 10 * i, 10)] for i, c in enumerate(ids))
