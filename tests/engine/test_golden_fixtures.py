"""Golden fixtures (tests/fixtures, made by make_fixtures.py from fixed inputs) still parse.

The expected values are written here, not recomputed: if one of these tests fails, a format
changed; change it deliberately (new version number, new fixtures), never by regenerating alone.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest

from engine import blob
from engine.catalogue import PACK_HEADER_AD, SNAPSHOT_AD, SnapshotBody
from engine.commit import CommitRecord, snapshot_id_of
from engine.errors import IntegrityError, WrongPassphrase
from engine.ids import ChunkId, PackId, SnapshotId
from engine.keys import MasterKey, unwrap
from engine.pack import header_entry, verify_pack

FIXTURES = Path(__file__).parent.parent / "fixtures"
PASSPHRASE = b"golden fixture passphrase"
SECRET = bytes(range(32))
PACK_ID = PackId.parse("803a088740e6af75aa4af1c6722adb897e003a5f508f56277294a3a89bf2aac6")
SNAPSHOT_ID = SnapshotId.parse("57466b1b8202cbad6e783df9d8c2133d254378e9139f4189939c96adf8caa34e")
STORED_ID = ChunkId.parse("503d93f22fb5ca75c8a05e809968bb770c6d715e95c344d1016c2665b0ab24bb")
ZSTD_ID = ChunkId.parse("117f1ba99f4620ea43b45125f846bf119e652fa6bada985cfe4a937082ce417a")
STORED = b"stored chunk: no compression wins on 32 bytes"
ZSTD = b"a compressible line of catalogue text\n" * 64


@pytest.fixture(scope="module")
def key() -> MasterKey:
    return unwrap((FIXTURES / "key-v1.json").read_bytes(), PASSPHRASE)


def test_key_object_v1_unwraps_to_the_fixed_secret(key: MasterKey) -> None:
    assert key.secret == SECRET


def test_key_object_v1_refuses_another_passphrase() -> None:
    with pytest.raises(WrongPassphrase):
        unwrap((FIXTURES / "key-v1.json").read_bytes(), b"not the fixture passphrase")


def test_chunk_ids_v1_are_keyed_blake3_of_the_plaintext(key: MasterKey) -> None:
    assert key.chunk_id(STORED) == STORED_ID
    assert key.chunk_id(ZSTD) == ZSTD_ID


def test_pack_v1_parses_to_its_manifest() -> None:
    data = (FIXTURES / "pack-v1.bin").read_bytes()
    info = verify_pack(PACK_ID, data)
    assert info.size == len(data) == 365
    assert [(e.chunk_id, e.offset, e.length) for e in info.entries] == [
        (STORED_ID, 0, 97),
        (ZSTD_ID, 97, 113),
    ]
    assert (info.header_offset, info.header_len) == (210, 51)
    assert data[-24:-20] == b"DVPK" and data[-20] == 1


def test_pack_v1_blobs_open_to_their_chunks_with_each_codec(key: MasterKey) -> None:
    data = (FIXTURES / "pack-v1.bin").read_bytes()
    entries = verify_pack(PACK_ID, data).entries
    plain = [blob.open_blob(key, e.chunk_id, data[e.offset : e.offset + e.length]) for e in entries]
    assert plain == [STORED, ZSTD]
    codecs = [
        blob.open_plaintext(key, e.chunk_id, data[e.offset : e.offset + e.length])[0]
        for e in entries
    ]
    assert codecs == [blob.Codec.STORED, blob.Codec.ZSTD]


def test_pack_v1_sealed_header_lists_raw_lengths_and_kinds(key: MasterKey) -> None:
    data = (FIXTURES / "pack-v1.bin").read_bytes()
    info = verify_pack(PACK_ID, data)
    sealed = data[info.header_offset : info.header_offset + info.header_len]
    header = blob.open_plaintext(key, PACK_HEADER_AD, sealed)
    assert list(struct.iter_unpack("<IB", header)) == [(len(STORED), 1), (len(ZSTD), 1)]
    assert header == header_entry(len(STORED), 1) + header_entry(len(ZSTD), 1)  # what Packer writes


def test_commit_record_v1_parses_to_its_fields(key: MasterKey) -> None:
    data = (FIXTURES / "commit-v1.json").read_bytes()
    assert snapshot_id_of(data) == SNAPSHOT_ID
    record = CommitRecord.decode(data)
    assert record.time == "2026-11-01T08:30:00Z"
    assert record.agent == "fixture-host"
    assert record.parent == SnapshotId(b"\x11" * 32)
    assert record.refs == (STORED_ID, ZSTD_ID)
    assert record.version == 1 and record.body_ad() == SNAPSHOT_AD  # fields not authenticated
    body = SnapshotBody.decode(blob.open_plaintext(key, record.body_ad(), record.sealed))
    assert body.time == record.time and body.host == "fixture-host"
    assert body.paths == ["/data/dicom"]
    assert body.tree == [(STORED_ID, len(STORED)), (ZSTD_ID, len(ZSTD))]
    assert body.stats == {"files": 2} and body.tags == ["golden"]


SNAPSHOT_V2_ID = SnapshotId.parse(
    "e853c38988a6d125e1c90f7c1a4b571ce0dc991f72a828b982829fbd47f21a9b"
)


def test_commit_record_v2_body_opens_only_under_its_readable_fields(key: MasterKey) -> None:
    data = (FIXTURES / "commit-v2.json").read_bytes()
    assert snapshot_id_of(data) == SNAPSHOT_V2_ID
    record = CommitRecord.decode(data)
    assert (record.version, record.time, record.agent) == (
        2,
        "2026-11-01T08:30:00Z",
        "fixture-host",
    )
    assert record.parent == SnapshotId(b"\x11" * 32) and record.refs == (STORED_ID, ZSTD_ID)
    body = SnapshotBody.decode(blob.open_plaintext(key, record.body_ad(), record.sealed))
    assert body.tree == [(STORED_ID, len(STORED)), (ZSTD_ID, len(ZSTD))]
    edited = dataclasses.replace(record, agent="someone-else")
    with pytest.raises(IntegrityError):
        blob.open_plaintext(key, edited.body_ad(), edited.sealed)
