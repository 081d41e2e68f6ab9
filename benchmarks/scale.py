"""Index scale: the server's and the client's LMDB chunk index filled with millions of synthetic
chunk ids (random 32-byte ids, as keyed BLAKE3 outputs look), then queried.

    python -m benchmarks.scale [--chunks 10000000] [--fill-batch 20000] [--per-pack 512]
                               [--packs 200] [--queries 1000000] [--work DIR] [--json FILE]

Every insert goes through the real APIs (`server.index.ServerIndex.add_pack`,
`engine.index.LocalIndex.add_pack`). Per index, one child process bulk-loads the ids in
key-ordered transactions of `--fill-batch` ids (a random-order load rewrites random pages of a
1 GB file and is disk-bound for most of an hour here); then a fresh child process, like the next
backup, indexes `--packs` packs of `--per-pack` random ids (one transaction each) and looks ids
up: the server through `ServerIndex.missing` (the method behind POST /missing) in batches of
2000, the client with `id in LocalIndex` per chunk, half of the ids present. A sampler thread
records resident memory: anonymous (the process's own heap) and file-backed (LMDB's memory map:
page cache the kernel can reclaim). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

MiB = 1 << 20
RSS_TARGET = 256 * MiB
QUERY_BATCH = 2000  # ids per missing-query, as the client batches them (QUERY_BATCH_COUNT)
CHECKPOINTS = 10  # insert-rate and memory samples during the fill
SAMPLE_BATCHES, SAMPLE_PER_BATCH = 50, 2000  # 100k known ids (≈ 7 MB of Python bytes) to query
REPO = "bench"


# --- synthetic ids ---------------------------------------------------------------------------


def batch_ids(seed: int, batch: int, n: int) -> bytes:
    """n × 32 random bytes, reproducible from (seed, batch): ids look like keyed BLAKE3 output."""
    return np.random.default_rng([seed, batch]).bytes(32 * n)


def ordered_batch(seed: int, batch: int, batches: int, n: int) -> bytes:
    """Bulk-load batch `batch`: random ids confined to the batch's slice of the key space, sorted.

    Over all batches the ids cover the key space uniformly, as keyed hashes do, but each batch
    touches only its own stretch of the B-tree, so the bulk load writes sequentially (as a
    rebuild from packs in key order would) instead of rewriting random pages of a 1 GB file.
    """
    ids = np.frombuffer(batch_ids(seed, batch, n), dtype=np.uint8).reshape(n, 32).copy()
    lo, hi = (batch << 32) // batches, ((batch + 1) << 32) // batches
    prefix = np.random.default_rng([seed, batch, 1]).integers(lo, hi, size=n, dtype=np.uint64)
    ids[:, :4] = prefix.astype(">u4").view(np.uint8).reshape(n, 4)
    order = np.lexsort(ids.T[::-1])
    return ids[order].tobytes()


def split(raw: bytes) -> list[bytes]:
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


def query_batches(seed: int, known: list[bytes], total: int) -> Iterator[list[bytes]]:
    """Batches of `QUERY_BATCH` ids: alternately one known (from the sample) and one unknown."""
    rng = np.random.default_rng([seed, 1 << 40])
    for _ in range(max(1, total // QUERY_BATCH)):
        picks = rng.integers(len(known), size=QUERY_BATCH // 2)
        unknown = split(rng.bytes(32 * (QUERY_BATCH // 2)))
        yield [i for pair in zip((known[p] for p in picks), unknown, strict=True) for i in pair]


# --- memory ----------------------------------------------------------------------------------


def status_kib(*fields: str) -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            out[name] = int(value.split()[0])
    return out


class MemorySampler:
    """Peak RssAnon and RssFile, sampled every 50 ms (the kernel keeps only VmHWM, their sum)."""

    def __init__(self) -> None:
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def sample(self) -> dict[str, int]:
        now = status_kib("RssAnon", "RssFile", "VmRSS", "VmHWM")
        for k in self.peak:
            self.peak[k] = max(self.peak[k], now[k] * 1024)
        return {k: v * 1024 for k, v in now.items()}


# --- one side, in a child process ------------------------------------------------------------


def _entries(raw: bytes) -> list[Any]:
    from engine.ids import ChunkId
    from engine.pack import ManifestEntry

    ids = split(raw)
    step = 16 * MiB // len(ids)  # offsets as in a 16 MiB pack
    return [ManifestEntry(ChunkId(cid), j * step, step) for j, cid in enumerate(ids)]


def _side(kind: str, path: Path) -> tuple[Callable[[bytes, list[Any]], None], Any]:
    """(index one pack, query one batch → number missing) for the server or the client index."""
    from engine.ids import ChunkId, PackId

    if kind == "server":
        from server.index import ServerIndex

        server = ServerIndex(path, 64 << 30)

        def add_server(pid: bytes, entries: list[Any]) -> None:
            server.add_pack(REPO, PackId(pid), 16 * MiB, time.time(), entries)

        return add_server, lambda ids: len(server.missing(REPO, ids))
    from engine.index import LocalIndex

    client = LocalIndex(path)

    def add_client(pid: bytes, entries: list[Any]) -> None:
        client.add_pack(PackId(pid), 16 * MiB, entries)

    return add_client, lambda ids: sum(ChunkId(i) not in client for i in ids)


def _pack_id(seed: int, n: int) -> bytes:
    return np.random.default_rng([seed, n, 7]).bytes(32)


def fill(args: argparse.Namespace) -> dict[str, Any]:
    """Bulk-load `--chunks` ids in key-ordered transactions of `--fill-batch` ids."""
    path = args.work / f"{args.child}.lmdb"
    batches = max(1, args.chunks // args.fill_batch)
    every = max(1, batches // CHECKPOINTS)
    points: list[dict[str, Any]] = []
    with MemorySampler() as mem:
        add, _ = _side(args.child, path)
        t0 = last = time.perf_counter()
        for n in range(batches):
            add(
                _pack_id(args.seed, n),
                _entries(ordered_batch(args.seed, n, batches, args.fill_batch)),
            )
            if (n + 1) % every == 0 or n + 1 == batches:
                now, rss = time.perf_counter(), mem.sample()
                step = {"chunks": (n + 1) * args.fill_batch, "elapsed_s": round(now - t0, 1)}
                step |= {"insert_per_s": round(every * args.fill_batch / (now - last))}
                points.append(step | {"rss_anon": rss["RssAnon"], "rss_file": rss["RssFile"]})
                last = now
                print(json.dumps(points[-1]), file=sys.stderr, flush=True)
        seconds = time.perf_counter() - t0
    chunks = points[-1]["chunks"]
    return {
        "chunks": chunks,
        "fill_s": round(seconds, 1),
        "insert_per_s": round(chunks / seconds),
        "checkpoints": points,
        "peak_rss_anon": mem.peak["RssAnon"],
    }


def known_sample(args: argparse.Namespace) -> list[bytes]:
    """Ids the bulk load stored: `SAMPLE_PER_BATCH` from each of up to `SAMPLE_BATCHES` batches."""
    batches = max(1, args.chunks // args.fill_batch)
    picks = np.random.default_rng([args.seed, 2]).permutation(batches)[:SAMPLE_BATCHES]
    out: list[bytes] = []
    for n in sorted(int(p) for p in picks):
        raw = ordered_batch(args.seed, n, batches, args.fill_batch)
        step = max(1, args.fill_batch // SAMPLE_PER_BATCH)
        out += split(raw)[::step]
    return out


def pack_inserts(add: Callable[..., None], args: argparse.Namespace) -> dict[str, Any]:
    """Index `--packs` more packs of `--per-pack` random new ids, one transaction per pack."""
    start = time.perf_counter()
    for n in range(args.packs):
        raw = batch_ids(args.seed, (1 << 32) + n, args.per_pack)
        add(_pack_id(args.seed, (1 << 32) + n), _entries(raw))
    s = time.perf_counter() - start
    ids = args.packs * args.per_pack
    return {
        "packs": args.packs,
        "ids": ids,
        "seconds": round(s, 2),
        "packs_per_s": round(args.packs / s, 1),
        "ids_per_s": round(ids / s),
    }


def query(
    missing: Callable[[list[bytes]], int], known: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    asked = absent = 0
    seconds = 0.0
    for batch in query_batches(args.seed, known, args.queries):
        start = time.perf_counter()
        absent += missing(batch)
        seconds += time.perf_counter() - start
        asked += len(batch)
    per_s = round(asked / seconds) if seconds else 0
    return {"ids": asked, "missing": absent, "seconds": round(seconds, 2), "per_s": per_s}


def use(args: argparse.Namespace) -> dict[str, Any]:
    """A fresh process on the full index, as the next backup: new packs, then lookups."""
    path = args.work / f"{args.child}.lmdb"
    known = known_sample(args)
    with MemorySampler() as mem:
        add, missing = _side(args.child, path)
        packs = pack_inserts(add, args)
        q = query(missing, known, args)
        mem.sample()
    disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {
        "pack_inserts": packs,
        "query": q,
        "peak_rss": status_kib("VmHWM")["VmHWM"] * 1024,
        "peak_rss_anon": mem.peak["RssAnon"],
        "peak_rss_file": mem.peak["RssFile"],
        "index_bytes": disk,
    }


def child(args: argparse.Namespace) -> int:
    """One phase (fill or use) of one index in this process; print one JSON document."""
    doc = fill(args) if args.phase == "fill" else use(args)
    print(json.dumps({"side": args.child, "phase": args.phase, **doc}))
    return 0


# --- the parent ------------------------------------------------------------------------------


def _child(side: str, phase: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.scale", "--child", side, "--phase", phase]
    cmd += ["--work", str(work)]
    for name in ("chunks", "fill_batch", "per_pack", "packs", "queries", "seed"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def run_side(side: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    start = time.perf_counter()
    filled = _child(side, "fill", args, work)
    used = _child(side, "use", args, work)
    shutil.rmtree(work / f"{side}.lmdb", ignore_errors=True)
    return {
        "side": side,
        **{k: filled[k] for k in ("chunks", "fill_s", "insert_per_s", "checkpoints")},
        "fill_peak_rss_anon": filled["peak_rss_anon"],
        **{k: v for k, v in used.items() if k not in ("side", "phase")},
        "wall_s": round(time.perf_counter() - start, 1),
    }


def _mib(n: int) -> str:
    return f"{n / MiB:,.0f}"


def markdown(rep: dict[str, Any]) -> str:
    lines = [
        f"## Index scale ({rep['date']}, {rep['chunks']:,} chunk ids per index)",
        "",
        f"Command: `{rep['command']}`. Bulk load in key-ordered transactions of "
        f"{rep['fill_batch']:,} ids; then, in a fresh process on the full index, {rep['packs']} "
        f"packs of {rep['per_pack']} random ids (one transaction each) and lookups in batches "
        f"of {QUERY_BATCH}, half of them present. Memory columns are that fresh process's.",
        "",
        "| index | bulk insert ids/s | fill s | pack inserts/s (ids/s) | lookup ids/s "
        "| index MiB | peak RSS MiB | peak anon MiB | peak file-backed MiB | anon ≤ 256 MiB "
        "| bulk-load peak anon MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in rep["sides"]:
        ok = "✓" if s["peak_rss_anon"] <= RSS_TARGET else "✗"
        pk = s["pack_inserts"]
        lines.append(
            f"| {s['side']} | {s['insert_per_s']:,} | {s['fill_s']} "
            f"| {pk['packs_per_s']} ({pk['ids_per_s']:,}) | {s['query']['per_s']:,} "
            f"| {_mib(s['index_bytes'])} | {_mib(s['peak_rss'])} | {_mib(s['peak_rss_anon'])} "
            f"| {_mib(s['peak_rss_file'])} | {ok} | {_mib(s['fill_peak_rss_anon'])} |"
        )
    lines += ["", "Insert rate and memory as the index grows:", ""]
    lines += ["| index | chunks | insert ids/s (this step) | RSS anon MiB | RSS file MiB |"]
    lines += ["|---|---|---|---|---|"]
    for s in rep["sides"]:
        for p in s["checkpoints"]:
            lines.append(
                f"| {s['side']} | {p['chunks']:,} | {p['insert_per_s']:,} "
                f"| {_mib(p['rss_anon'])} | {_mib(p['rss_file'])} |"
            )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--chunks", type=int, default=10_000_000, help="ids per index (default 10M)")
    p.add_argument("--fill-batch", type=int, default=100_000, help="ids per bulk-load transaction")
    p.add_argument("--per-pack", type=int, default=512, help="ids per pack, after the bulk load")
    p.add_argument("--packs", type=int, default=200, help="packs indexed after the bulk load")
    p.add_argument("--queries", type=int, default=1_000_000, help="ids to look up per index")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, help="scratch folder (default: a temp folder, removed)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument("--side", choices=["server", "client", "both"], default="both")
    p.add_argument("--child", choices=["server", "client"], help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=["fill", "use"], help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        return child(args)
    sides = ["server", "client"] if args.side == "both" else [args.side]
    with tempfile.TemporaryDirectory(prefix="dv-scale-", dir=args.work) as tmp:
        free = shutil.disk_usage(tmp).free
        need = args.chunks * 200  # ≈ 100-150 B per entry in LMDB, with headroom
        if free < need:
            print(
                f"need ~{need / 1e9:.1f} GB free in {tmp}, have {free / 1e9:.1f}", file=sys.stderr
            )
            return 2
        results = [run_side(side, args, Path(tmp)) for side in sides]
    rep = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "benchmarks.scale", *(argv or sys.argv[1:])]),
        "chunks": args.chunks,
        "per_pack": args.per_pack,
        "fill_batch": args.fill_batch,
        "packs": args.packs,
        "cpus": os.cpu_count(),
        "sides": results,
    }
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1))
    print(markdown(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
