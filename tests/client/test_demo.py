"""`make demo`'s script, run as a new user runs it (on a small sample of real DICOM): it works,
cleans up after itself, and when a server cannot start it shows why from that server's log."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.clikit import cli_env
from tests.helpers import pydicom_test_files

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_demo(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    sample = tmp_path / "sample"
    sample.mkdir(exist_ok=True)
    for path in pydicom_test_files()[:4]:
        shutil.copyfile(path, sample / path.name)
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    base = cli_env(
        PY=sys.executable, TMPDIR=str(scratch), DICOMVAULT_DEMO_SAMPLE=str(sample),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(ROOT), **env,
    )  # fmt: skip
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")], env=base, capture_output=True, text=True,
        timeout=300, stdin=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip


def test_demo_restores_bit_exact_from_both_sites_and_removes_its_files(tmp_path: Path) -> None:
    result = run_demo(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("is bit-exact") == 2
    assert "peer:yes" in result.stdout  # the peer is labelled with its site name
    assert "removed the demo files in" in result.stdout
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_server_that_cannot_start_shows_the_end_of_its_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = run_demo(tmp_path, DICOMVAULT_DEMO_PRIMARY_PORT=port)
    assert result.returncode == 1
    assert f"server on port {port} did not start; the end of its log" in result.stderr
    assert "the port is in use" in result.stderr
    assert list((tmp_path / "tmp").iterdir()) == []
