"""Remote backups over a slow link, and the chunk server's own speed on loopback.

    python -m benchmarks.link [--rate 10Mbit] [--size-mb 64] [--seed 0] [--out link.json]
                              [--work DIR] [--ingest-packs 16]

Link part: a real `dicomvault-server` subprocess behind the paced proxy of `tests/linkproxy.py`;
the `dicomvault` CLI backs up a seeded DICOM corpus (`benchmarks.common.build_corpus`) three
times: initial, after small changes (a few files touched, a few pixel bytes changed, one DICOM
header edited) and unchanged. For each run: wall time, bytes on the wire (the proxy's count and
the client's `bytes_uploaded`) and link utilisation while data was pending = wire bytes between
the first bulk byte and the last byte / (rate × that time).

Server part, straight to the server on loopback: ingest MB/s for 16 MiB packs of random blobs
(what sealed blobs look like), one upload at a time and four in parallel; and the missing-query
rate in ids/s. Prints a Markdown table; writes the numbers as JSON. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.clikit import cli_env
from benchmarks.common import MB, build_corpus, corpus_files, report_parser, run_and_report
from benchmarks.linkproxy import LinkProxy
from benchmarks.serverkit import ROOT, ServerProcess
from engine.ids import ChunkId, PackId
from engine.pack import TARGET_SIZE, PackBuilder
from engine.rates import parse_rate
from engine.remote import RemoteBackend

REPO = "bench"
PASSWORD = "link-benchmark"
BULK_START = 0.01  # utilisation counts from when 1 % of the run's wire bytes had passed
MIN_BULK = 4 * 1024 * 1024  # bytes a run must send before its utilisation is reported
BLOB = 1 << 20  # ~1 MiB blobs, the chunker's average
PARALLEL = 4
MISSING_IDS = 200_000


def log(msg: str) -> None:
    print(f"[link {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the server ----------------------------------------------------------------------------------


@contextmanager
def chunk_server(data: Path, tree: Path = ROOT) -> Iterator[tuple[int, dict[str, str], int]]:
    """Yield (port, tokens, server pid) of a fresh server with one repository, running the code
    of the source `tree` (default: this checkout)."""
    server = ServerProcess(data, tree=tree)
    tokens = server.create_repo(REPO)
    with server:
        yield server.port, tokens, server.pid


# --- backups over the link -----------------------------------------------------------------------


@dataclass
class LinkRun:
    name: str
    tree_bytes: int
    wall_s: float
    wire_bytes: int  # the proxy's count, client → server
    bytes_uploaded: int  # the client's own count
    bytes_stored: int
    upload_s: float
    utilisation: float | None

    @property
    def wire_share(self) -> float:
        return self.wire_bytes / self.tree_bytes if self.tree_bytes else 0.0


def _bulk_window(samples: list[tuple[float, int]]) -> tuple[float, int]:
    """(seconds, bytes) from when BULK_START of the run's bytes had passed to the last byte."""
    if not samples:
        return 0.0, 0
    total = samples[-1][1]
    t0, n0 = next((t, n) for t, n in samples if n >= total * BULK_START)
    return samples[-1][0] - t0, total - n0


class Client:
    """The `dicomvault` CLI of this interpreter, with its own cache, through the proxy."""

    def __init__(self, work: Path, url: str, token: str, link: LinkProxy) -> None:
        self.link = link
        self.env = cli_env(
            DICOMVAULT_REPO=url,
            DICOMVAULT_TOKEN=token,
            DICOMVAULT_PASSWORD=PASSWORD,
            DICOMVAULT_TEST_CHEAP_KDF="1",  # init's 8 MiB, 1 pass: KDF cost is not measured
            DICOMVAULT_CACHE_DIR=str(work / "cache"),
        )

    def _run(self, *args: str) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "client", *args, "--json"]
        proc = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"dicomvault {args[0]} exited {proc.returncode}: {proc.stderr}")
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    def init(self) -> None:
        self._run("init", "--kdf-memory-mib", "8", "--kdf-iterations", "1")

    def backup(self, name: str, tree: Path, tree_bytes: int) -> LinkRun:
        self.link.reset_counters()
        start = time.perf_counter()
        summary = self._run("backup", str(tree))
        wall = time.perf_counter() - start
        stats, rate = self.link.stats, self.link.rate or 0.0
        upload_s, bulk = _bulk_window(stats.samples)
        # Utilisation means something only for a transfer that lasts many round trips.
        util = bulk / (rate * upload_s) if rate and bulk >= MIN_BULK and upload_s > 0 else None
        return LinkRun(
            name, tree_bytes, round(wall, 2), stats.bytes_up, summary["bytes_uploaded"],
            summary["bytes_stored"], round(upload_s, 2), None if util is None else round(util, 3),
        )  # fmt: skip


def small_changes(tree: Path) -> list[str]:
    """Touch three files, change a few bytes in two, edit one DICOM header; say what was done."""
    import pydicom

    files = corpus_files(tree)
    done = []
    for path in files[:3]:
        os.utime(path)
        done.append(f"touched {path.name}")
    for path in files[3:5]:
        with open(path, "r+b") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            f.write(os.urandom(16))
        done.append(f"16 bytes changed near the end of {path.name}")
    ds = pydicom.dcmread(files[5])
    ds.PatientName = "Changed^Name"
    ds.save_as(files[5], enforce_file_format=False)
    done.append(f"PatientName edited in {files[5].name}")
    return done


def link_runs(args: argparse.Namespace, work: Path, port: int, token: str) -> dict[str, Any]:
    corpus = build_corpus(work / "corpus", int(args.size_mb * MB), args.seed)
    tree, size = corpus.root, corpus.bytes
    log(f"corpus: {corpus.files} files, {size / MB:.1f} MB")
    with LinkProxy(port, rate=args.rate_bytes) as link:
        client = Client(work, f"{link.url}/{REPO}", token, link)
        client.init()
        runs = [client.backup("initial", tree, size)]
        log(f"initial backup: {runs[0].wall_s} s")
        changes = small_changes(tree)
        runs.append(client.backup("after small changes", tree, size))
        runs.append(client.backup("unchanged", tree, size))
    return {"corpus": corpus.as_json(), "changes": changes, "runs": [_run_doc(r) for r in runs]}


def _run_doc(run: LinkRun) -> dict[str, Any]:
    return {**asdict(run), "wire_share": round(run.wire_share, 6)}


# --- the server on loopback ----------------------------------------------------------------------


def random_pack() -> tuple[PackId, bytes]:
    builder = PackBuilder()
    while builder.blob_bytes < TARGET_SIZE:
        builder.add(ChunkId(os.urandom(32)), os.urandom(BLOB))
    return builder.finish(sealed_header=os.urandom(5 * len(builder) + 45))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ingest_packs(
    backend: RemoteBackend, packs: list[tuple[PackId, bytes]], par: int
) -> float:
    sem = asyncio.Semaphore(par)

    async def one(pack_id: PackId, data: bytes) -> None:
        async with sem:
            await backend.put_pack(pack_id, data)

    start = time.perf_counter()
    await asyncio.gather(*(one(p, d) for p, d in packs))
    return time.perf_counter() - start


async def server_runs(url: str, token: str, n_packs: int, pid: int) -> dict[str, Any]:
    backend = RemoteBackend(url, token)
    try:
        await backend.put_pack(*random_pack())  # warm up: connection, folders, LMDB pages
        out: dict[str, Any] = {}
        for label, par in (("sequential", 1), (f"{PARALLEL} in parallel", PARALLEL)):
            packs = [random_pack() for _ in range(n_packs)]
            size, cpu = sum(len(d) for _, d in packs), cpu_seconds(pid)
            seconds = await ingest_packs(backend, packs, par)
            out[label] = {
                "packs": n_packs, "bytes": size, "seconds": round(seconds, 3),
                "mb_per_s": round(size / MB / seconds, 1),
                "server_cpu_s_per_gb": round((cpu_seconds(pid) - cpu) / size * 1e9, 2),
            }  # fmt: skip
        out["missing"] = await _missing_rate(backend)
        return out
    finally:
        await backend.close()


async def _missing_rate(backend: RemoteBackend) -> dict[str, Any]:
    ids = [ChunkId(os.urandom(32)) for _ in range(MISSING_IDS)]
    start = time.perf_counter()
    missing = await backend.missing(ids)
    seconds = time.perf_counter() - start
    return {
        "ids": len(ids), "returned": len(missing), "seconds": round(seconds, 3),
        "ids_per_s": round(len(ids) / seconds),
    }  # fmt: skip


# --- report --------------------------------------------------------------------------------------


def markdown(doc: dict[str, Any]) -> str:
    return "\n\n".join(part for part in (_link_table(doc), _server_table(doc["server"])) if part)


def _link_table(doc: dict[str, Any]) -> str:
    if not doc["link"]:
        return ""
    rate = doc["rate_bytes"]
    lines = [
        f"## Backups over a {rate * 8 / 1e6:g} Mbit/s link "
        f"({doc['link']['corpus']['bytes'] / MB:.1f} MB of DICOM)",
        "",
        "| run | wall s | wire MB (proxy) | bytes_uploaded MB | wire / tree | upload s "
        "| link utilisation |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["link"]["runs"]:
        lines.append(
            f"| {r['name']} | {r['wall_s']:.1f} | {r['wire_bytes'] / MB:.3f} | "
            f"{r['bytes_uploaded'] / MB:.3f} | {r['wire_share'] * 100:.3f} % | "
            f"{r['upload_s']:.1f} | {_percent(r['utilisation'])} |"
        )
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f} %"


def _server_table(srv: dict[str, Any]) -> str:
    lines = ["## Chunk server on loopback", "", "| measure | value |", "|---|---:|"]
    for label in ("sequential", f"{PARALLEL} in parallel"):
        s = srv[label]
        lines.append(
            f"| ingest, 16 MiB packs, {label} | {s['mb_per_s']} MB/s "
            f"({s['server_cpu_s_per_gb']} server CPU s/GB) |"
        )
    lines.append(f"| missing-query | {srv['missing']['ids_per_s']:,} ids/s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = report_parser("link", __doc__)
    p.add_argument("--rate", default="10Mbit", help="link rate, e.g. 10Mbit, 2MB (default 10Mbit)")
    p.add_argument("--size-mb", type=float, default=64, help="corpus size in MB (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ingest-packs", type=int, default=16, help="packs per ingest measurement")
    p.add_argument("--server-only", action="store_true", help="skip the backups over the link")
    args = p.parse_args(argv)
    args.rate_bytes = parse_rate(args.rate)
    return run_and_report(args, "dv-link-", run_all, markdown)


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    shutil.rmtree(work / "server", ignore_errors=True)
    shutil.rmtree(work / "cache", ignore_errors=True)
    with chunk_server(work / "server") as (port, tokens, pid):
        link = None if args.server_only else link_runs(args, work, port, tokens["backup"])
        log("server ingest and missing-query rate on loopback")
        url = f"http://127.0.0.1:{port}/{REPO}"
        server = asyncio.run(server_runs(url, tokens["backup"], args.ingest_packs, pid))
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "benchmarks.link", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rate": args.rate,
        "rate_bytes": args.rate_bytes,
        "link": link,
        "server": server,
    }


if __name__ == "__main__":
    sys.exit(main())
