"""Commit records, catalogue lines and snapshot bodies: round trips and malformed input."""

from __future__ import annotations

import json

import pytest

from engine.catalogue import Entry, SnapshotBody, parse_lines
from engine.commit import CommitRecord, snapshot_id_of, snapshot_name, verify_commit
from engine.errors import FormatError, IntegrityError
from engine.ids import ChunkId, SnapshotId

C1, C2 = ChunkId(b"\x01" * 32), ChunkId(b"\x02" * 32)


def record(**kw: object) -> CommitRecord:
    fields = {
        "time": "2026-01-02T03:04:05Z",
        "agent": "pc-1",
        "parent": None,
        "refs": (C1, C2),
        "sealed": b"\x00opaque\xff",
    }
    return CommitRecord(**{**fields, **kw})  # type: ignore[arg-type]


def test_commit_record_round_trips() -> None:
    rec = record(parent=SnapshotId(b"\x03" * 32))
    data = rec.encode()
    assert CommitRecord.decode(data) == rec
    sid = snapshot_id_of(data)
    assert verify_commit(sid, data) == rec
    assert snapshot_name(sid) == f"snapshots/{sid.hex()}"


def test_commit_record_is_readable_json_for_a_keyless_server() -> None:
    doc = json.loads(record().encode())
    assert doc["refs"] == [C1.hex(), C2.hex()]
    assert doc["version"] == 2 and doc["parent"] is None


@pytest.mark.parametrize(
    "edit",
    [
        {"time": "2026-01-02T03:04:06Z"},
        {"agent": "pc-2"},
        {"parent": SnapshotId(b"\x03" * 32)},
        {"refs": (C2, C1)},
        {"refs": (C1,)},
    ],
)
def test_commit_record_v2_seal_binds_every_readable_field(edit: dict[str, object]) -> None:
    assert record(**edit).body_ad() != record().body_ad()
    assert len(record().body_ad()) == 32


def test_commit_record_v1_seals_under_the_constant_snapshot_ad() -> None:
    assert record(version=1).body_ad() == record(version=1, agent="other").body_ad() == bytes(32)


def test_commit_record_not_matching_its_name_raises_integrity_error() -> None:
    data = record().encode()
    with pytest.raises(IntegrityError):
        verify_commit(SnapshotId(bytes(32)), data)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: b"not json",
        lambda d: json.dumps({**json.loads(d), "version": 3}).encode(),
        lambda d: json.dumps({**json.loads(d), "version": True}).encode(),
        lambda d: json.dumps({**json.loads(d), "time": "yesterday"}).encode(),
        lambda d: json.dumps({**json.loads(d), "agent": "x" * 257}).encode(),
        lambda d: json.dumps({**json.loads(d), "refs": "ab"}).encode(),
        lambda d: json.dumps({**json.loads(d), "sealed": ""}).encode(),
        lambda d: json.dumps([1, 2]).encode(),
        lambda d: json.dumps({**json.loads(d), "refs": ["zz"]}).encode(),
        lambda d: json.dumps({**json.loads(d), "sealed": "***"}).encode(),
        lambda d: json.dumps({k: v for k, v in json.loads(d).items() if k != "agent"}).encode(),
    ],
)
def test_malformed_commit_record_raises_format_error(mangle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FormatError):
        CommitRecord.decode(mangle(record().encode()))


def test_catalogue_entries_round_trip_through_lines() -> None:
    entries = [
        Entry("data/a.dcm", "file", 0o644, 123, 20, [(C1, 10), (C2, 10)], dicom={"Modality": "CT"}),
        Entry("data", "dir", 0o755, 5),
        Entry("data/link", "symlink", 0o777, 7, target="a.dcm"),
        Entry("data/\udcff-odd-name", "file", 0o600, 1),
        Entry("data/ünïcode", "file", 0o600, 1),
    ]
    lines = b"".join(e.encode() for e in entries)
    assert lines.count(b"\n") == len(entries)
    assert list(parse_lines(iter(lines.split(b"\n")))) == entries


def test_snapshot_body_round_trips_and_refuses_other_versions() -> None:
    body = SnapshotBody("2026-01-02T03:04:05Z", "host", ["/data"], [(C1, 100)], {"files": 1}, ["t"])
    assert SnapshotBody.decode(body.encode()) == body
    doc = json.loads(body.encode())
    doc["version"] = 7
    with pytest.raises(FormatError, match="version"):
        SnapshotBody.decode(json.dumps(doc).encode())
    with pytest.raises(FormatError, match="malformed"):
        SnapshotBody.decode(b"[]")


def test_snapshot_body_sources_are_optional_and_unknown_keys_are_ignored() -> None:
    plain = SnapshotBody("2026-01-02T03:04:05Z", "host", ["/data"], [(C1, 100)], {"files": 1})
    assert b"sources" not in plain.encode()  # a body without sources encodes as before
    agent = SnapshotBody(
        "2026-01-02T03:04:05Z", "pc-1", ["/spool/x"], [(C1, 1)], {}, ["agent"], ["dicom:A@h:1"]
    )
    assert SnapshotBody.decode(agent.encode()) == agent
    doc = json.loads(agent.encode()) | {"later_field": 1}  # a newer writer's extra key
    assert SnapshotBody.decode(json.dumps(doc).encode()).sources == ["dicom:A@h:1"]
