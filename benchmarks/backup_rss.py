"""Peak RSS of `dicomvault backup` to a chunk server (or a local folder), source trees alternated.

Each run backs up one folder into a fresh repository with a fresh cache, through the `dicomvault`
script with the run's tree first on `PYTHONPATH`, measured by `benchmarks.common.run_measured`
(GNU time, else getrusage), against one `dicomvault-server` on loopback (this checkout's). Trees
alternate in the order given, so load from other work falls on both alike. Reports peak RSS,
CPU seconds, wall time and the load.

    python -m benchmarks.corpus --out /var/tmp/practice --scale 1 --days 0 --no-measure
    git archive ecb5cf6 | tar -x -C /tmp/before
    python -m benchmarks.backup_rss --source /var/tmp/practice/practice \\
        --tree before=/tmp/before --tree after=. --order before,after,after,before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.clikit import CHEAP_KDF_ARGS, CHEAP_KDF_ENV, cli_env
from benchmarks.common import run_measured
from benchmarks.serverkit import ServerProcess


def _env(tree: Path, repo: str, token: str, cache: Path) -> dict[str, str]:
    return cli_env(
        **CHEAP_KDF_ENV, PYTHONPATH=str(tree), DICOMVAULT_REPO=repo, DICOMVAULT_TOKEN=token,
        DICOMVAULT_PASSWORD="benchmark", DICOMVAULT_CACHE_DIR=str(cache),
    )  # fmt: skip


def one_run(
    name: str, tree: Path, source: Path, work: Path, server: ServerProcess | None, n: int
) -> dict[str, Any]:
    """Init a fresh repository, back `source` up into it once, measured (`run_measured`)."""
    if server is None:
        repo, tokens = str(work / f"repo{n}"), {"backup": "", "admin": ""}
    else:
        repo, tokens = server.repo_url(f"r{n}"), server.create_repo(f"r{n}")
    env = _env(tree, repo, tokens["admin"], work / f"cache{n}")
    subprocess.run(
        ["dicomvault", "init", *CHEAP_KDF_ARGS], env=env, check=True, capture_output=True
    )
    load = os.getloadavg()[0]
    env["DICOMVAULT_TOKEN"] = tokens["backup"]
    got = run_measured(["dicomvault", "backup", str(source), "--json"], env)
    return {
        "tree": name, "peak_rss_mib": round(got.max_rss_bytes / 2**20, 1), "user_s": got.user_s,
        "sys_s": got.sys_s, "wall_s": round(got.wall_s, 2), "load": round(load, 1),
        "packs": json.loads(got.stdout).get("packs"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", type=Path, required=True, help="folder to back up")
    p.add_argument("--tree", action="append", required=True, help="NAME=PATH of a source tree")
    p.add_argument("--order", required=True, help="comma-separated tree names, one per run")
    p.add_argument("--to", choices=("server", "folder"), default="server")
    args = p.parse_args(argv)
    trees = {k: Path(v).resolve() for k, v in (t.split("=", 1) for t in args.tree)}
    order = args.order.split(",")
    if unknown := set(order) - set(trees):
        p.error(f"--order names trees not given with --tree: {sorted(unknown)}")
    with tempfile.TemporaryDirectory(prefix="dv-backup-rss-") as tmp:
        work = Path(tmp)
        server = ServerProcess(work / "server").start() if args.to == "server" else None
        try:
            for n, name in enumerate(order):
                row = one_run(name, trees[name], args.source, work, server, n)
                print(json.dumps(row), flush=True)
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
