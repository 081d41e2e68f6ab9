"""DICOM end to end: every pydicom and pydicom-data file restores bit-exact whatever the codec,
and the copies a practice meets (names corrected, anonymised, re-routed through a real DICOM hop)
store only their headers again, because a native frame's chunk id is over its pixel bytes.

Each scenario backs up a study made of real uncompressed images, then its copy, and measures the
second backup's `bytes_new` and `bytes_stored` against the study's size (printed and recorded as
test properties).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks.dicom_study import (
    anonymise,
    build_study,
    copy_tree,
    correct_names,
    dcmtk_available,
    dcmtk_hop,
    study_bytes,
)
from client.backup import Backup
from client.repository import Repository
from client.restore import Restorer
from engine.backend import LocalBackend
from engine.blob import Codec
from engine.dicom import segment
from engine.repoconfig import init_repository
from engine.store.local import LocalStore
from tests.helpers import (
    PASSPHRASE,
    Vault,
    cheap_kdf,
    file_digest,
    pydicom_data_files,
    pydicom_test_files,
    restored,
)

MAX_RESENT = 0.02  # the bound: a copy re-sends at most 2 % of the study's bytes


# --- bit-exact restore of every test file, through the python API -------------------------------


async def _open(root: Path) -> Repository:
    backend = LocalBackend(LocalStore(root / "repo"), str(root / "repo"))
    await init_repository(backend, PASSPHRASE, cheap_kdf())
    return await Repository.open(backend, PASSPHRASE, root / "cache")


def _all_test_files(folder: Path) -> dict[str, Path]:
    """Copy every pydicom and pydicom-data file under `folder`; relative name → copy."""
    copies = {}
    for group, files in (("pydicom", pydicom_test_files()), ("data", pydicom_data_files())):
        for i, path in enumerate(files):
            target = folder / group / f"{i:04d}-{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            copies[str(target.relative_to(folder))] = target
    return copies


def _kinds(copies: dict[str, Path]) -> set[str]:
    """Which of the awkward layouts the corpus holds, as the segmenter sees them."""
    kinds = set()
    for path in copies.values():
        layout = segment(path.read_bytes())
        ts, reason = layout.transfer_syntax or "", layout.reason or ""
        kinds |= {"truncated"} if "truncated" in reason else set()
        kinds |= {"big endian"} if ts == "1.2.840.10008.1.2.2" else set()
        kinds |= {"deflated"} if ts == "1.2.840.10008.1.2.1.99" else set()
        kinds |= {"no meta"} if path.read_bytes()[128:132] != b"DICM" else set()
        frames = [s for s in layout.segments if s.kind.name.endswith("FRAME")]
        kinds |= {"multi-frame"} if len(frames) > 1 else set()
        kinds |= (
            {"encapsulated"} if any(s.kind.name == "ENCAPSULATED_FRAME" for s in frames) else set()
        )
    return kinds


@pytest.mark.slow
@pytest.mark.parametrize("codec", [Codec.JPEGLS, Codec.JPEGXL, Codec.ZSTD])
async def test_every_pydicom_and_pydicom_data_file_restores_bit_exact(
    tmp_path: Path, codec: Codec
) -> None:
    copies = _all_test_files(tmp_path / "src")
    assert _kinds(copies) >= {
        "truncated", "big endian", "deflated", "no meta", "multi-frame", "encapsulated"
    }  # fmt: skip
    repo = await _open(tmp_path)
    try:
        summary = await Backup(repo, image_codec=codec).run([str(tmp_path / "src")])
        assert summary.errors == [] and summary.files == len(copies)
        await Restorer(repo, tmp_path / "out").run(await repo.resolve("latest"))
    finally:
        await repo.close()
    differ = [
        name
        for name, path in copies.items()
        if file_digest(restored(tmp_path / "out", path)) != file_digest(path)
    ]
    assert differ == []


# --- scenarios: what a second copy of a study costs ----------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return build_study(tmp_path_factory.mktemp("study") / "study")


def _shares(s: dict[str, Any], study_size: int, record: Any, name: str) -> dict[str, float]:
    """The second backup's new and stored bytes as shares of the study; printed and recorded."""
    shares = {key: s[key] / study_size for key in ("bytes_new", "bytes_stored")}
    print(
        f"\n{name}: study {study_size:,} B; second backup re-sent {s['bytes_new']:,} B "
        f"({shares['bytes_new']:.2%}), stored {s['bytes_stored']:,} B "
        f"({shares['bytes_stored']:.2%})"
    )
    for key, share in shares.items():
        record(f"{name}_{key}_percent", round(100 * share, 3))
    return shares


def _backup_copy(vault: Vault, first: Path, second: Path) -> dict[str, Any]:
    vault.json("backup", str(first))
    return vault.json("backup", str(second))


def _assert_within(shares: dict[str, float]) -> None:
    assert shares["bytes_new"] <= MAX_RESENT, shares
    assert shares["bytes_stored"] <= MAX_RESENT, shares


def test_study_has_several_real_uncompressed_images_in_two_series(study: list[Path]) -> None:
    layouts = [segment(p.read_bytes()) for p in study]
    assert len(study) >= 6
    assert all(layout.pixel is not None for layout in layouts)
    assert {layout.attrs["StudyInstanceUID"] for layout in layouts} == {
        layouts[0].attrs["StudyInstanceUID"]
    }
    assert {layout.attrs["Modality"] for layout in layouts} == {"CT", "MR"}


def test_patient_name_corrected_in_every_file_restores_at_most_2_percent(
    vault: Vault, study: list[Path], tmp_path: Path, record_property: Any
) -> None:
    folder = tmp_path / "study"
    copies = copy_tree(study, folder)
    vault.json("backup", str(folder))
    correct_names(copies)
    s = vault.json("backup", str(folder))
    size = study_bytes(study)
    assert s["files_unchanged"] == 0 and s["parent"] is not None
    _assert_within(_shares(s, size, record_property, "name_corrected"))


def test_anonymised_copy_under_new_names_stores_at_most_2_percent(
    vault: Vault, study: list[Path], tmp_path: Path, record_property: Any
) -> None:
    anon = anonymise(study, tmp_path / "anon")
    assert {p.name for p in anon}.isdisjoint(p.name for p in study)
    s = _backup_copy(vault, study[0].parent, anon[0].parent)
    _assert_within(_shares(s, study_bytes(study), record_property, "anonymised"))


def _needs_dcmtk() -> None:
    if not dcmtk_available():
        pytest.fail("dcmtk's /usr/bin/storescu and /usr/bin/storescp are missing: "
                    "`make setup-system` installs the Debian package dcmtk")  # fmt: skip


@pytest.mark.parametrize("implicit", [False, True], ids=["same-syntax", "explicit-to-implicit"])
def test_study_rerouted_through_dcmtk_stores_at_most_2_percent(
    vault: Vault, study: list[Path], tmp_path: Path, record_property: Any, implicit: bool
) -> None:
    _needs_dcmtk()
    hop = dcmtk_hop(study, tmp_path / "received", implicit=implicit)
    assert len(hop.files) == len(study)
    received = [segment(p.read_bytes()) for p in hop.files]
    want_ts = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    assert {layout.transfer_syntax for layout in received} == {want_ts}
    # The hop really re-encoded the files: no received file equals its original.
    assert not {file_digest(p) for p in hop.files} & {file_digest(p) for p in study}
    name = "rerouted_implicit" if implicit else "rerouted_same_syntax"
    s = _backup_copy(vault, study[0].parent, hop.files[0].parent)
    _assert_within(_shares(s, study_bytes(study), record_property, name))


def test_rerouted_study_restores_bit_exact_as_received(
    vault: Vault, study: list[Path], tmp_path: Path
) -> None:
    _needs_dcmtk()
    hop = dcmtk_hop(study, tmp_path / "received", implicit=True)
    vault.json("backup", str(study[0].parent))
    vault.json("backup", str(hop.files[0].parent))
    vault.ok("restore", "latest", "--target", str(tmp_path / "out"))
    for path in hop.files:
        assert file_digest(restored(tmp_path / "out", path)) == file_digest(path)
