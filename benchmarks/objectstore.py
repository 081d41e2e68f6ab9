"""Chunk servers on an S3 object store (a real SeaweedFS, `weed mini` on loopback) against the
local-folder store, in one run on this machine.

    python -m benchmarks.objectstore [--packs 32] [--pack-mib 8] [--fresh-packs 100000]
                                     [--json FILE]

1. Pack ingest MB/s through the HTTP API (4 uploads in flight, random packs): a server on the
   local folder, one server on SeaweedFS, two servers on one SeaweedFS bucket (uploads
   alternate between them); and the ceiling, the same packs PUT straight into the bucket.
2. Missing-query ids/s on a node that has never seen the repository (it catches up from the
   pack log on the first query).
3. A fresh node on a repository of `--fresh-packs` packs (their log entries and stand-in pack
   objects written straight to the bucket): time and store requests of the first node's
   catch-up (which folds the log into segments) and of a second fresh node (which reads the
   segments), against reindex's three requests per pack.
4. Restore MB/s: every pack read back through the API (4 in flight), local folder and SeaweedFS.

Servers run in process (`server.app.make_app` on loopback sockets). Measures; changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import obstore
from aiohttp import web

from benchmarks.seaweed import SeaweedFS, free_port, settings, start_seaweedfs
from engine.ids import ChunkId, PackId
from engine.pack import ManifestEntry, PackBuilder, pack_name
from engine.store.s3 import S3Root, S3Settings
from server.admin import create_repository
from server.app import make_app
from server.catchup import PACKLOG, CatchUp, encode_entry, entry_name, publish_tokens
from server.config import ServerConfig
from server.state import CATCHUP, CLOCK, INDEX, REPOS

MB = 1_000_000
MiB = 1 << 20
REPO = "clinic"
IN_FLIGHT = 4


@dataclass
class Figures:
    machine: str = ""
    pack_mib: float = 0.0
    packs: int = 0
    ingest_mb_s: dict[str, float] = field(default_factory=dict)
    restore_mb_s: dict[str, float] = field(default_factory=dict)
    missing_ids_per_s_catching_up: float = 0.0
    fresh: dict[str, Any] = field(default_factory=dict)


def make_packs(count: int, pack_mib: float) -> list[tuple[PackId, bytes, list[ChunkId]]]:
    """Random packs of 1 MiB blobs (the chunker's average): incompressible, keyless."""
    out = []
    for _ in range(count):
        builder, ids = PackBuilder(), []
        for _ in range(max(1, int(pack_mib))):
            chunk_id = ChunkId(os.urandom(32))
            builder.add(chunk_id, os.urandom(MiB))
            ids.append(chunk_id)
        pack_id, data = builder.finish(sealed_header=os.urandom(64))
        out.append((pack_id, data, ids))
    return out


@dataclass
class Node:
    app: web.Application
    runner: web.AppRunner
    url: str


@asynccontextmanager
async def node(data: Path, store: S3Settings | None) -> AsyncIterator[Node]:
    config = ServerConfig(data_dir=data, store=store, scrub_interval=0.0, scrub_rate=None)
    app = make_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Node(app, runner, f"http://127.0.0.1:{port}/v1/repos/{REPO}")
    finally:
        await runner.cleanup()


async def _bounded(calls: Sequence[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def ingest(urls: list[str], token: str, packs: list[tuple[PackId, bytes, Any]]) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:

        async def put(i: int) -> None:
            pack_id, data, _ = packs[i]
            async with http.put(f"{urls[i % len(urls)]}/packs/{pack_id.hex()}", data=data) as r:
                assert r.status in (200, 201), await r.text()

        start = time.perf_counter()
        await _bounded([lambda i=i: put(i) for i in range(len(packs))], IN_FLIGHT)
        elapsed = time.perf_counter() - start
    return sum(len(p[1]) for p in packs) / MB / elapsed


async def raw_put(weed: SeaweedFS, packs: list[tuple[PackId, bytes, Any]]) -> float:
    """The ceiling: the same packs PUT straight into the bucket, no server in between."""
    root = S3Root(settings(weed, f"raw-{secrets.token_hex(4)}"))
    start = time.perf_counter()
    calls = [
        lambda p=p: obstore.put_async(root.bucket, f"{root.settings.prefix}/{p[0].hex()}", p[1])
        for p in packs
    ]
    await _bounded(calls, IN_FLIGHT)
    return sum(len(p[1]) for p in packs) / MB / (time.perf_counter() - start)


async def restore(url: str, token: str, packs: list[tuple[PackId, bytes, Any]]) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:

        async def get(i: int) -> None:
            pack_id, data, _ = packs[i]
            async with http.get(f"{url}/packs/{pack_id.hex()}") as r:
                assert await r.read() == data, "a pack read back differs"

        start = time.perf_counter()
        await _bounded([lambda i=i: get(i) for i in range(len(packs))], IN_FLIGHT)
        elapsed = time.perf_counter() - start
    return sum(len(p[1]) for p in packs) / MB / elapsed


async def missing_rate(url: str, token: str, ids: list[ChunkId]) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        start = time.perf_counter()
        async with http.post(f"{url}/missing", data=b"".join(ids)) as r:
            assert await r.read() == b"", "the catching-up node reported known chunks missing"
        return len(ids) / (time.perf_counter() - start)


def _repo_tokens(n: Node) -> dict[str, str]:
    return create_repository(n.app[REPOS], n.app[INDEX], REPO, n.app[CLOCK].time())


async def ingest_and_restore(
    folder: Path, weed: SeaweedFS, packs: list[tuple[PackId, bytes, list[ChunkId]]], fig: Figures
) -> None:
    async with node(folder / "local", None) as local:
        token = _repo_tokens(local)["backup"]
        fig.ingest_mb_s["local folder"] = await ingest([local.url], token, packs)
        fig.restore_mb_s["local folder"] = await restore(local.url, token, packs)
    fig.ingest_mb_s["SeaweedFS raw PUT, no server"] = await raw_put(weed, packs)
    for nodes in (1, 2):
        store = settings(weed, f"bench-{nodes}-{secrets.token_hex(4)}")
        async with (
            node(folder / f"s3-{nodes}a", store) as a,
            node(folder / f"s3-{nodes}b", store) as b,
        ):
            token = _repo_tokens(a)["backup"]
            await publish_tokens(a.app[INDEX], a.app[REPOS].site)
            urls = [a.url, b.url][:nodes]
            fig.ingest_mb_s[f"SeaweedFS, {nodes} node{'s' if nodes > 1 else ''}"] = await ingest(
                urls, token, packs
            )
            if nodes == 1:
                fig.restore_mb_s["SeaweedFS"] = await restore(a.url, token, packs)
                ids = [c for _, _, chunk_ids in packs for c in chunk_ids]
                async with node(folder / "s3-late", store) as late:
                    fig.missing_ids_per_s_catching_up = await missing_rate(late.url, token, ids)


async def fresh_node(folder: Path, weed: SeaweedFS, count: int, fig: Figures) -> None:
    """`count` packs logged in the bucket; a first node catches up (and folds segments), then
    a second fresh node."""
    store = settings(weed, f"fresh-{secrets.token_hex(4)}")
    root = S3Root(store)
    repo_prefix = f"{store.prefix}/repos/{REPO}"
    root.make_folder(f"repos/{REPO}")
    days = 30 * 86400.0  # logged over the last month: old enough to fold, as in service
    stamp = time.time() - days
    entries = [ManifestEntry(ChunkId(os.urandom(32)), i * MiB, MiB) for i in range(16)]
    entry = encode_entry(16 * MiB, stamp, entries)

    async def write(i: int) -> None:
        pack_id = PackId(os.urandom(32))
        await obstore.put_async(root.bucket, f"{repo_prefix}/{pack_name(pack_id)}", b"p")
        name = entry_name(stamp + i * days / count, pack_id)
        await obstore.put_async(root.bucket, f"{repo_prefix}/{name}", entry)

    start = time.perf_counter()
    await _bounded([lambda i=i: write(i) for i in range(count)], 64)
    fig.fresh["write_s"] = round(time.perf_counter() - start, 1)
    progress(f"{count} packs logged in {fig.fresh['write_s']} s")
    for label in ("first node (folds segments)", "second fresh node (reads segments)"):
        async with node(folder / f"fresh-{label[:5]}", store) as n:
            repo = n.app[REPOS].get(REPO)
            catch_up: CatchUp = n.app[CATCHUP]
            start = time.perf_counter()
            report = await catch_up.packs(repo)
            elapsed = time.perf_counter() - start
            figures = {name: getattr(report, name) for name in report.FIGURES}
            fig.fresh[label] = {"seconds": round(elapsed, 1), **figures}
            progress(f"{label}: {fig.fresh[label]}")
    fig.fresh["packs"] = count
    fig.fresh["reindex_requests_estimate"] = 3 * count + count // 1000
    listed = sum(1 for b in obstore.list(root.bucket, f"{repo_prefix}/{PACKLOG}") for _ in b)
    folded = fig.fresh["first node (folds segments)"]["entries_deleted"]
    assert listed == count - folded  # folded entries are deleted (docs/design.md §3.1.3)


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> Figures:
    fig = Figures(machine=f"{platform.machine()}, {os.cpu_count()} cores", pack_mib=args.pack_mib)
    with tempfile.TemporaryDirectory(prefix="dv-objectstore-") as tmp:
        folder = Path(tmp)
        weed = start_seaweedfs(folder / "seaweedfs")
        try:
            if args.packs:
                packs = make_packs(args.packs, args.pack_mib)
                fig.packs = len(packs)
                progress("ingest and restore")
                await ingest_and_restore(folder, weed, packs, fig)
                progress(f"ingest {fig.ingest_mb_s}, restore {fig.restore_mb_s}")
            if args.fresh_packs:
                await fresh_node(folder, weed, args.fresh_packs, fig)
        finally:
            weed.stop()
    return fig


def report(fig: Figures) -> str:
    lines = [f"machine: {fig.machine}; {fig.packs} packs of {fig.pack_mib:g} MiB"]
    for what, rates in (("ingest", fig.ingest_mb_s), ("restore", fig.restore_mb_s)):
        lines += [f"{what:8} {name:22} {rate:8.1f} MB/s" for name, rate in rates.items()]
    local = fig.ingest_mb_s.get("local folder", 0.0)
    for name, rate in fig.ingest_mb_s.items():
        if name != "local folder" and local:
            lines.append(f"ratio    {name:22} {rate / local:8.2f} x local")
    lines.append(f"missing-query, catching-up node: {fig.missing_ids_per_s_catching_up:,.0f} ids/s")
    for label, value in fig.fresh.items():
        lines.append(f"fresh node: {label}: {value}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.objectstore", description=__doc__)
    parser.add_argument("--packs", type=int, default=32, help="packs per target (0: skip 1, 2, 4)")
    parser.add_argument("--pack-mib", type=float, default=8.0, help="MiB per pack")
    parser.add_argument("--fresh-packs", type=int, default=100_000, help="0 skips part 3")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    fig = asyncio.run(run(args))
    print(report(fig))
    if args.json:
        args.json.write_text(json.dumps(asdict(fig), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
