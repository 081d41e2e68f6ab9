"""The DICOM fuzzer at any size: build N malformed files from a seed, back them up with the CLI
into a fresh local repository, restore them, and check the robustness contract (no crash, every
file not reported restored bit-exact). The CI run (tests/robustness) uses 500 files.

    python -m benchmarks.fuzz [--files 5000] [--seed 20261130] [--out DIR]

Prints one JSON line (files, errors, seconds) and exits 1 if the contract is broken. Reuses
`tests.robustness.fuzzkit`; changes nothing outside `--out` (a temp folder by default).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers import Vault
from tests.robustness import fuzzkit


def run(files: int, seed: int, out: Path) -> dict[str, object]:
    start = time.monotonic()
    fuzzed = fuzzkit.build(out / "fuzz", seed, files)
    built = time.monotonic()
    summary = fuzzkit.backup_and_check(Vault(out / "vault").init(), fuzzed.root, out / "restored")
    return {
        "files": fuzzed.files,
        "seed": seed,
        "backed_up": summary["files"],
        "errors": summary["errors"],
        "build_s": round(built - start, 1),
        "backup_and_restore_s": round(time.monotonic() - built, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=5000, help="fuzzed files to build (default 5000)")
    p.add_argument("--seed", type=int, default=20261130, help="generator seed")
    p.add_argument("--out", type=Path, help="work folder (default: a temp folder, removed)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dicomvault-fuzz-") as tmp:
        try:
            report = run(args.files, args.seed, args.out or Path(tmp))
        except AssertionError as e:
            print(f"fuzz: contract broken (seed {args.seed}): {e}", file=sys.stderr)
            return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
