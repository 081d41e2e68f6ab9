"""`dicom-serve`'s DICOMweb side against the `dicomweb-client` package (QIDO-RS and WADO-RS) and
plain HTTP: search answers from the catalogue, every part of a retrieve is the stored file byte
for byte, the token is required, and malformed requests are 4xx answers, never a crash."""

from __future__ import annotations

import email.parser
import email.policy
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from benchmarks.dicom_study import STUDY_UID, UID_ROOT, build_study
from tests.client.servekit import WEB_TOKEN, Served, back_up, dicom_serve
from tests.helpers import Vault

AUTH = {"Authorization": f"Bearer {WEB_TOKEN}"}
MR_SERIES = f"{UID_ROOT}.2.2"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Vault, list[Path]]:
    return back_up(tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def served(study: tuple[Vault, list[Path]]) -> Iterator[Served]:
    with dicom_serve(study[0], "--no-dimse") as s:
        yield s


@pytest.fixture
def client(served: Served) -> DICOMwebClient:
    return DICOMwebClient(served.web, headers=AUTH)


def multipart_parts(response: requests.Response) -> list[tuple[str, str, bytes]]:
    """(content type, transfer-syntax parameter, body) of each part of a multipart response."""
    head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    return [(part.get_content_type(), str(part.get_param("transfer-syntax")),
             bytes(part.get_payload(decode=True))) for part in message.iter_parts()]  # fmt: skip


def test_qido_searches_studies_series_and_instances(client: DICOMwebClient, served: Served) -> None:
    studies = client.search_for_studies(search_filters={"PatientName": "doe^*"})
    assert [s["0020000D"]["Value"] for s in studies] == [[STUDY_UID]]
    assert studies[0]["00080061"]["Value"] == ["CT", "MR"]
    assert studies[0]["00201208"]["Value"] == [7]
    series = client.search_for_series(STUDY_UID, search_filters={"Modality": "MR"})
    assert [s["0020000E"]["Value"] for s in series] == [[MR_SERIES]]
    instances = client.search_for_instances(STUDY_UID, MR_SERIES)
    assert sorted(i["00080018"]["Value"][0] for i in instances) == [
        f"{UID_ROOT}.3.2.{n}" for n in (1, 2, 3, 4)
    ]
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []
    assert len(client.search_for_instances(limit=2, offset=6)) == 1
    record = next(r for r in served.audit() if r["action"] == "QIDO-RS")
    assert (record["who"], record["level"], record["studies"]) == ("viewer", "STUDY", [STUDY_UID])


def test_wado_retrieves_each_instance_exactly_as_stored(
    study: tuple[Vault, list[Path]], served: Served, client: DICOMwebClient
) -> None:
    _, paths = study
    response = requests.get(f"{served.web}/studies/{STUDY_UID}", headers=AUTH, timeout=60)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(
        'multipart/related; type="application/dicom"'
    )
    parts = multipart_parts(response)
    assert sorted(body for _, _, body in parts) == sorted(p.read_bytes() for p in paths)
    assert {(ct, ts) for ct, ts, _ in parts} == {("application/dicom", "1.2.840.10008.1.2.1")}
    series = client.retrieve_series(STUDY_UID, MR_SERIES)
    assert sorted(str(ds.SOPInstanceUID) for ds in series) == [
        f"{UID_ROOT}.3.2.{n}" for n in (1, 2, 3, 4)
    ]
    sop = f"{UID_ROOT}.3.2.1"
    metadata = client.retrieve_instance_metadata(STUDY_UID, MR_SERIES, sop)
    assert metadata["00100010"]["Value"] == [{"Alphabetic": "DOE^JANE"}]
    assert "BulkDataURI" in metadata["7FE00010"]
    record = next(r for r in served.audit() if r["action"] == "WADO-RS")
    assert (record["outcome"], len(record["instances"])) == ("ok", 7)


def test_requests_without_the_token_are_refused_and_audited(served: Served) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
        response = requests.get(f"{served.web}/studies", headers=headers, timeout=30)
        assert response.status_code == 401
    assert served.audit()[-1]["outcome"] == "refused"


def test_malformed_requests_are_answered_and_never_stop_the_server(served: Served) -> None:
    web = served.web
    cases = {
        f"{web}/studies?limit=-1": 400,
        f"{web}/studies?StudyDate=2024-xx": 400,
        f"{web}/studies/1.2.3.4": 404,
        f"{web}/studies/{STUDY_UID}/series/1.2/instances/1.2.3/metadata": 404,
        f"{web}/nothing-here": 404,
    }
    for url, status in cases.items():
        assert requests.get(url, headers=AUTH, timeout=30).status_code == status, url
    response = requests.get(f"{web}/studies?StudyTime=1200&includefield=PatientSex",
                            headers=AUTH, timeout=30)  # fmt: skip
    assert response.status_code == 200 and "StudyTime" in response.headers["Warning"]
    with socket.create_connection(("127.0.0.1", served.ready["web_port"]), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01\x00\xff garbage, not HTTP\r\n\r\n")
        sock.settimeout(5)
        assert b" 400 " in sock.recv(100)
    assert requests.get(f"{web}/studies", headers=AUTH, timeout=30).status_code == 200
    assert served.proc.poll() is None


def test_an_instance_no_site_holds_is_left_out_of_the_retrieve(tmp_path: Path) -> None:
    paths = build_study(tmp_path / "study")
    late = tmp_path / "late"
    late.mkdir()
    shutil.move(paths[-1], late / paths[-1].name)
    vault = Vault(tmp_path / "vault").init()
    vault.json("backup", str(tmp_path / "study"))
    before = set(vault.pack_files())
    vault.json("backup", str(late))
    with dicom_serve(vault, "--no-dimse") as served:
        for pack in set(vault.pack_files()) - before:
            pack.unlink()
        response = requests.get(f"{served.web}/studies/{STUDY_UID}", headers=AUTH, timeout=60)
        record = served.audit()[-1]
    assert response.status_code == 200
    bodies = sorted(body for _, _, body in multipart_parts(response))
    assert bodies == sorted(p.read_bytes() for p in paths[:-1])
    assert (record["action"], record["outcome"]) == ("WADO-RS", "partial")
    assert any("alert" in line for line in served.stderr)
