"""Malformed input never stops a backup (invariant 6, issue 11 items 1, 6, 7, 10).

A seeded fuzzer (`tests.robustness.fuzzkit`) writes hundreds of damaged DICOM files; the real
CLI backs them up into a local repository and restores them: no crash, every readable file
restored bit-exact, every skipped file reported. Files that change while they are read are
reported, never stored torn, and never crash the client. DICOMVAULT_FUZZ_FILES and
DICOMVAULT_FUZZ_SEED change the run (`python -m benchmarks.fuzz` for larger ones).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import MiB, Vault, ct_small, file_digest, restored
from tests.robustness import fuzzkit

pytestmark = pytest.mark.robustness

EXIT_PARTIAL = fuzzkit.EXIT_PARTIAL
FUZZ_FILES = int(os.environ.get("DICOMVAULT_FUZZ_FILES", "500"))
FUZZ_SEED = int(os.environ.get("DICOMVAULT_FUZZ_SEED", "20261130"))


def test_hundreds_of_malformed_files_back_up_and_restore_bit_exact(
    vault: Vault, tmp_path: Path
) -> None:
    fuzzed = fuzzkit.build(tmp_path / "fuzz", FUZZ_SEED, FUZZ_FILES)
    summary = fuzzkit.backup_and_check(vault, fuzzed.root, tmp_path / "out")
    assert summary["errors"] == []  # nothing here is unreadable or changing: nothing skipped
    assert summary["files"] == fuzzed.files > FUZZ_FILES


@pytest.mark.parametrize("bits_stored", [300, 27400, 0, 17])
def test_out_of_range_bits_stored_is_backed_up_and_restored(
    vault: Vault, tmp_path: Path, bits_stored: int
) -> None:
    """Issue 11 item 1: the seal worker raised on BitsStored 300, and no snapshot was written."""
    src = tmp_path / "src"
    src.mkdir()
    data = bytearray(ct_small().read_bytes())
    assert fuzzkit.set_us(data, fuzzkit.IMAGE_TAGS["BitsStored"], bits_stored)
    (src / "bad-bits.dcm").write_bytes(data)
    summary = fuzzkit.backup_and_check(vault, src, tmp_path / "out")
    assert summary["errors"] == [] and summary["files"] == 1


# A child process, so the check that pydicom was never imported is not fooled by other tests.
SEGMENT_ONLY = """
import json, sys
from client.walk import layout_of
with open(sys.argv[1], "rb") as f:
    layout, _ = layout_of(f, int(sys.argv[2]))
kinds = [s.kind.name for s in layout.segments]
print(json.dumps({"kinds": kinds, "reason": layout.reason, "pydicom": "pydicom" in sys.modules}))
"""


def test_dicm_followed_by_tens_of_mb_of_zeros_is_raw_without_the_pydicom_pass(
    tmp_path: Path,
) -> None:
    """Issue 11 item 10: such a file parsed at ~2.6 MiB/s through the pydicom fallback."""
    path = tmp_path / "zeros.dcm"
    size = 40 * MiB + 5  # not a multiple of 8: the fast walker gives up at the end
    with open(path, "wb") as f:
        f.write(bytes(128) + b"DICM")
        f.truncate(size)
    proc = subprocess.run(
        [sys.executable, "-c", SEGMENT_ONLY, str(path), str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(proc.stdout)
    assert seen["kinds"] == ["RAW"]
    assert "pydicom fallback" in seen["reason"]
    assert seen["pydicom"] is False


@dataclass
class Victim:
    """A file a writer thread changes during the backup: its first content and the patches
    written over it since, in order."""

    path: Path
    original: bytes
    patches: list[tuple[int, bytes]] = field(default_factory=list)

    def had_state(self, data: bytes) -> bool:
        """Whether the file held exactly `data` at some instant (a prefix of the original
        counts: truncating keeps one, and rewriting writes the original again)."""
        if not self.patches:
            return self.original.startswith(data)
        state = bytearray(self.original)
        for offset, patch in [(0, b""), *self.patches]:
            state[offset : offset + len(patch)] = patch
            if state == data:
                return True
        return False


def back_up_while(vault: Vault, change: Callable[[], None]) -> set[Path]:
    """Back up the tree beside the vault while `change` runs in a loop on another thread;
    check there was no crash; return the files reported as skipped."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            change()

    writer = threading.Thread(target=loop)
    writer.start()
    try:
        result = vault.run("backup", str(vault.root.parent / "src"), "--json")
    finally:
        stop.set()
        writer.join()
    assert result.rc in (0, EXIT_PARTIAL), f"exit {result.rc}: {result.err[-3000:]}"
    assert "Traceback" not in result.err
    assert all("changed" in e or "shrank" in e for e in result.doc["errors"])
    return {Path(e.split(": ", 1)[0]) for e in result.doc["errors"]}


def check_restore(vault: Vault, victims: list[Victim], reported: set[Path], out: Path) -> None:
    """Each victim is either reported and left out, or restored as a state it had at one
    instant (never torn); every other file is restored bit-exact."""
    vault.ok("restore", "latest", "--target", str(out))
    for v in victims:
        copy = restored(out, v.path)
        assert (v.path in reported) != copy.exists(), v.path
        if copy.exists():
            assert v.had_state(copy.read_bytes()), f"{v.path.name} restored torn"
    for steady in (vault.root.parent / "src").glob("steady-*"):
        assert file_digest(restored(out, steady)) == file_digest(steady)


def steady_files(src: Path) -> None:
    src.mkdir()
    for i in range(40):
        (src / f"steady-{i:02d}.bin").write_bytes(random.Random(i).randbytes(200_000))


def test_files_shrinking_while_read_are_reported_without_a_crash(
    vault: Vault, tmp_path: Path
) -> None:
    """Issue 11 item 6: a file shrinking under the client's memory map killed it with SIGBUS.
    The slow case was DICM followed by zeros (the walker and pydicom read it all)."""
    steady_files(tmp_path / "src")
    zeros = bytes(128) + b"DICM" + bytes(24 * MiB + 3)
    native = ct_small().read_bytes()
    shapes = [zeros, zeros[: 4 * MiB + 3], native + bytes(24 * MiB), native + bytes(3 * MiB)]
    victims = [Victim(tmp_path / "src" / f"victim-{i}.dcm", data) for i, data in enumerate(shapes)]
    for v in victims:
        v.path.write_bytes(v.original)
    rng = random.Random(6)

    def shrink_and_grow() -> None:
        v = rng.choice(victims)
        with open(v.path, "r+b") as f:
            f.truncate(rng.randrange(4096))
        time.sleep(0.002)
        v.path.write_bytes(v.original)

    reported = back_up_while(vault, shrink_and_grow)
    assert reported <= {v.path for v in victims}
    check_restore(vault, victims, reported, tmp_path / "out")


def test_files_rewritten_in_place_with_mtime_put_back_are_reported_never_torn(
    vault: Vault, tmp_path: Path
) -> None:
    """Issue 11 item 7: size and mtime stay the same, so only ctime (or the inode) shows the
    change; such files were stored torn in 3 of 3 snapshots."""
    steady_files(tmp_path / "src")
    victims = [
        Victim(tmp_path / "src" / f"rewritten-{i}.bin", random.Random(i).randbytes(20 * MiB))
        for i in range(3)
    ]
    for v in victims:
        v.path.write_bytes(v.original)
    mtimes = {v.path: v.path.stat().st_mtime_ns for v in victims}
    rng = random.Random(7)

    def rewrite_in_place() -> None:
        v = rng.choice(victims)
        offset, patch = rng.randrange(20 * MiB - 65536), rng.randbytes(65536)
        v.patches.append((offset, patch))
        with open(v.path, "r+b") as f:
            f.seek(offset)
            f.write(patch)
        os.utime(v.path, ns=(mtimes[v.path], mtimes[v.path]))
        time.sleep(0.001)

    reported = back_up_while(vault, rewrite_in_place)
    assert reported, "files rewritten during the whole backup were not reported"
    check_restore(vault, victims, reported, tmp_path / "out")
