"""The kill loops of tests/robustness at larger counts (`python -m benchmarks.kill_loops`).

Runs the cycles of `benchmarks.killcore` (SIGKILL of `dicomvault backup` to a local folder and to a
chunk server, of `dicomvault restore`, and of `dicomvault-server serve` under a backup) with its
own small `dicomvault` driver and the server of `benchmarks.serverkit`, since benchmarks do not
import the test suite. Restores are compared by content digest (`benchmarks.common.tree_digest`);
the tests also compare modes and mtimes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import clikit
from benchmarks.clikit import CHEAP_KDF_ARGS, CHEAP_KDF_ENV, PASSPHRASE, Result, cli_command
from benchmarks.common import tree_digest
from benchmarks.killcore import (
    SEED_ENV,
    SMALL_DICOM,
    History,
    KillLoop,
    Tally,
    build_tree,
    seeded,
)
from benchmarks.serverkit import REPO, ServerProcess

LOOPS = ("local", "remote", "server")


@dataclass(frozen=True)
class Dicomvault:
    """`python -m client` with a repository, cache folder and (for a chunk server) a token."""

    repo: str
    cache: Path
    token: str = ""

    def _env(self) -> dict[str, str]:
        return clikit.cli_env(
            DICOMVAULT_REPO=self.repo,
            DICOMVAULT_PASSWORD=PASSPHRASE.decode(),
            DICOMVAULT_CACHE_DIR=str(self.cache),
            DICOMVAULT_TOKEN=self.token,
            **CHEAP_KDF_ENV,
        )

    def run(self, *args: str) -> Result:
        cmd = [*cli_command(), *args]
        proc = subprocess.run(
            cmd, env=self._env(), capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*cli_command(), *args], env=self._env(), text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    def init(self) -> Dicomvault:
        result = self.run("init", *CHEAP_KDF_ARGS)
        assert result.rc == 0, result.err
        return self


def dicom_files() -> list[Path]:
    """pydicom's test files and pydicom-data's files of at most SMALL_DICOM bytes."""
    from pydicom.data import get_testdata_files

    paths = [Path(p) for p in get_testdata_files()]
    try:
        import data_store

        paths += list((Path(data_store.__file__).parent / "data").iterdir())
    except ImportError:
        pass
    return sorted(p for p in paths if p.is_file() and p.stat().st_size <= SMALL_DICOM)


def make_loop(root: Path, cli: Dicomvault, seed: int) -> KillLoop:
    tree = build_tree(root, dicom_files(), random_files=2, seed=seed)
    return KillLoop(History(cli, tree, tree_digest, root / "restores"), random.Random(seed))


def run_loop(name: str, root: Path, kills: int, seed: int) -> list[Tally]:
    with seeded(seed, name):
        if name == "local":
            cli = Dicomvault(str(root / "repo"), root / "cache").init()
            return _cycles(make_loop(root, cli, seed), kills, lambda loop: loop.backup_cycle())
        server = ServerProcess(root / "server")
        token = server.create_repo(REPO)["backup"]
        server.start()
        try:
            cli = Dicomvault(f"{server.url}/{REPO}", root / "cache", token).init()
            loop = make_loop(root, cli, seed)
            if name == "remote":
                return _cycles(loop, kills, lambda loop: loop.backup_cycle())
            return _cycles(loop, kills, lambda loop: loop.server_cycle(server))
        finally:
            server.stop()


def _cycles(loop: KillLoop, kills: int, cycle: Callable[[KillLoop], None]) -> list[Tally]:
    loop.start()
    for i in range(kills):
        cycle(loop)
        print(f"  cycle {i + 1}/{kills}", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    return [loop.backups, loop.restores, loop.servers]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200, help="kills per loop (default 200)")
    parser.add_argument("--seed", type=int, help=f"replay a run (default: {SEED_ENV} or random)")
    parser.add_argument(
        "--loops", default=",".join(LOOPS), help="comma-separated: " + ",".join(LOOPS)
    )
    parser.add_argument("--json", type=Path, help="also write the tallies to this file")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(os.environ.get(SEED_ENV) or 0)
    seed = seed or random.SystemRandom().randrange(2**32)
    print(f"seed {seed}", file=sys.stderr)
    result: dict[str, Any] = {"seed": seed, "kills_per_loop": args.kills, "loops": {}}
    for name in args.loops.split(","):
        with tempfile.TemporaryDirectory(prefix=f"kill-{name}-") as tmp:
            tallies = run_loop(name, Path(tmp), args.kills, seed)
        kinds = ("backup", "restore", "server")
        for kind, tally in zip(kinds, tallies, strict=True):
            if tally.kills:
                print(tally.line(f"{name} loop, {kind}"))
                result["loops"][f"{name}/{kind}"] = {"kills": tally.kills, **tally.outcomes}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
