"""The DICOM fuzzer at any size: the robustness test (tests/robustness/test_fuzz_dicom.py) with
more files or another seed. It builds N malformed files from the real pydicom-data images, backs
them up with the CLI into a fresh local repository, restores them, and checks the contract (no
crash, every file not reported restored bit-exact). The CI run uses 500 files.

    python -m benchmarks.fuzz [--files 5000] [--seed 20261130]

Runs that one test in a pytest subprocess (benchmarks never import tests), prints its outcome
and time, and exits with pytest's code. Changes nothing outside pytest's temp folders.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = (
    "tests/robustness/test_fuzz_dicom.py"
    "::test_hundreds_of_malformed_files_back_up_and_restore_bit_exact"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=5000, help="fuzzed files to build (default 5000)")
    p.add_argument("--seed", type=int, default=20261130, help="generator seed")
    args = p.parse_args(argv)
    env = {**os.environ, "DICOMVAULT_FUZZ_FILES": str(args.files)}
    env["DICOMVAULT_FUZZ_SEED"] = str(args.seed)
    start = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST]
    code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    outcome = "contract held" if code == 0 else "CONTRACT BROKEN"
    print(
        f"fuzz: {args.files} files, seed {args.seed}: {outcome} ({time.monotonic() - start:.0f} s)"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
