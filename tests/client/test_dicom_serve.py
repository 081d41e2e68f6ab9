"""`dicomvault dicom-serve` over DIMSE, against dcmtk's findscu, getscu and movescu (with a
storescp as the C-MOVE destination): the server runs as the CLI a user runs, on loopback.

Every retrieved dataset must equal the source file's dataset byte for byte; bad input (unknown
levels, unsupported keys, garbage on the socket, a pack missing at every site) must never stop
the server, and every query and retrieve must be in the audit trail.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import UID
from pynetdicom.dsutils import split_dataset

from benchmarks.dicom_study import STUDY_UID, UID_ROOT, _storescp, build_study, free_port
from tests.client.servekit import Served, back_up, dcmtk, dicom_serve, raw_store_scp
from tests.client.test_orthanc import JPEG_LS_LOSSLESS, Instance, build_mixed_study, describe
from tests.helpers import Vault

CT_SERIES = f"{UID_ROOT}.2.1"
MR_SERIES = f"{UID_ROOT}.2.2"
EXPLICIT_VR_LE, IMPLICIT_VR_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Vault, list[Path]]:
    return back_up(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def served(study: tuple[Vault, list[Path]]) -> Iterator[Served]:
    vault, _ = study
    with dicom_serve(vault, "--allow", "DVTEST", web=False) as s:
        yield s


def dataset_bytes(path: Path) -> bytes:
    """The dataset after the file meta group: what goes on the wire."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def by_sop(paths: list[Path]) -> dict[str, bytes]:
    """SOP Instance UID → dataset bytes."""
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(p)
            for p in paths}  # fmt: skip


def pixels(paths: list[Path]) -> dict[str, Instance]:
    """SOP Instance UID → (transfer syntax, SHA-256 of the pixel data as encoded): what a dcmtk
    receiver must keep (it re-encodes the rest of the header as it writes the file)."""
    return dict(describe(p.read_bytes()) for p in paths)


def find(
    served: Served, out: Path, *keys: str, aet: str = "DVTEST"
) -> tuple[subprocess.CompletedProcess[str], list[pydicom.Dataset]]:
    out.mkdir(parents=True, exist_ok=True)
    args = ["-v", "-S", "-aet", aet, "-aec", "DICOMVAULT", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = dcmtk("findscu", *args, "127.0.0.1", str(served.port))
    return result, [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_echo_and_find_at_every_level_answer_from_the_catalogue(
    served: Served, tmp_path: Path
) -> None:
    assert dcmtk("echoscu", "-aet", "DVTEST", "127.0.0.1", str(served.port)).returncode == 0
    _, patients = find(served, tmp_path / "p", "QueryRetrieveLevel=PATIENT", "PatientID",
                       "PatientName", "NumberOfPatientRelatedStudies")  # fmt: skip
    assert [(str(p.PatientID), str(p.PatientName), int(p.NumberOfPatientRelatedStudies))
            for p in patients] == [("DV-0001", "DOE^JANE", 1)]  # fmt: skip
    _, studies = find(served, tmp_path / "s", "QueryRetrieveLevel=STUDY", "PatientName=doe*",
                      "StudyDate=20240101-20241231", "StudyInstanceUID", "ModalitiesInStudy",
                      "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries")  # fmt: skip
    assert len(studies) == 1 and studies[0].StudyInstanceUID == STUDY_UID
    assert list(studies[0].ModalitiesInStudy) == ["CT", "MR"]
    assert (studies[0].NumberOfStudyRelatedInstances, studies[0].NumberOfStudyRelatedSeries) == (
        7,
        2,
    )
    _, by_modality = find(served, tmp_path / "m", "QueryRetrieveLevel=STUDY",
                          "ModalitiesInStudy=MR", "NumberOfStudyRelatedInstances")  # fmt: skip
    assert [(list(s.ModalitiesInStudy), s.NumberOfStudyRelatedInstances) for s in by_modality] == [
        (["CT", "MR"], 7)
    ]  # the whole study, not only its MR series
    _, series = find(served, tmp_path / "se", "QueryRetrieveLevel=SERIES",
                     f"StudyInstanceUID={STUDY_UID}", "Modality=MR", "SeriesInstanceUID",
                     "NumberOfSeriesRelatedInstances")  # fmt: skip
    assert [(s.SeriesInstanceUID, s.NumberOfSeriesRelatedInstances) for s in series] == [
        (MR_SERIES, 4)
    ]
    _, images = find(served, tmp_path / "i", "QueryRetrieveLevel=IMAGE",
                     f"SeriesInstanceUID={CT_SERIES}", "SOPInstanceUID")  # fmt: skip
    assert sorted(i.SOPInstanceUID for i in images) == [f"{UID_ROOT}.3.1.{n}" for n in (1, 2, 3)]
    _, none = find(served, tmp_path / "n", "QueryRetrieveLevel=STUDY", "PatientID=NOBODY")
    assert none == []
    record = [r for r in served.audit() if r["action"] == "C-FIND" and r["level"] == "SERIES"][-1]
    assert (record["who"], record["outcome"], record["keys"]["Modality"]) == ("DVTEST", "ok", "MR")
    assert record["series"] == [MR_SERIES] and record["address"].startswith("127.0.0.1:")


def test_unsupported_keys_are_answered_with_a_warning_status(
    served: Served, tmp_path: Path
) -> None:
    result, studies = find(served, tmp_path, "QueryRetrieveLevel=STUDY", "StudyTime=1200-1300",
                           "PatientSex", "StudyInstanceUID")  # fmt: skip
    assert len(studies) == 1 and studies[0].StudyInstanceUID == STUDY_UID
    assert studies[0].PatientSex == "" and studies[0].StudyTime == ""
    assert "WarningUnsupportedOptionalKeys" in result.stdout + result.stderr
    record = served.audit()[-1]
    assert "StudyTime" in record["detail"] and "PatientSex" in record["detail"]


def test_bad_requests_get_failure_statuses_and_the_server_keeps_answering(
    served: Served, tmp_path: Path
) -> None:
    result, answers = find(served, tmp_path / "a", "QueryRetrieveLevel=FRAME", "PatientID")
    assert answers == [] and "DataSetDoesNotMatchSOPClass" in result.stderr
    result, answers = find(served, tmp_path / "b", "QueryRetrieveLevel=STUDY", "StudyDate=2024-x")
    assert answers == [] and "DataSetDoesNotMatchSOPClass" in result.stderr
    for junk in (b"\x01\x00\x00\x00\xff\xff\xff\xff" + b"x" * 64, b"GET / HTTP/1.1\r\n\r\n", b""):
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            with contextlib.suppress(OSError):
                sock.recv(100)
    assert dcmtk("echoscu", "-aet", "DVTEST", "127.0.0.1", str(served.port)).returncode == 0
    assert served.proc.poll() is None


def test_bad_get_and_move_identifiers_fail_and_are_audited(served: Served, tmp_path: Path) -> None:
    for tool, action, out in (
        ("getscu", "C-GET", ["-od", str(tmp_path)]),
        ("movescu", "C-MOVE", []),
    ):
        dcmtk(tool, "-S", "-aet", "DVTEST", "-aec", "DICOMVAULT", *out,
              "-k", "QueryRetrieveLevel=FRAME", "-k", f"StudyInstanceUID={STUDY_UID}",
              "127.0.0.1", str(served.port))  # fmt: skip
        record = served.audit()[-1]  # written before the failure status goes out
        assert (record["action"], record["outcome"]) == (action, "failed"), record
        assert "FRAME" in record["detail"], record
    assert list(tmp_path.iterdir()) == []
    assert served.proc.poll() is None


def test_calling_ae_titles_and_hosts_outside_the_allow_list_are_refused(
    study: tuple[Vault, list[Path]], served: Served, tmp_path: Path
) -> None:
    result, answers = find(served, tmp_path / "x", "QueryRetrieveLevel=STUDY", aet="STRANGER")
    assert answers == [] and result.returncode != 0
    record = served.await_audit("association")
    assert (record["who"], record["outcome"]) == ("STRANGER", "refused")
    vault, _ = study
    with dicom_serve(vault, "--allow", "DVTEST@10.9.9.9", web=False) as other:
        _, answers = find(other, tmp_path / "y", "QueryRetrieveLevel=STUDY", "StudyInstanceUID")
        assert answers == []
        assert other.audit()[-1]["outcome"] == "refused"


def test_get_sends_every_instance_with_identical_pixels(
    study: tuple[Vault, list[Path]], served: Served, tmp_path: Path
) -> None:
    vault, paths = study
    result = dcmtk("getscu", "-S", "-aet", "DVTEST", "-aec", "DICOMVAULT", "-od", str(tmp_path),
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY_UID}",
                   "127.0.0.1", str(served.port))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert pixels(sorted(tmp_path.iterdir())) == pixels(paths)
    record = served.audit()[-1]
    assert (record["action"], record["outcome"], len(record["instances"])) == ("C-GET", "ok", 7)

    # The same retrieval, sealed in the repository (`dicomvault audit`), written alongside.
    def sealed() -> list[dict[str, Any]]:
        return [e for e in vault.json("audit")["events"] if e["action"] == "dicom-serve"
                and e["studies"] == [STUDY_UID] and "C-GET by DVTEST" in e["detail"]
                and "7 instances, ok" in e["detail"]]  # fmt: skip

    deadline = time.monotonic() + 30
    while not sealed() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sealed()


def test_instances_in_syntaxes_the_get_scu_did_not_take_fail_alone(tmp_path: Path) -> None:
    """getscu offers one context per SOP class (uncompressed syntaxes); dicom-serve takes
    explicit VR for it and never transcodes, so the implicit VR and JPEG-LS instances fail,
    each alone and named in the audit, and the others arrive."""
    paths = build_mixed_study(tmp_path / "study")
    vault = Vault(tmp_path / "vault").init()
    vault.json("backup", str(tmp_path / "study"))
    (tmp_path / "got").mkdir()
    with dicom_serve(vault, "--allow", "DVTEST", web=False) as served:
        dcmtk("getscu", "-S", "-aet", "DVTEST", "-aec", "DICOMVAULT", "-od", str(tmp_path / "got"),
              "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY_UID}",
              "127.0.0.1", str(served.port))  # fmt: skip
        record = served.audit()[-1]
    originals = pixels(paths)
    refused = sorted(sop for sop, i in originals.items() if i.syntax != EXPLICIT_VR_LE)
    assert {originals[sop].syntax for sop in refused} == {IMPLICIT_VR_LE, JPEG_LS_LOSSLESS}
    got = pixels(sorted((tmp_path / "got").iterdir()))
    assert got == {sop: i for sop, i in originals.items() if sop not in refused}
    assert record["outcome"] == "partial"
    count, _, listed = record["detail"].partition(" instances not stored: ")
    assert count == f"{len(refused)} of {len(paths)}" and sorted(listed.split(", ")) == refused


def test_move_sends_a_series_to_a_known_destination_only(
    study: tuple[Vault, list[Path]], tmp_path: Path
) -> None:
    vault, paths = study
    port = free_port()
    (tmp_path / "pacs").mkdir()
    with (
        _storescp(tmp_path / "pacs", port),
        dicom_serve(
            vault, "--allow", "DVTEST", "--move-dest", f"PACS=127.0.0.1:{port}", web=False
        ) as served,
    ):
        move = ["-S", "-aet", "DVTEST", "-aec", "DICOMVAULT", "-k", "QueryRetrieveLevel=SERIES",
                "-k", f"SeriesInstanceUID={MR_SERIES}", "127.0.0.1", str(served.port)]  # fmt: skip
        result = dcmtk("movescu", "-aem", "PACS", *move)
        assert result.returncode == 0, result.stderr
        unknown = dcmtk("movescu", "-aem", "ELSEWHERE", *move)
        assert "MoveDestinationUnknown" in unknown.stderr
        records = served.audit()
    mr = [p for p in paths if p.name.startswith("MR")]
    assert pixels(sorted((tmp_path / "pacs").iterdir())) == pixels(mr)
    assert [(r["action"], r["outcome"]) for r in records] == [
        ("C-MOVE", "ok"),
        ("C-MOVE", "failed"),
    ]
    assert "ELSEWHERE" in records[1]["detail"]


def test_move_puts_every_dataset_on_the_wire_exactly_as_stored(
    study: tuple[Vault, list[Path]], tmp_path: Path
) -> None:
    vault, paths = study
    with (
        raw_store_scp(tmp_path / "raw") as port,
        dicom_serve(
            vault, "--allow", "DVTEST", "--move-dest", f"RAWSCP=127.0.0.1:{port}", web=False
        ) as served,
    ):
        result = dcmtk("movescu", "-S", "-aet", "DVTEST", "-aec", "DICOMVAULT", "-aem", "RAWSCP",
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY_UID}",
                       "127.0.0.1", str(served.port))  # fmt: skip
        assert result.returncode == 0, result.stderr
    received = {p.stem: dataset_bytes(p) for p in (tmp_path / "raw").iterdir()}
    assert received == by_sop(paths)


def test_an_instance_whose_pack_is_missing_everywhere_fails_alone(
    tmp_path: Path,
) -> None:
    paths = build_study(tmp_path / "study")
    late = tmp_path / "late"
    late.mkdir()
    shutil.move(paths[-1], late / paths[-1].name)
    (tmp_path / "got").mkdir()
    vault = Vault(tmp_path / "vault").init()
    vault.json("backup", str(tmp_path / "study"))
    before = set(vault.pack_files())
    vault.json("backup", str(late))
    with dicom_serve(vault, "--allow", "DVTEST", web=False) as served:
        for pack in set(vault.pack_files()) - before:  # lost after indexing: the late instance
            pack.unlink()
        result = dcmtk("getscu", "-S", "-aet", "DVTEST", "-aec", "DICOMVAULT", "-od",
                       str(tmp_path / "got"), "-k", "QueryRetrieveLevel=STUDY",
                       "-k", f"StudyInstanceUID={STUDY_UID}", "127.0.0.1", str(served.port),
                       )  # fmt: skip
        record = served.audit()[-1]
    got = pixels(sorted((tmp_path / "got").iterdir()))
    assert got == pixels(paths[:-1])
    assert "warning" in (result.stdout + result.stderr).lower()
    assert (record["outcome"], record["detail"]) == (
        "partial",
        f"1 of 7 instances not stored: {UID_ROOT}.3.2.4",
    )
    assert any("alert" in line and f"{UID_ROOT}.3.2.4" in line for line in served.stderr)


def _second_study(paths: list[Path], folder: Path) -> str:
    """The same patient's later study: the same images under new study and instance UIDs."""
    folder.mkdir()
    uid = f"{UID_ROOT}.77"
    for n, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{uid}.{n + 1}")
        ds.save_as(folder / path.name)
    return uid


def test_prefetch_reads_the_patients_other_studies_into_the_cache(tmp_path: Path) -> None:
    paths = build_study(tmp_path / "first")
    second = _second_study(paths, tmp_path / "second")
    vault = Vault(tmp_path / "vault").init()
    vault.json("backup", str(tmp_path / "first"))
    before = set(vault.pack_files())
    vault.json("backup", str(tmp_path / "second"))
    with dicom_serve(vault, "--allow", "DVTEST", "--prefetch-patient", web=False) as served:
        get = ["-S", "-aet", "DVTEST", "-aec", "DICOMVAULT", "-k", "QueryRetrieveLevel=STUDY"]
        address = ["127.0.0.1", str(served.port)]
        dcmtk("getscu", *get, "-od", str(tmp_path), "-k", f"StudyInstanceUID={STUDY_UID}", *address)
        prefetch = served.await_audit("prefetch")  # it runs after the retrieve
        for pack in set(vault.pack_files()) - before:  # the second study's own chunks
            pack.unlink()
        (tmp_path / "got").mkdir()
        dcmtk("getscu", *get, "-od", str(tmp_path / "got"), "-k", f"StudyInstanceUID={second}",
              *address)  # fmt: skip
    assert len(list((tmp_path / "got").iterdir())) == len(paths)
    assert (prefetch["who"], prefetch["keys"], prefetch["studies"]) == (
        "dicom-serve", {"PatientID": "DV-0001"}, [second])  # fmt: skip


def test_the_state_folder_holds_no_patient_data_in_plaintext_and_reopens_sealed(
    study: tuple[Vault, list[Path]], tmp_path: Path
) -> None:
    """Issue 18 item 4: the catalogue index rests on disk sealed; a restart answers from it, and
    a tampered one is rebuilt with a warning."""
    vault, _ = study
    state = tmp_path / "state"
    keys = ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={STUDY_UID}", "PatientName", "PatientID")
    for run, name in enumerate(("first", "restart")):
        with dicom_serve(
            vault, "--allow", "DVTEST", "--state-dir", str(state), web=False
        ) as served:
            _, studies = find(served, tmp_path / name, *keys)
            assert [(str(s.PatientName), str(s.PatientID)) for s in studies] == [
                ("DOE^JANE", "DV-0001")
            ], run
        assert not any("rebuilt" in line for line in served.stderr), served.stderr
    files = [p for p in state.rglob("*") if p.is_file()]
    for path in files:
        for secret in (b"DOE^JANE", b"DV-0001", b"DOE", b"19700101"):
            assert secret not in path.read_bytes(), (path.name, secret)
    assert {p.name for p in files} >= {"catalogue.sealed", "audit.jsonl"}
    sealed = state / "catalogue.sealed"
    sealed.write_bytes(sealed.read_bytes()[:-1] + bytes([sealed.read_bytes()[-1] ^ 1]))
    with dicom_serve(vault, "--allow", "DVTEST", "--state-dir", str(state), web=False) as served:
        _, studies = find(served, tmp_path / "tampered", *keys)
        assert [str(s.PatientID) for s in studies] == ["DV-0001"]
    assert any("does not open: discarded, rebuilt" in line for line in served.stderr)
