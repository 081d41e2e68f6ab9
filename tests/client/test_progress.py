"""Progress: a bar with totals, percent, rate and ETA on a terminal; JSON lines on stderr in logs
and under --json (stdout stays one document); Ctrl-C says so on a line of its own, exit 130."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from client.progress import Progress, bar_text
from tests.helpers import MiB, Vault, write_pattern_file

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_come_every_interval_with_percent_rate_and_eta() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress("backup", style="lines", interval=10, stream=out, clock=clock)
    progress.set_total(4, 4 * MiB)
    progress.update(1, MiB, "/a")
    assert out.getvalue() == ""  # nothing before the first interval: short commands stay quiet
    clock.now += 10
    progress.update(2, 2 * MiB, "/b")
    (doc,) = lines(out)
    assert doc == {
        "message_type": "status", "command": "backup", "seconds_elapsed": 10.0,
        "files_done": 2, "bytes_done": 2 * MiB, "bytes_per_second": 2 * MiB // 10,
        "total_files": 4, "total_bytes": 4 * MiB, "percent_done": 0.5, "seconds_remaining": 10,
    }  # fmt: skip
    clock.now += 1
    progress.update(3, 3 * MiB)
    assert len(lines(out)) == 1
    progress.close()
    assert lines(out)[-1]["files_done"] == 3 and len(lines(out)) == 2  # a last line at the end


def test_a_failed_command_adds_no_last_line_and_unknown_totals_give_no_percent() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress("check", "packs", style="lines", interval=1, stream=out, clock=clock)
    clock.now += 2
    progress.update(5, 1000)
    progress.close(finished=False)
    (doc,) = lines(out)
    assert doc["packs_done"] == 5 and "percent_done" not in doc and "total_packs" not in doc


def test_the_bar_text_has_totals_percent_rate_and_eta() -> None:
    doc = {"files_done": 1, "total_files": 2, "bytes_done": MiB, "total_bytes": 2 * MiB,
           "bytes_per_second": MiB, "percent_done": 0.5, "seconds_remaining": 61}  # fmt: skip
    assert bar_text(doc, "files", "/srv/pacs/a.dcm") == (
        "50%  1/2 files  1.0 MiB/2.0 MiB  1.0 MiB/s  ETA 0:01:01  /srv/pacs/a.dcm"
    )


@pytest.fixture
def vault(tmp_path: Path) -> tuple[Vault, Path]:
    vault = Vault(tmp_path / "vault").init()
    src = vault.root / "src"
    src.mkdir()
    for i in range(3):
        write_pattern_file(src / f"f{i}", 2 * MiB, seed=i, random_every=1)
    return vault, src


def status_lines(err: str) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in err.splitlines()]
    assert docs and all(d["message_type"] == "status" for d in docs)
    return docs


def test_json_commands_keep_stdout_one_document_and_put_progress_lines_on_stderr(
    vault: tuple[Vault, Path], tmp_path: Path
) -> None:
    v, src = vault
    quick = {"DICOMVAULT_PROGRESS_INTERVAL": "0"}
    backup = v.ok("backup", str(src), "--json", **quick)
    last = status_lines(backup.err)[-1]
    assert json.loads(backup.out)["files"] == 3 == last["files_done"] == last["total_files"]
    assert last["total_bytes"] == 6 * MiB and last["percent_done"] == 1.0
    restore = v.ok("restore", "latest", "--target", str(tmp_path / "t"), "--json", **quick)
    last = status_lines(restore.err)[-1]
    assert json.loads(restore.out)["files"] == 3 == last["files_done"] == last["total_files"]
    partial = v.ok("restore", "latest", "--target", str(tmp_path / "p"), "--json",
                   "--include", str(src / "f1"), **quick)  # fmt: skip
    last = status_lines(partial.err)[-1]
    assert last["files_done"] == last["total_files"] == 1 and last["total_bytes"] == 2 * MiB
    check = v.ok("check", "--read-data", "--json", **quick)
    last = status_lines(check.err)[-1]
    assert last["command"] == "check" and last["packs_done"] == last["total_packs"] >= 1
    assert last["bytes_done"] == json.loads(check.out)["bytes_verified"]


def run_on_a_terminal(v: Vault, *args: str, interrupt: bool = False) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal (as a person would); return the exit code and the
    terminal's text. With `interrupt`, press Ctrl-C (SIGINT) once the bar has appeared."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        v.command(*args), env=v.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=follower,
    )  # fmt: skip
    os.close(follower)
    screen = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not data:
            break
        screen += data
        if interrupt and b"backup" in screen and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            interrupt = False
    os.close(leader)
    return proc.wait(60), screen.decode(errors="replace")


def test_a_terminal_shows_a_bar_with_totals_and_rate(vault: tuple[Vault, Path]) -> None:
    v, src = vault
    rc, screen = run_on_a_terminal(v, "backup", str(src))
    assert rc == 0, screen
    text = ANSI.sub("", screen)
    assert "100%" in text and "3/3 files" in text and "6.0 MiB/6.0 MiB" in text
    assert re.search(r"\d MiB/s", text)


def test_ctrl_c_says_interrupted_on_its_own_line_and_exits_130(
    vault: tuple[Vault, Path],
) -> None:
    v, src = vault
    write_pattern_file(src / "big", 256 * MiB, seed=9, random_every=1)
    rc, screen = run_on_a_terminal(v, "backup", str(src), interrupt=True)
    assert rc == 130, screen[-2000:]
    visible = [ANSI.sub("", line).rstrip("\r").split("\r")[-1] for line in screen.split("\n")]
    assert "dicomvault: interrupted" in [line.strip() for line in visible]
    assert v.json("snapshots")["snapshots"] == []  # it stopped, rather than finishing first
