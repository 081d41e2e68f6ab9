"""`restore --study --to-pacs` against a real PACS: Debian's Orthanc, started here in the
foreground with a generated config (free ports, storage in tmp, loopback only).

Orthanc receives the study by C-STORE; the test reads it back through Orthanc's REST API and
compares instance counts, transfer syntaxes and pixel-data hashes with the originals. Orthanc
missing is a failure, not a skip: `make setup-system` installs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom.dsutils import split_dataset

from benchmarks.dicom_study import STUDY_UID, build_study, free_port, source_path, stop
from tests.client.servekit import back_up
from tests.helpers import Vault, assert_one_line_error

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
UNCOMPRESSED = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


@dataclass(frozen=True)
class Orthanc:
    http: int
    dicom: int
    log: Path

    @property
    def peer(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.dicom}"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=30) as r:
            body: bytes = r.read()
            return body

    def json(self, path: str) -> Any:
        return json.loads(self.get(path))


def _config(root: Path, http: int, dicom: int, syntaxes: list[str]) -> dict[str, Any]:
    """Keys as Orthanc 1.10 names them in /etc/orthanc/orthanc.json."""
    return {
        "Name": "dicomvault-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "Plugins": [],  # the system plugins folder is not part of the test
        "LuaScripts": [],
        "HttpServerEnabled": True,
        "HttpPort": http,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "WebDavEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "AcceptedTransferSyntaxes": syntaxes,
        "StorageCompression": False,
        "DicomScpTimeout": 30,
    }


@contextlib.contextmanager
def run_orthanc(
    root: Path, syntaxes: list[str], extra: dict[str, Any] | None = None
) -> Iterator[Orthanc]:
    """Orthanc in the foreground; `extra` adds or overrides configuration keys."""
    if not Path(ORTHANC).is_file():
        pytest.fail(f"Orthanc is not installed ({ORTHANC} missing): `make setup-system` installs "
                    "the Debian package orthanc")  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    server = Orthanc(free_port(), free_port(), root / "orthanc.log")
    config = root / "orthanc.json"
    config.write_text(
        json.dumps(_config(root, server.http, server.dicom, syntaxes) | (extra or {}))
    )
    with open(server.log, "wb") as log:
        proc = subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(server, proc)
        yield server
    finally:
        stop(proc)


def _wait_ready(server: Orthanc, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"Orthanc exited {proc.returncode}:\n{server.log.read_text()}")
        with contextlib.suppress(OSError):
            if server.json("/system").get("DicomPort") == server.dicom:
                return
        time.sleep(0.1)
    raise AssertionError(f"Orthanc did not answer /system within {timeout} s")


# --- the study --------------------------------------------------------------------------------


def _relabel(name: str, series: int, number: int) -> pydicom.Dataset:
    ds = pydicom.dcmread(source_path(name))
    ds.StudyInstanceUID = STUDY_UID
    ds.PatientName, ds.PatientID = "DOE^JANE", "DV-0001"
    ds.SeriesInstanceUID = f"{STUDY_UID}.9.{series}"
    ds.SOPInstanceUID = f"{STUDY_UID}.9.{series}.{number}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def build_mixed_study(folder: Path) -> list[Path]:
    """Real uncompressed CT and MR, plus an implicit VR file, a JPEG-LS file and a bare dataset
    (no preamble, no meta group): each must arrive in its own transfer syntax."""
    paths = build_study(folder)
    _relabel("MR_small_implicit.dcm", 3, 1).save_as(folder / "implicit.dcm")
    _relabel("MR_small_jpeg_ls_lossless.dcm", 4, 1).save_as(folder / "jpeg-ls.dcm")
    bare = folder / "bare-implicit.dcm"
    _relabel("MR_small_implicit.dcm", 3, 2).save_as(bare)
    _, offset = split_dataset(bare)
    bare.write_bytes(bare.read_bytes()[offset:])
    return [*paths, folder / "implicit.dcm", folder / "jpeg-ls.dcm", bare]


@dataclass(frozen=True)
class Instance:
    syntax: str
    pixels: str  # sha256 of the Pixel Data value as encoded (frames or fragments)


def describe(data: bytes) -> tuple[str, Instance]:
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    implicit = ds.original_encoding[0]
    fallback = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or fallback)
    return str(ds.SOPInstanceUID), Instance(syntax, hashlib.sha256(ds.PixelData).hexdigest())


def received(orthanc: Orthanc) -> dict[str, Instance]:
    studies = orthanc.json("/studies")
    assert len(studies) == 1
    ids = [i["ID"] for i in orthanc.json(f"/studies/{studies[0]}/instances")]
    return dict(describe(orthanc.get(f"/instances/{i}/file")) for i in ids)


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> tuple[Vault, list[Path]]:
    return back_up(tmp_path_factory.mktemp("orthanc"), build_mixed_study)


def test_restore_to_orthanc_stores_every_instance_in_its_own_syntax_with_identical_pixels(
    backed_up: tuple[Vault, list[Path]], tmp_path: Path
) -> None:
    vault, paths = backed_up
    originals = dict(describe(p.read_bytes()) for p in paths)
    assert {i.syntax for i in originals.values()} >= {*UNCOMPRESSED, JPEG_LS_LOSSLESS}
    with run_orthanc(tmp_path / "pacs", ["1.2.840.10008.1.*"]) as orthanc:
        doc = vault.json("restore", "--study", STUDY_UID, "--to-pacs", orthanc.peer)
        assert (doc["sent"], doc["failed"], doc["instances"]) == (len(paths), 0, len(paths))
        assert all(r["ok"] and r["status"] == 0 for r in doc["results"])
        assert orthanc.json("/statistics")["CountInstances"] == len(paths)
        assert received(orthanc) == originals


def test_instances_the_peer_refuses_are_reported_and_exit_18(
    backed_up: tuple[Vault, list[Path]], tmp_path: Path
) -> None:
    vault, paths = backed_up
    with run_orthanc(tmp_path / "pacs", UNCOMPRESSED) as orthanc:  # no JPEG-LS: refused
        result = vault.run("restore", "--study", STUDY_UID, "--to-pacs", orthanc.peer)
        assert_one_line_error(result, 18, f"1 of {len(paths)} instances were not stored")
        failed = [line for line in result.out.splitlines() if line.startswith("FAILED")]
        assert len(failed) == 1 and "jpeg-ls.dcm" in failed[0] and "JPEG-LS" in failed[0]
        assert sum(line.startswith("ok") for line in result.out.splitlines()) == len(paths) - 1
        assert orthanc.json("/statistics")["CountInstances"] == len(paths) - 1


def test_unreachable_peer_fails_every_instance_quickly_with_exit_18(
    backed_up: tuple[Vault, list[Path]],
) -> None:
    vault, paths = backed_up
    start = time.monotonic()
    result = vault.run(
        "restore", "--study", STUDY_UID, "--to-pacs", f"NOBODY@127.0.0.1:{free_port()}",
        "--dicom-timeout", "5", "--json",
    )  # fmt: skip
    assert_one_line_error(result, 18, f"{len(paths)} of {len(paths)} instances")
    assert result.doc["failed"] == len(paths)
    assert all("association" in r["message"] for r in result.doc["results"])
    assert time.monotonic() - start < 30
