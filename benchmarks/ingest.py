"""Chunk-server pack ingest with the machine idle and with the machine busy, in one run.

    python -m benchmarks.ingest [--packs 16] [--rounds 2] [--hogs N] [--baseline TREE]
                                [--out ingest.json] [--work DIR]

A real `dicomvault-server serve` subprocess on loopback with one repository; this process uploads
16 MiB packs of random blobs (what sealed blobs look like) through `RemoteBackend`, one at a time
and four in parallel. Each round measures both with nothing else started by the benchmark
("idle"), then again while N busy-looping processes compete for the CPUs ("busy"; N defaults to
the number of cores, one per core), so the ratio busy ÷ idle is taken from the same run, disk
and page-cache state. With `--baseline TREE` (a source tree of another commit, from `git
worktree add` or `git archive`), a second server runs that tree's code on its own data folder
and every measurement is made on both, interleaved, so before and after share the machine's
load. Reports MB/s, server and sender CPU seconds, the ratios and the load average before and
after. Prints a Markdown table; writes the numbers as JSON. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import MB, md_table, report_parser, run_and_report
from benchmarks.link import REPO, ROOT, chunk_server, cpu_seconds, ingest_packs, random_pack
from engine.remote import RemoteBackend

MODES = (("one at a time", 1), ("4 in parallel", 4))
HOG = "while True: pass"


def log(msg: str) -> None:
    print(f"[ingest {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextmanager
def cpu_hogs(n: int) -> Iterator[None]:
    """`n` processes that spin on a CPU each until the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(n)]
    try:
        time.sleep(0.5)  # let them start and take their share before measuring
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of `pid` so far: each is a wait for I/O, a
    lock or another thread, and on a busy machine each ends with a wait for a free CPU."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a worker thread that just ended
        total += sum(int(x.split()[1]) for x in lines if x.startswith("voluntary_ctxt"))
    return total


async def _measure(backend: RemoteBackend, n_packs: int, par: int, pid: int) -> dict[str, Any]:
    packs = [random_pack() for _ in range(n_packs)]
    size, cpu, own = sum(len(d) for _, d in packs), cpu_seconds(pid), time.process_time()
    waits = wakeups(pid)
    seconds = await ingest_packs(backend, packs, par)
    cpu, own, waits = cpu_seconds(pid) - cpu, time.process_time() - own, wakeups(pid) - waits
    return {
        "bytes": size, "seconds": round(seconds, 3), "mb_per_s": round(size / MB / seconds, 1),
        "server_cpu_s_per_gb": round(cpu / size * 1e9, 2),
        "server_cpu_per_wall": round(cpu / seconds, 2),
        "sender_cpu_per_wall": round(own / seconds, 2),
        "server_waits_per_pack": round(waits / n_packs, 1),
    }  # fmt: skip


@dataclass(frozen=True)
class Server:
    code: str  # "this tree" or "baseline"
    backend: RemoteBackend
    pid: int


async def _rounds(args: argparse.Namespace, servers: list[Server]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for srv in servers:
        await srv.backend.put_pack(*random_pack())  # warm up: connection, folders, LMDB pages
    for r in range(args.rounds):
        for load in ("idle", "busy"):
            with cpu_hogs(args.hogs if load == "busy" else 0):
                for label, par in MODES:
                    for srv in servers:
                        m = await _measure(srv.backend, args.packs, par, srv.pid)
                        out.append({"round": r, "load": load, "mode": label, "code": srv.code, **m})
                        log(f"round {r} {load} {label} {srv.code}: {m['mb_per_s']} MB/s")
    return out


async def _run_servers(args: argparse.Namespace, started: list[tuple[str, int, str, int]]) -> Any:
    servers = [
        Server(code, RemoteBackend(f"http://127.0.0.1:{port}/{REPO}", token), pid)
        for code, port, token, pid in started
    ]
    try:
        return await _rounds(args, servers)
    finally:
        for srv in servers:
            await srv.backend.close()


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median MB/s per (code, mode, load) and the busy ÷ idle ratio."""
    rows = []
    for code in dict.fromkeys(r["code"] for r in runs):
        for label, _ in MODES:
            mine = [r for r in runs if r["mode"] == label and r["code"] == code]
            idle = statistics.median(r["mb_per_s"] for r in mine if r["load"] == "idle")
            busy = statistics.median(r["mb_per_s"] for r in mine if r["load"] == "busy")
            rows.append({
                "code": code, "mode": label, "idle": round(idle, 1), "busy": round(busy, 1),
                "ratio": round(busy / idle, 2),
            })  # fmt: skip
    return rows


def markdown(doc: dict[str, Any]) -> str:
    runs = md_table(
        ["round", "load", "uploads", "code", "MB/s", "server CPU s/GB", "server CPU s / wall s",
         "sender CPU s / wall s", "server waits per pack"], "llllrrrrr",
        ([r["round"], r["load"], r["mode"], r["code"], r["mb_per_s"], r["server_cpu_s_per_gb"],
          r["server_cpu_per_wall"], r["sender_cpu_per_wall"], r["server_waits_per_pack"]]
         for r in doc["runs"]),
    )  # fmt: skip
    summary = md_table(
        ["code", "uploads", "idle MB/s", "busy MB/s", "busy ÷ idle"], "llrrr",
        ([r["code"], r["mode"], r["idle"], r["busy"], r["ratio"]] for r in doc["summary"]),
    )  # fmt: skip
    title = (
        f"## Chunk-server ingest, idle and busy ({doc['hogs']} CPU hogs; load average "
        f"{doc['load_before']} before, {doc['load_after']} after)"
    )
    return "\n".join([title, "", *runs, "", *summary])


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    load_before = round(os.getloadavg()[0], 1)
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    with ExitStack() as stack:
        started = []
        for i, (code, tree) in enumerate(trees):
            port, tokens, pid = stack.enter_context(chunk_server(work / f"server{i}", tree))
            started.append((code, port, tokens["backup"], pid))
        runs = asyncio.run(_run_servers(args, started))
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "benchmarks.ingest", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "hogs": args.hogs,
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 1),
        "runs": runs,
        "summary": summary(runs),
    }


def main(argv: list[str] | None = None) -> int:
    p = report_parser("ingest", __doc__)
    p.add_argument("--packs", type=int, default=16, help="16 MiB packs per measurement")
    p.add_argument("--rounds", type=int, default=2, help="idle/busy rounds (default 2)")
    p.add_argument(
        "--hogs", type=int, default=os.cpu_count() or 2, help="busy processes (default: one a core)"
    )
    p.add_argument("--baseline", type=Path, help="source tree of the code to compare against")
    return run_and_report(p.parse_args(argv), "dv-ingest-", run_all, markdown)


if __name__ == "__main__":
    sys.exit(main())
