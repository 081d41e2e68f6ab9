"""`dicomvault find` and `restore --study/--series`: the query language, aggregation per study
across snapshots, and restoring exactly one study's files, bit-exact, through the CLI.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest

from client.find import DateRange, Query, name_pattern
from engine.errors import UsageError
from tests.helpers import Vault, assert_one_line_error, ct_small, file_digest, restored

ROOT = "1.2.826.0.1.3680043.8.498.7782"  # deterministic UIDs under pydicom's root


# --- query language ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "hit"),
    [
        ("doe^*", "DOE^JOHN", True),
        ("DOE^J?HN", "Doe^John", True),
        ("doe", "DOE^JOHN", False),
        ("doe*", "DOE^JOHN", True),
        ("doe^john", "DOE^JOHN^^^", True),
        ("*^jane", "DOE^JOHN", False),
        ("m*ller^hans", "Müller^Hans", True),
        ("a.b", "axb", False),  # regex characters are literal
    ],
)
def test_person_name_wildcards(pattern: str, name: str, hit: bool) -> None:
    assert Query(patient_name=pattern).matches({"PatientName": name}) is hit


def test_person_name_matches_any_group_of_a_multi_group_name() -> None:
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert Query(patient_name="山田*").matches({"PatientName": name})
    assert Query(patient_name="yamada^*").matches({"PatientName": name})
    assert name_pattern("*").fullmatch("")


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("20200101-20201231", ["20200101", "20200615", "20201231"], ["20191231", "20210101"]),
        ("20200101-", ["20200101", "29991231"], ["20191231"]),
        ("-20200101", ["19000101", "20200101"], ["20200102"]),
        ("20200615", ["20200615"], ["20200614", "20200616"]),
        # ACR-NEMA's old YYYY.MM.DD, in the query and in stored StudyDates
        ("19940101-19961231", ["1994.11.05", "19961231"], ["1993.12.31", "1997.01.01"]),
        ("1994.11.05", ["1994.11.05", "19941105"], ["1994.11.06"]),
        ("1994.01.01-19961231", ["1995.06.15"], ["19931231"]),
    ],
)
def test_date_ranges_are_inclusive_with_open_ends(
    text: str, inside: list[str], outside: list[str]
) -> None:
    dates = DateRange.parse(text)
    assert all(d in dates for d in inside)
    assert not any(d in dates for d in outside)
    assert "" not in dates and "2020" not in dates


@pytest.mark.parametrize(
    "text", ["2020-01-01", "20201301x", "-", "20201231-20200101", "", "1994.1.5", "1994/11/05"]
)
def test_bad_date_ranges_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        DateRange.parse(text)


def test_a_study_stored_with_an_old_style_date_is_found_by_either_form(tmp_path: Path) -> None:
    """ACR-NEMA 2.0 wrote StudyDate as 1994.11.05; archives still hold such files."""
    ds = pydicom.dcmread(ct_small())
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):
        ds.StudyDate = "1994.11.05"
    (tmp_path / "src").mkdir()
    ds.save_as(tmp_path / "src" / "old.dcm")
    vault = Vault(tmp_path / "vault").init()
    vault.ok("backup", str(tmp_path / "src"))
    for query in ("19940101-19961231", "1994.11.05", "-1994.11.05"):
        (study,) = vault.json("find", f"--study-date={query}")["studies"]
        assert study["StudyDate"] == "1994.11.05"
    assert vault.json("find", "--study-date", "19941106-")["studies"] == []
    assert "1994-11-05" in vault.ok("find").out


def test_unknown_attribute_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown attribute"):
        Query({"PatientSex": "F"})


# --- a repository with three studies in two snapshots ------------------------------------------


STUDIES: dict[str, dict[str, Any]] = {
    "hans": {
        "PatientName": "Müller^Hans", "PatientID": "P1", "StudyDate": "20200105",
        "AccessionNumber": "A1", "series": [("CT", 2)],
    },
    "john": {
        "PatientName": "DOE^JOHN", "PatientID": "P2", "StudyDate": "20201231",
        "AccessionNumber": "A2", "series": [("MR", 3)],
    },
    "jane": {
        "PatientName": "DOE^JANE", "PatientID": "P3", "StudyDate": "20210101",
        "AccessionNumber": "A3", "series": [("CT", 1), ("MR", 2)],
    },
}  # fmt: skip


def study_uid(key: str) -> str:
    return f"{ROOT}.{list(STUDIES).index(key) + 1}"


def series_uid(key: str, n: int) -> str:
    return f"{study_uid(key)}.{n}"


def write_study(folder: Path, key: str) -> list[Path]:
    """Small real images (CT_small) relabelled as the study `key`; one file per instance."""
    spec, paths = STUDIES[key], []
    for n, (modality, count) in enumerate(spec["series"], start=1):
        for i in range(1, count + 1):
            ds = pydicom.dcmread(ct_small())
            ds.SpecificCharacterSet = "ISO_IR 100"  # Latin-1, so Müller decodes by the charset
            for keyword in ("PatientName", "PatientID", "StudyDate", "AccessionNumber"):
                setattr(ds, keyword, spec[keyword])
            ds.StudyInstanceUID, ds.Modality = study_uid(key), modality
            ds.SeriesInstanceUID = series_uid(key, n)
            ds.SOPInstanceUID = f"{series_uid(key, n)}.{i}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = folder / key / f"{modality}-{n}-{i}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path)
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Snapshot 1: hans and john. Snapshot 2: john (twice: a copy in another folder) and jane."""
    root = tmp_path_factory.mktemp("find")
    tree = root / "pacs"
    files = {key: write_study(tree, key) for key in ("hans", "john")}
    vault = Vault(root / "vault").init()
    first = vault.json("backup", str(tree))["snapshot"]
    shutil.rmtree(tree / "hans")
    files["jane"] = write_study(tree, "jane")
    shutil.copytree(tree / "john", tree / "john-copy")
    second = vault.json("backup", str(tree))["snapshot"]
    return {"vault": vault, "tree": tree, "files": files, "snapshots": [first, second]}


def find(archive: dict[str, Any], *args: str) -> dict[str, Any]:
    doc: dict[str, Any] = archive["vault"].json("find", *args)
    return doc


def uids(doc: dict[str, Any]) -> list[str]:
    return [s["StudyInstanceUID"] for s in doc["studies"]]


def test_find_without_filters_lists_every_study_across_snapshots(archive: dict[str, Any]) -> None:
    doc = find(archive)
    assert doc["snapshots_searched"] == 2
    assert uids(doc) == [study_uid("hans"), study_uid("john"), study_uid("jane")]  # by date
    first, second = archive["snapshots"]
    by_uid = {s["StudyInstanceUID"]: s for s in doc["studies"]}
    assert by_uid[study_uid("hans")]["snapshots"] == [first]
    assert by_uid[study_uid("john")]["snapshots"] == [first, second]
    assert by_uid[study_uid("jane")]["snapshots"] == [second]
    assert by_uid[study_uid("hans")]["snapshot"] == first  # newest snapshot holding it


def test_find_counts_series_instances_and_bytes(archive: dict[str, Any]) -> None:
    jane = find(archive, "--study", study_uid("jane"))["studies"][0]
    size = archive["files"]["jane"][0].stat().st_size
    assert jane["PatientName"] == "DOE^JANE" and jane["PatientID"] == "P3"
    assert jane["modalities"] == ["CT", "MR"]
    assert [(s["Modality"], s["instances"], s["bytes"]) for s in jane["series"]] == [
        ("CT", 1, size),
        ("MR", 2, 2 * size),
    ]
    assert jane["series"][0]["transfer_syntaxes"] == ["1.2.840.10008.1.2.1"]
    assert jane["instances"] == 3 and jane["bytes"] == 3 * size


def test_copies_of_an_instance_in_one_snapshot_count_once(archive: dict[str, Any]) -> None:
    john = find(archive, "--study", study_uid("john"))["studies"][0]
    assert john["instances"] == 3 and john["files"] == 6  # the newest snapshot has a copy
    assert john["bytes"] == 2 * john["instance_bytes"]


def test_find_counts_what_a_study_restore_writes(archive: dict[str, Any], tmp_path: Path) -> None:
    """find's files and bytes are restore --study's, copies included, in JSON and in text."""
    vault: Vault = archive["vault"]
    john = find(archive, "--study", study_uid("john"))["studies"][0]
    restore = vault.json("restore", "--study", study_uid("john"), "--target", str(tmp_path / "t"))
    assert (john["files"], john["bytes"]) == (restore["files"], restore["bytes_written"]) == (
        6, 2 * john["instance_bytes"])  # fmt: skip
    text = vault.ok("find", "--study", study_uid("john")).out
    assert f"3 instances in 6 files, {restore['bytes_written']:,} bytes" in text


@pytest.mark.parametrize(
    ("args", "keys"),
    [
        (("--patient-name", "doe^*"), ["john", "jane"]),
        (("--patient-name", "d?e^jan*"), ["jane"]),
        (("--patient-name", "müller*"), ["hans"]),
        (("--study-date", "20200101-20201231"), ["hans", "john"]),
        (("--study-date", "20201231-"), ["john", "jane"]),
        (("--study-date", "-20200105"), ["hans"]),
        (("--modality", "mr"), ["john", "jane"]),
        (("--accession", "A2"), ["john"]),
        (("--patient-id", "P1"), ["hans"]),
        (("--attr", f"SOPInstanceUID={series_uid('jane', 2)}.2"), ["jane"]),
        (("--patient-name", "doe*", "--study-date", "2021-"), None),  # bad date: usage error
        (("--patient-name", "nobody"), []),
    ],
)
def test_find_filters(
    archive: dict[str, Any], args: tuple[str, ...], keys: list[str] | None
) -> None:
    if keys is None:
        assert_one_line_error(archive["vault"].run("find", *args), 2, "date")
        return
    assert uids(find(archive, *args)) == [study_uid(k) for k in keys]


def test_filters_on_series_show_only_the_matching_series(archive: dict[str, Any]) -> None:
    jane = find(archive, "--modality", "MR", "--study", study_uid("jane"))["studies"][0]
    assert [s["Modality"] for s in jane["series"]] == ["MR"] and jane["instances"] == 2


def test_find_in_one_snapshot(archive: dict[str, Any]) -> None:
    first = archive["snapshots"][0]
    doc = find(archive, "--snapshot", first[:10])
    assert doc["snapshots_searched"] == 1
    assert uids(doc) == [study_uid("hans"), study_uid("john")]


def test_find_text_output_lists_studies_with_their_series(archive: dict[str, Any]) -> None:
    out = archive["vault"].ok("find", "--patient-name", "DOE^JANE").out
    assert f"study {study_uid('jane')}" in out
    assert "2021-01-01  DOE^JANE  id P3" in out
    assert f"series {series_uid('jane', 2)}  MR  2 instances" in out
    assert "in 1 snapshot:" in out and out.rstrip().endswith("1 studies")


# --- restore by study ---------------------------------------------------------------------------


def test_restore_study_writes_only_that_studys_files_bit_exact(
    archive: dict[str, Any], tmp_path: Path
) -> None:
    vault: Vault = archive["vault"]
    vault.ok("restore", "--study", study_uid("hans"), "--target", str(tmp_path))  # gone now
    restored_files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    originals = archive["files"]["hans"]
    assert len(restored_files) == len(originals)
    assert {p.name for p in restored_files} == {p.name for p in originals}
    # hans was deleted before the second snapshot: it came from the first one. Its bytes are
    # those written then (CT_small relabelled deterministically, so rewriting gives the same).
    again = write_study(tmp_path / "again", "hans")
    assert sorted(map(file_digest, restored_files)) == sorted(map(file_digest, again))


def test_restore_series_of_the_latest_snapshot(archive: dict[str, Any], tmp_path: Path) -> None:
    vault: Vault = archive["vault"]
    doc = vault.json("restore", "--series", series_uid("jane", 2), "--target", str(tmp_path))
    assert doc["files"] == 2 and doc["snapshot"] == archive["snapshots"][1]
    for path in archive["files"]["jane"]:
        target = restored(tmp_path, path)
        assert target.exists() == path.name.startswith("MR")
        if target.exists():
            assert file_digest(target) == file_digest(path)


def test_restore_of_an_unknown_study_is_exit_16(archive: dict[str, Any], tmp_path: Path) -> None:
    result = archive["vault"].run("restore", "--study", "1.2.3.4", "--target", str(tmp_path))
    assert_one_line_error(result, 16, "no snapshot holds")


def test_restore_study_in_a_named_snapshot_without_it_is_exit_16(
    archive: dict[str, Any], tmp_path: Path
) -> None:
    second = archive["snapshots"][1]
    result = archive["vault"].run(
        "restore", second[:12], "--study", study_uid("hans"), "--target", str(tmp_path)
    )
    assert_one_line_error(result, 16, "holds no file")


@pytest.mark.parametrize(
    "args",
    [
        ("restore", "latest"),  # no target
        ("restore", "--target", "x"),  # no snapshot, no study
        ("restore", "latest", "--to-pacs", "A@127.0.0.1:104"),  # to-pacs without a study
        ("restore", "--study", "1.2", "--to-pacs", "A@127.0.0.1:104", "--target", "x"),
        ("restore", "--study", "1.2", "--to-pacs", "no-port@host"),
        ("restore", "--study", "1.2", "--to-pacs", "AN_AE_TITLE_TOO_LONG@h:104"),
    ],
)
def test_restore_argument_mistakes_are_usage_errors(
    archive: dict[str, Any], args: tuple[str, ...]
) -> None:
    assert_one_line_error(archive["vault"].run(*args), 2)
