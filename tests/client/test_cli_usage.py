"""The command line as a new user meets it: `--version`, global options in either place, tokens
that look like options, output into a closed pipe, and `status` before any agent ran."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from client.cli import _parser
from client.cli_common import open_backend
from engine.retry import RetryingBackend
from tests.helpers import Vault, assert_one_line_error


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Vault:
    vault = Vault(tmp_path_factory.mktemp("usage") / "vault").init()
    src = vault.root / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    vault.ok("backup", str(src))
    return vault


def test_version_prints_the_package_version(vault: Vault) -> None:
    result = vault.ok("--version")
    assert result.out.startswith("dicomvault 0.") and result.err == ""


def test_global_options_are_accepted_after_the_command(vault: Vault) -> None:
    result = vault.ok("snapshots", "--json", "-r", str(vault.repo), DICOMVAULT_REPO="/nowhere")
    assert len(result.doc["snapshots"]) == 1


def test_a_global_option_before_the_command_is_not_hidden_by_the_command() -> None:
    args = _parser().parse_args(["-r", "before", "--cacert", "ca.pem", "snapshots"])
    assert (args.repo, args.cacert) == ("before", "ca.pem")
    args = _parser().parse_args(["-r", "before", "snapshots", "-r", "after"])
    assert args.repo == "after"


def test_a_token_that_starts_with_a_dash_is_a_token_in_the_equals_form() -> None:
    args = _parser().parse_args(["--token=-Xy_1", "snapshots", "--cacert=-ca.pem"])
    assert (args.token, args.cacert) == ("-Xy_1", "-ca.pem")
    args = _parser().parse_args(["snapshots", "--token=-Xy_1"])
    assert args.token == "-Xy_1"


@pytest.mark.parametrize(
    ("options", "seconds"),
    [((), 300.0), (("--retry-for", "0"), 0.0), (("snapshots", "--retry-for=2m"), 120.0)],
)
def test_retry_for_sets_how_long_an_established_backup_rides_out_an_outage(
    options: tuple[str, ...], seconds: float
) -> None:
    argv = ["-r", "http://127.0.0.1:1/clinic", "--token=t", *options]
    backend = open_backend(
        _parser().parse_args(argv if "snapshots" in argv else [*argv, "snapshots"])
    )
    assert isinstance(backend, RetryingBackend) and backend.deadline == seconds


@pytest.mark.parametrize("command", [("snapshots",), ("find",), ("ls", "latest")])
def test_output_into_a_closed_pipe_ends_quietly(vault: Vault, command: tuple[str, ...]) -> None:
    """`dicomvault find | head -2` after head has gone: no message, exit 141 like SIGPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write meets EPIPE
    try:
        proc = subprocess.run(
            vault.command(*command), env=vault.env(), stdout=write_end,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 141


def test_status_where_no_agent_ever_ran_exits_18(vault: Vault, tmp_path: Path) -> None:
    result = vault.run("status", "--state-dir", str(tmp_path / "agent"))
    assert_one_line_error(result, 18, "no agent has run with the state folder")


def test_only_a_stdout_nobody_reads_counts_as_the_reader_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A BrokenPipeError from a socket is a failure to report, not a reader that left."""
    from client.cli import _stdout_reader_gone

    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stdout:
        monkeypatch.setattr("sys.stdout", stdout)
        assert not _stdout_reader_gone()
        os.close(read_end)
        assert _stdout_reader_gone()
        monkeypatch.undo()
