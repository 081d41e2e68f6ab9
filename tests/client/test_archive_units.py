"""client/archive.py's pure parts: a batch's sources, the readable name of an agent instance,
and `--as-of` times; and the CLI's choice between a snapshot and `--as-of`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from client.agent.config import AgentConfig, DicomSettings, WatchSettings
from client.archive import batch_sources, parse_as_of, shown_path
from client.cli import main
from engine.catalogue import Entry, SnapshotBody
from engine.errors import UsageError

UIDS = {"PatientID": "P 1/x", "StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3"}


def test_a_batch_names_the_listener_and_the_watched_folders_it_came_from(tmp_path: Path) -> None:
    config = AgentConfig(
        "pc-1",
        tmp_path / "spool",
        tmp_path / "state",
        dicom=DicomSettings("DVAGENT", "0.0.0.0", 104),
        watch=(WatchSettings(tmp_path / "export"),),
    )
    paths = [
        str(config.instances_dir / "1-0-1.2-1.2.3.dcm"),
        str(config.instances_dir / "2-0-1.2-1.2.4.dcm"),
        str(tmp_path / "export" / "a" / "b.dcm"),
    ]
    assert batch_sources(config, paths) == sorted(
        ["dicom:DVAGENT@0.0.0.0:104", str(tmp_path / "export")]
    )


def test_an_agent_instance_is_shown_by_its_uids_with_unsafe_characters_replaced() -> None:
    entry = Entry(
        "spool/instances/1-0-x.dcm", "file", 0o644, 0, 10, dicom=UIDS | {"SOPInstanceUID": "9.9"}
    )
    agent = SnapshotBody("t", "pc-1", [], [], {}, ["agent"], ["dicom:A@h:1"])
    assert shown_path(entry, agent) == "dicom/P_1_x/1.2/1.2.3/9.9.dcm"
    plain = SnapshotBody("t", "host", [], [], {})
    assert shown_path(entry, plain) == entry.path  # a folder backup keeps its own paths


def test_as_of_takes_dates_to_their_end_and_times_in_utc() -> None:
    assert parse_as_of("2026-11-29") == datetime(2026, 11, 29, 23, 59, 59, 999999, UTC)
    assert parse_as_of("2026-11-29T08:00:00") == datetime(2026, 11, 29, 8, tzinfo=UTC)
    assert parse_as_of("2026-11-29T08:00:00.5Z").microsecond == 500000
    with pytest.raises(UsageError):
        parse_as_of("yesterday")


@pytest.mark.parametrize("argv", [["ls"], ["ls", "latest", "--as-of", "now"]])
def test_ls_needs_exactly_one_of_a_snapshot_and_as_of(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "-r", str(tmp_path / "none"), "-p", str(tmp_path / "pw")]) == 2
    assert "name a snapshot or give --as-of TIME" in capsys.readouterr().err
