"""The benchmark corpus at a tiny scale: deterministic bytes, valid DICOM, every day event."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pydicom
import pytest

from benchmarks.corpus import EVENT_TYPES, Archive, DayLog

pytestmark = pytest.mark.slow
SCALE = 0.01
DAYS = 5


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _build(root: Path, seed: int) -> tuple[Archive, list[str], list[DayLog]]:
    archive = Archive(root, SCALE, seed, measure=False)
    logs = [archive.build_day0()]
    digests = [_digest(root)]
    for day in range(1, DAYS + 1):
        logs.append(archive.apply_day(day))
        digests.append(_digest(root))
    return archive, digests, logs


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Archive, list[str], list[DayLog]]:
    return _build(tmp_path_factory.mktemp("corpus") / "practice", seed=7)


def test_same_seed_gives_the_same_bytes_every_day(
    built: tuple[Archive, list[str], list[DayLog]], tmp_path: Path
) -> None:
    _, again, _ = _build(tmp_path / "practice", seed=7)
    assert again == built[1]


def test_another_seed_gives_other_bytes(tmp_path: Path) -> None:
    a = Archive(tmp_path / "a", SCALE, 1, measure=False)
    b = Archive(tmp_path / "b", SCALE, 2, measure=False)
    a.build_day0()
    b.build_day0()
    assert _digest(a.root) != _digest(b.root)


def test_every_file_is_dicom_that_pydicom_reads(
    built: tuple[Archive, list[str], list[DayLog]],
) -> None:
    archive = built[0]
    files = [p for p in archive.root.rglob("*") if p.is_file()]
    assert files
    modalities = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            ds = pydicom.dcmread(path)  # raises on anything that is not Part 10 DICOM
            assert "PixelData" in ds and ds.SOPInstanceUID
            modalities.add(ds.Modality)
    assert {"MG", "CT", "MR", "US", "CR"} <= modalities


def test_every_event_type_happens_and_is_accounted(
    built: tuple[Archive, list[str], list[DayLog]],
) -> None:
    logs = built[2]
    seen = {kind for log in logs for kind in log.kinds}
    assert seen == set(EVENT_TYPES)
    for log in logs:
        assert log.new_bytes > 0 and log.files_written > 0 and log.events


def test_transfer_syntaxes_include_native_implicit_and_jpeg2000(
    built: tuple[Archive, list[str], list[DayLog]],
) -> None:
    syntaxes = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in built[0].root.rglob("*.*"):
            if path.is_file():
                syntaxes.add(
                    pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
                )
    assert {pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian} <= syntaxes
    assert pydicom.uid.JPEG2000Lossless in syntaxes


def test_no_two_new_instances_share_pixel_data(
    built: tuple[Archive, list[str], list[DayLog]],
) -> None:
    """Day 0 has only new studies: every native frame is unique (realistic, never copied)."""
    archive = Archive(built[0].root.parent / "day0-only", SCALE, 7, measure=False)
    archive.build_day0()
    seen: set[bytes] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in archive.root.rglob("*.dcm"):
            digest = hashlib.sha256(pydicom.dcmread(path).PixelData).digest()
            assert digest not in seen, path
            seen.add(digest)
