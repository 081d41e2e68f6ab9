"""Orthanc (Debian's, started as in test_orthanc.py) with `dicom-serve` as a remote modality: it
queries the backup through its REST API (C-FIND) and retrieves a study (C-MOVE back to itself).
The study mixes explicit and implicit VR, JPEG-LS and a bare dataset without a meta group; every
instance must arrive in its own transfer syntax with identical pixel data."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.dicom_study import STUDY_UID
from tests.client.servekit import dicom_serve
from tests.client.test_orthanc import (  # noqa: F401 - the `backed_up` fixture
    Orthanc,
    backed_up,
    describe,
    received,
    run_orthanc,
)
from tests.helpers import Vault


def post(orthanc: Orthanc, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{orthanc.http}{path}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"null")


def test_orthanc_queries_and_retrieves_a_study_from_the_backup(
    backed_up: tuple[Vault, list[Path]],  # noqa: F811
    tmp_path: Path,
) -> None:
    vault, paths = backed_up
    originals = dict(describe(p.read_bytes()) for p in paths)
    with run_orthanc(tmp_path / "pacs", ["1.2.840.10008.1.*"]) as orthanc, dicom_serve(
        vault, "--allow", "ORTHANC@127.0.0.1", "--move-dest", f"ORTHANC=127.0.0.1:{orthanc.dicom}",
        web=False,
    ) as served:  # fmt: skip
        modality = {"AET": "DICOMVAULT", "Host": "127.0.0.1", "Port": served.port}
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{orthanc.http}/modalities/vault", method="PUT",
            data=json.dumps(modality).encode()), timeout=30).read()  # fmt: skip
        post(orthanc, "/modalities/vault/echo", {})
        find = {"Level": "Study", "Query": {"PatientName": "DOE*", "StudyDate": ""}}
        query = post(orthanc, "/modalities/vault/query", find)
        answers = orthanc.json(f"/queries/{query['ID']}/answers?expand&simplify")
        assert [a["StudyInstanceUID"] for a in answers] == [STUDY_UID]
        assert answers[0]["PatientName"] == "DOE^JANE"
        post(orthanc, f"/queries/{query['ID']}/answers/0/retrieve",
             {"TargetAet": "ORTHANC", "Synchronous": True})  # fmt: skip
        assert orthanc.json("/statistics")["CountInstances"] == len(paths)
        assert received(orthanc) == originals
        actions = [(r["action"], r["who"], r["outcome"]) for r in served.audit()]
    assert actions == [("C-FIND", "ORTHANC", "ok"), ("C-MOVE", "ORTHANC", "ok")]
