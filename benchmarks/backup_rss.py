"""Peak RSS of `dicomvault backup` to a chunk server (or a local folder), source trees alternated.

Each run backs up one folder into a fresh repository with a fresh cache, through the `dicomvault`
script under `/usr/bin/time -v` with the run's tree first on `PYTHONPATH`, against one
`dicomvault-server` on loopback (this checkout's). Trees alternate in the order given, so load
from other work falls on both alike. Reports peak RSS, CPU seconds, wall time and the load.

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

from benchmarks.clikit import CHEAP_KDF_ARGS, CHEAP_KDF_ENV
from benchmarks.serverkit import ServerProcess

TIME = "/usr/bin/time"
FIELDS = {  # `time -v` line → our name
    "Maximum resident set size (kbytes)": "rss_kib",
    "User time (seconds)": "user_s",
    "System time (seconds)": "sys_s",
    "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall",
}


def _time_fields(stderr: str) -> dict[str, str]:
    out = {}
    for line in stderr.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key in FIELDS:
            out[FIELDS[key]] = value
    return out


def _env(tree: Path, repo: str, token: str, cache: Path) -> dict[str, str]:
    return {
        **os.environ, **CHEAP_KDF_ENV, "PYTHONPATH": str(tree), "DICOMVAULT_REPO": repo,
        "DICOMVAULT_TOKEN": token, "DICOMVAULT_PASSWORD": "benchmark",
        "DICOMVAULT_CACHE_DIR": str(cache),
    }  # fmt: skip


def one_run(
    name: str, tree: Path, source: Path, work: Path, server: ServerProcess | None, n: int
) -> dict[str, Any]:
    """Init a fresh repository, back `source` up into it once under `time -v`."""
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
    command = [TIME, "-v", "dicomvault", "backup", str(source), "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree)
    if done.returncode:
        raise SystemExit(f"{name}: backup exited {done.returncode}: {done.stderr[-2000:]}")
    got = _time_fields(done.stderr)
    summary = json.loads(done.stdout)
    return {
        "tree": name, "peak_rss_mib": round(int(got["rss_kib"]) / 1024, 1),
        "user_s": float(got["user_s"]), "sys_s": float(got["sys_s"]), "wall": got["wall"],
        "load": round(load, 1), "packs": summary.get("packs"),
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
