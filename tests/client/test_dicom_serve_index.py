"""The parts of `dicom-serve` below the network: the catalogue index over a real repository (its
current view and `--as-of`), query matching, the bounded instance cache and the audit log."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from benchmarks.dicom_study import STUDY_UID, build_study, correct_names
from client.dicomserve.audit import AuditLog, AuditRecord, read_audit
from client.dicomserve.index import CatalogueIndex, index_time
from client.dicomserve.instances import InstanceCache
from client.dicomserve.query import BadQuery, Request, answer_dataset, answers
from client.repository import Repository
from tests.helpers import PASSPHRASE, Vault


@pytest.fixture
async def two_snapshots(tmp_path: Path) -> AsyncIterator[tuple[Repository, list[str], Path]]:
    """The study backed up, then again after its patient name was corrected in every file."""
    paths = build_study(tmp_path / "study")
    vault = Vault(tmp_path / "vault").init()
    vault.json("backup", str(tmp_path / "study"))
    vault.json("backup", str(tmp_path / "study"))  # unchanged: no new versions
    correct_names(paths)
    vault.json("backup", str(tmp_path / "study"))
    times = [s["time"] for s in vault.json("snapshots")["snapshots"]]
    repo = await Repository.open(vault.backend(), PASSPHRASE, vault.cache)
    try:
        yield repo, times, tmp_path / "catalogue.sealed"
    finally:
        await repo.close()


def study_names(index: CatalogueIndex, as_of: str | None) -> list[str]:
    reader = index.open_reader()
    try:
        request = Request.parse("STUDY", {"PatientName": "", "StudyInstanceUID": STUDY_UID})
        return [a["PatientName"] for a in answers(reader, request, as_of)]
    finally:
        reader.close()


async def test_the_current_view_is_the_newest_version_at_or_before_as_of(
    two_snapshots: tuple[Repository, list[str], Path],
) -> None:
    repo, times, path = two_snapshots
    index = CatalogueIndex(path, repo.key.serve_key)
    assert await index.refresh(repo) == 3
    assert await index.refresh(repo) == 0  # nothing new
    assert study_names(index, None) == ["DOE^JANE MARIE"]
    assert study_names(index, index_time(datetime.fromisoformat(times[1]))) == ["DOE^JANE"]
    assert study_names(index, index_time(datetime.fromisoformat(times[2]))) == ["DOE^JANE MARIE"]
    assert study_names(index, "2000-01-01T00:00:00.000000Z") == []
    reader = index.open_reader()
    versions = reader.db.execute("SELECT COUNT(*) FROM versions").fetchone()[0]
    reader.close()
    assert versions == 2 * 7  # the unchanged second snapshot added no rows


async def test_the_index_is_sealed_on_disk_and_reopens_without_rebuilding(
    two_snapshots: tuple[Repository, list[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    repo, _, path = two_snapshots
    (path.parent / "catalogue.sqlite").write_bytes(b"SQLite format 3\0 DOE^JANE")  # an old one
    index = CatalogueIndex(path, repo.key.serve_key)
    assert not (path.parent / "catalogue.sqlite").exists()
    assert await index.refresh(repo) == 3
    index.save()
    index.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert b"DOE^JANE" not in path.read_bytes() and b"DV-0001" not in path.read_bytes()
    reopened = CatalogueIndex(path, repo.key.serve_key)
    assert reopened.loaded and await reopened.refresh(repo) == 0  # served from the sealed file
    assert study_names(reopened, None) == ["DOE^JANE MARIE"]
    reopened.close()
    other = CatalogueIndex(path, bytes(32))  # another repository's key: does not open
    assert not other.loaded and "rebuilt" in caplog.text
    other.close()
    sealed = bytearray(path.read_bytes())
    sealed[40] ^= 1
    path.write_bytes(bytes(sealed))
    caplog.clear()
    tampered = CatalogueIndex(path, repo.key.serve_key)
    assert not tampered.loaded and "does not open: discarded, rebuilt" in caplog.text
    assert await tampered.refresh(repo) == 3
    tampered.close()


def test_times_are_normalised_to_utc_text() -> None:
    assert index_time(datetime(2026, 3, 1)) == "2026-03-01T00:00:00.000000Z"
    assert index_time(datetime.fromisoformat("2026-03-01T13:00:00+01:00")) == (
        "2026-03-01T12:00:00.000000Z"
    )


def test_requests_match_like_dicom_and_name_what_they_cannot_match() -> None:
    attrs = {"PatientName": "Doe^Jane", "StudyDate": "20240315", "Modality": "MR",
             "StudyInstanceUID": "1.2.3", "AccessionNumber": "ACC-7781"}  # fmt: skip
    assert Request.parse("study", {"PatientName": "DOE*", "StudyDate": "20240101-"}).matches(attrs)
    assert Request.parse("SERIES", {"Modality": "ct\\mr"}).matches(attrs)
    assert Request.parse("STUDY", {"StudyInstanceUID": "9.9\\1.2.3"}).matches(attrs)
    assert Request.parse("STUDY", {"AccessionNumber": "ACC-77?1"}).matches(attrs)
    assert not Request.parse("STUDY", {"AccessionNumber": "acc-7781"}).matches(attrs)
    assert not Request.parse("STUDY", {"StudyDate": "-20231231"}).matches(attrs)
    request = Request.parse("STUDY", {"StudyTime": "1200", "PatientSex": "", "(0009,0010)": ""})
    assert request.unsupported == ("StudyTime", "PatientSex", "(0009,0010)")
    assert (
        Request.parse("STUDY", {"PatientName": "", "NumberOfStudyRelatedInstances": ""}).unsupported
        == ()
    )
    for level, keys in (("FRAME", {}), ("STUDY", {"StudyDate": "2024-13"})):
        with pytest.raises(BadQuery):
            Request.parse(level, keys)


def test_the_cache_keeps_the_most_recently_used_within_its_byte_limit() -> None:
    cache = InstanceCache(limit=250)
    for key in (b"a", b"b"):
        cache.put(key, bytes(100))
    assert cache.get(b"a") is not None  # now b is the least recently used
    cache.put(b"c", bytes(100))
    assert (b"a" in cache, b"b" in cache, b"c" in cache) == (True, False, True)
    assert cache.bytes == 200
    cache.put(b"huge", bytes(251))
    assert b"huge" not in cache and cache.bytes == 200


def test_the_audit_log_appends_one_fsynced_line_per_record(tmp_path: Path) -> None:
    times = iter(["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"])
    log = AuditLog(tmp_path / "state" / "audit.jsonl", clock=lambda: next(times))
    many = [f"1.2.{n}" for n in range(1500)]
    log.write(AuditRecord("PACS", "10.0.0.5:4242", "C-MOVE", "STUDY", {"PatientID": "X"},
                          studies=["1.2"], instances=many))  # fmt: skip
    log.close()
    log = AuditLog(tmp_path / "state" / "audit.jsonl", clock=lambda: next(times))
    log.write(AuditRecord("viewer", "127.0.0.1:5000", "QIDO-RS", outcome="refused"))
    log.close()
    first, second = read_audit(tmp_path / "state" / "audit.jsonl")
    assert (first["time"], first["who"], first["action"], first["studies"]) == (
        "2026-01-01T00:00:00Z", "PACS", "C-MOVE", ["1.2"])  # fmt: skip
    assert (len(first["instances"]), first["instances_count"]) == (1000, 1500)
    assert (second["who"], second["outcome"]) == ("viewer", "refused")
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "audit.jsonl").st_mode) == 0o600


def test_answers_with_non_ascii_names_are_encoded_as_utf8() -> None:
    from pynetdicom.dsutils import decode, encode

    answer = {"QueryRetrieveLevel": "STUDY", "PatientName": "Müller^Jürgen", "PatientID": "7",
              "ReferencedStudySequence": ""}  # fmt: skip
    ds = answer_dataset(answer)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    wire = encode(ds, True, True)
    assert wire is not None
    assert str(decode(io.BytesIO(wire), True, True).PatientName) == "Müller^Jürgen"
