"""Files that cannot be read, or change while being read, are reported and skipped; the snapshot
of everything else is still committed (exit code 3)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.helpers import MiB, Vault, restored, tree_state, write_pattern_file

EXIT_PARTIAL = 3

# The tests run as root, where chmod 000 does not stop reading. Dropping CAP_DAC_OVERRIDE and
# CAP_DAC_READ_SEARCH from the backup process (setpriv, util-linux) makes permissions bind it
# like any user, so the unreadable file is really unreadable to that process and no other.
NO_DAC = (
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
)


def permissions_bind(tmp_path: Path) -> bool:
    if shutil.which("setpriv") is None:
        return False
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    result = subprocess.run([*NO_DAC, "cat", str(probe)], capture_output=True)
    probe.unlink()
    return result.returncode != 0


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "ok").mkdir(parents=True)
    (src / "ok" / "a.txt").write_text("readable\n" * 100)
    (src / "ok" / "b.bin").write_bytes(os.urandom(300_000))
    return src


def test_unreadable_file_and_folder_are_reported_and_skipped(
    vault: Vault, tree: Path, tmp_path: Path
) -> None:
    if not permissions_bind(tmp_path):
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here, so root reads every file")
    secret, closed = tree / "secret.dcm", tree / "closed"
    secret.write_bytes(b"cannot read this")
    secret.chmod(0)
    closed.mkdir()
    (closed / "inside.txt").write_text("hidden")
    closed.chmod(0)
    try:
        result = vault.run("backup", str(tree), "--json", prefix=NO_DAC)
    finally:
        closed.chmod(0o755)
        secret.chmod(0o644)
    assert result.rc == EXIT_PARTIAL, result.err
    assert "Traceback" not in result.err
    summary = result.doc
    assert any(str(secret) in e and "Permission denied" in e for e in summary["errors"])
    assert any(str(closed) in e and "Permission denied" in e for e in summary["errors"])
    warnings = [line for line in result.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(summary["errors"]) == 2
    assert summary["files"] == 2
    listed = {e["path"] for e in vault.json("ls", summary["snapshot"])["entries"]}
    assert str(secret).lstrip("/") not in listed
    assert str(closed / "inside.txt").lstrip("/") not in listed
    vault.ok("restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_state(restored(tmp_path / "out", tree / "ok")) == tree_state(tree / "ok")


def test_file_changing_while_read_is_reported_and_skipped(
    vault: Vault, tree: Path, tmp_path: Path
) -> None:
    growing = tree / "growing.log"
    write_pattern_file(growing, 32 * MiB, seed=3)
    stop = threading.Event()

    def append() -> None:  # a writer that keeps appending for the whole backup
        with open(growing, "ab") as f:
            while not stop.is_set():
                f.write(b"more log\n")
                f.flush()
                stop.wait(0.005)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        result = vault.run("backup", str(tree), "--json")
    finally:
        stop.set()
        writer.join()
    assert result.rc == EXIT_PARTIAL, result.err
    assert "Traceback" not in result.err
    summary = result.doc
    assert len(summary["errors"]) == 1 and str(growing) in summary["errors"][0]
    assert "changed" in summary["errors"][0]
    assert f"warning: {growing}" in result.err
    listed = {e["path"] for e in vault.json("ls", "latest")["entries"]}
    assert str(growing).lstrip("/") not in listed
    assert str(tree / "ok" / "b.bin").lstrip("/") in listed
    vault.ok("restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_state(restored(tmp_path / "out", tree / "ok")) == tree_state(tree / "ok")
    assert not restored(tmp_path / "out", growing).exists()
