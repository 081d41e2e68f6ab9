"""Memory stays bounded: backing up a 2 GB file does not hold it in RAM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.chunker import MAX_SIZE
from tests.helpers import MiB, Vault, write_pattern_file

FILE_SIZE = 2048 * MiB
RSS_LIMIT = 400 * MiB

# A fresh Python child runs the CLI and reports RUSAGE_CHILDREN's ru_maxrss: the peak RSS of the
# CLI process alone (Linux reports it in KiB), unpolluted by pytest's own memory.
MEASURE = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": proc.returncode, "peak": peak, "out": proc.stdout, "err": proc.stderr}))
"""


@pytest.mark.slow
def test_backing_up_a_2_gb_file_keeps_peak_rss_well_below_its_size(
    vault: Vault, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_pattern_file(src / "huge.raw", FILE_SIZE, seed=11, random_every=16)
    command = [sys.executable, "-c", MEASURE, *vault.command("backup", str(src), "--json")]
    proc = subprocess.run(command, env=vault.env(), capture_output=True, text=True, check=True)
    measured = json.loads(proc.stdout)
    assert measured["rc"] == 0, measured["err"]
    summary = json.loads(measured["out"])
    assert summary["bytes_read"] == FILE_SIZE
    # Every data chunk differs (chunks_new also counts the catalogue's chunks).
    assert summary["chunks_new"] > summary["chunks_total"] >= FILE_SIZE // MAX_SIZE
    assert measured["peak"] < RSS_LIMIT, f"peak RSS {measured['peak'] / MiB:.0f} MiB"
