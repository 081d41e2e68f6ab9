"""`dicomvault dicom-serve` as a command: what it refuses to start with, and a server that picks
up snapshots taken while it runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from benchmarks.dicom_study import STUDY_UID, build_study
from client.cli import _parser
from client.cli_serve import serve_config, site_backends
from tests.client.servekit import WEB_TOKEN, dicom_serve
from tests.helpers import Vault, assert_one_line_error


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "--allow"),
        (("--accept-any", "--web-port", "0"), "--web-token-file"),
        (("--no-dimse",), "--no-dimse needs --web-port"),
        (("--allow", "A" * 17), "bad AE title"),
        (("--accept-any", "--move-dest", "PACS"), "bad --move-dest"),
        (("--accept-any", "--move-dest", "PACS=host"), "bad DICOM peer"),
        (("--accept-any", "--as-of", "last week"), "expected now, YYYY-MM-DD"),
        (("--accept-any", "--refresh-seconds", "0"), "--refresh-seconds"),
    ],
)
def test_bad_options_are_usage_errors(vault: Vault, args: tuple[str, ...], needle: str) -> None:
    assert_one_line_error(vault.run("dicom-serve", *args, timeout=60), 2, needle)


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        ("2026-03-01", "2026-03-01T23:59:59.999999Z"),  # a date: its whole day, as for restore
        ("2026-03-01T13:00:00+01:00", "2026-03-01T12:00:00.000000Z"),
    ],
)
def test_as_of_reads_times_as_every_other_command_does(as_of: str, expected: str) -> None:
    args = _parser().parse_args(["dicom-serve", "--accept-any", "--as-of", as_of])
    assert serve_config(args).as_of == expected


def test_as_of_now_is_accepted() -> None:
    args = _parser().parse_args(["dicom-serve", "--accept-any", "--as-of", "now"])
    assert serve_config(args).as_of is not None


def test_snapshots_taken_while_serving_are_indexed_on_the_next_refresh(tmp_path: Path) -> None:
    build_study(tmp_path / "study")
    vault = Vault(tmp_path / "vault").init()
    with dicom_serve(vault, "--no-dimse", "--refresh-seconds", "0.2") as served:
        url, auth = f"{served.web}/studies", {"Authorization": f"Bearer {WEB_TOKEN}"}
        assert requests.get(url, headers=auth, timeout=30).status_code == 204  # nothing yet
        vault.json("backup", str(tmp_path / "study"))
        for _ in range(600):
            response = requests.get(url, headers=auth, timeout=30)
            if response.status_code == 200:
                break
            time.sleep(0.05)
        assert [s["0020000D"]["Value"] for s in response.json()] == [[STUDY_UID]]


def test_its_sites_are_found_as_every_commands_then_each_site_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Comma-separated URLs in DICOMVAULT_REPO, or the kit's [[sites]], then each --site."""
    monkeypatch.setenv("DICOMVAULT_REPO", "http://a.example/clinic,http://b.example/clinic")
    monkeypatch.setenv("DICOMVAULT_TOKEN", "t")
    args = _parser().parse_args(["dicom-serve", "--accept-any", "--site", str(tmp_path)])
    locations = ["http://a.example/clinic", "http://b.example/clinic", str(tmp_path)]
    assert [b.location for b in site_backends(args)] == locations

    monkeypatch.delenv("DICOMVAULT_REPO")
    config = tmp_path / "config.toml"
    config.write_text('repository = "r"\ntoken = "t"\n[[sites]]\nurl = "http://c.example/clinic"\n')
    monkeypatch.setenv("DICOMVAULT_CONFIG", str(config))
    args = _parser().parse_args(["dicom-serve", "--accept-any"])
    assert [b.location for b in site_backends(args)] == ["http://c.example/clinic"]
