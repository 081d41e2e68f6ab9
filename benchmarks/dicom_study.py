"""Corpus builder for the dedup scenarios: one study made of real uncompressed images, and the
copies a practice really meets: names corrected in place, an anonymised copy, and the study
re-encoded by a real DICOM hop (dcmtk's storescu → storescp), with or without explicit → implicit
VR conversion.

Owns only how those files are made (pydicom edits, dcmtk processes on loopback ports). Does not
back anything up or measure anything: tests and `benchmarks/dicom_ratio.py` do that.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
from pydicom.dataset import Dataset

# Real uncompressed (explicit VR little endian) images, by modality; pixel data all differ.
STUDY_SOURCES = {
    "CT": ("693_UNCI.dcm", "eCT_Supplemental.dcm", "CT_small.dcm"),
    "MR": ("MR2_UNCI.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "emri_small.dcm", "MR_small.dcm"),
}
UID_ROOT = "1.2.826.0.1.3680043.8.498.7781"  # pydicom's root + a fixed branch: deterministic
STUDY_UID = f"{UID_ROOT}.1"
STUDY_ATTRS = {
    "PatientName": "DOE^JANE",
    "PatientID": "DV-0001",
    "PatientBirthDate": "19700101",
    "StudyDate": "20240315",
    "AccessionNumber": "ACC-7781",
    "StudyDescription": "Dedup scenario study",
}
# Identifying attributes an anonymiser blanks or removes (a subset of PS3.15 Annex E).
ANONYMISED_REMOVED = (
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "OtherPatientIDs",
    "PatientAddress",
    "StationName",
)
STORESCU = "/usr/bin/storescu"  # dcmtk's; `storescu` on PATH may be pynetdicom's own script
STORESCP = "/usr/bin/storescp"


def source_path(name: str) -> Path:
    return Path(pydicom.data.get_testdata_file(name))  # type: ignore[arg-type]


def build_study(folder: Path) -> list[Path]:
    """Write the study: every source image with shared patient/study attributes, one series per
    modality. Pixel data, and everything else, stay as the source files have them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for series_no, (modality, names) in enumerate(sorted(STUDY_SOURCES.items()), start=1):
        for instance_no, name in enumerate(names, start=1):
            ds = pydicom.dcmread(source_path(name))
            _set_study(ds, modality, series_no, instance_no)
            path = folder / f"{modality}{series_no}_{instance_no:03d}.dcm"
            ds.save_as(path)
            paths.append(path)
    return paths


def _set_study(ds: Dataset, modality: str, series_no: int, instance_no: int) -> None:
    for keyword, value in STUDY_ATTRS.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID = STUDY_UID
    ds.Modality = modality
    ds.SeriesInstanceUID = f"{UID_ROOT}.2.{series_no}"
    ds.SeriesNumber = series_no
    ds.InstanceNumber = instance_no
    ds.SOPInstanceUID = f"{UID_ROOT}.3.{series_no}.{instance_no}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def study_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def correct_names(paths: list[Path], name: str = "DOE^JANE MARIE") -> None:
    """Scenario (a): the patient name is corrected in every file, in place (pydicom edit+save)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientName = name
        ds.save_as(path)


def anonymise(paths: list[Path], folder: Path) -> list[Path]:
    """Scenario (b): an anonymised copy under new file names: new patient name, id and birth
    date, identifying tags and private tags removed."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.PatientName = "ANON^0001"
        ds.PatientID = "ANON-0001"
        ds.PatientBirthDate = ""
        for keyword in ANONYMISED_REMOVED:
            if keyword in ds:
                delattr(ds, keyword)
        ds.remove_private_tags()
        target = folder / f"anon-{i:04d}.dcm"
        ds.save_as(target)
        out.append(target)
    return out


# --- a real DICOM hop ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HopResult:
    files: list[Path]
    sent: int


def dcmtk_available() -> bool:
    return Path(STORESCU).is_file() and Path(STORESCP).is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """Terminate `proc`, and kill it if it has not exited within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def dcmtk_hop(paths: list[Path], folder: Path, *, implicit: bool = False) -> HopResult:
    """Scenario (c): send `paths` with dcmtk's storescu to a storescp writing into `folder`.

    storescp rewrites every file (new meta group, re-encoded dataset). With `implicit`, storescu
    proposes only implicit VR little endian, so explicit files are converted on the way.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with _storescp(folder, port):
        args = [STORESCU, "-aec", "HOP", "-aet", "DVTEST"]
        args += ["-xi"] if implicit else ["-xe"]
        args += ["127.0.0.1", str(port), *map(str, paths)]
        subprocess.run(args, check=True, capture_output=True, timeout=120)
        files = _wait_for_files(folder, len(paths))
    return HopResult(files, len(paths))


@contextlib.contextmanager
def _storescp(folder: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    # +xa: accept every transfer syntax offered; default output writes the received syntax.
    proc = subprocess.Popen(
        [STORESCP, "-aet", "HOP", "+xa", "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_listening(port, proc)
        yield proc
    finally:
        stop(proc, 10)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"storescp exited {proc.returncode}: {err}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"storescp did not listen on port {port}")


def _wait_for_files(folder: Path, count: int, timeout: float = 30) -> list[Path]:
    """storescu returns once the peer answered; the files are already complete by then."""
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(p for p in folder.iterdir() if p.is_file())
        if len(files) >= count or time.monotonic() > deadline:
            return files
        time.sleep(0.05)


def copy_tree(paths: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(p, folder / p.name)) for p in paths]
