"""Replication benchmark: two real `dicomvault-server` processes on loopback.

Measures (1) bulk throughput: a primary already holding N packs is started with a peer and
anti-entropy sends everything; (2) lag after a burst: N packs are uploaded to a primary that
replicates continuously, and we time until its replication lag reaches zero (packs, bytes and
the oldest pending age are sampled from `GET /v1/repos/NAME/replication` while draining).
Packs are random bytes in the real pack format (the server is keyless; random blobs do not
compress, like sealed ones). Nothing here is needed at run time.

    python -m benchmarks.replication                       # 24 packs of 16 MiB
    python -m benchmarks.replication --packs 48 --pack-mib 16 --rate 100MiB/s --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.serverkit import ServerProcess
from engine.ids import ChunkId, PackId
from engine.pack import PackBuilder
from engine.remote import RemoteBackend

MiB = 1024 * 1024
MB = 1_000_000
REPO = "bench"


class Server(ServerProcess):
    """A site: `serve --config` with quick replication retries and, once configured, peers."""

    def __init__(self, root: Path, name: str) -> None:
        super().__init__(root / name, name=name)

    def configure(self, peers: list[dict[str, Any]]) -> None:
        self.write_config(
            peers, site_name=self.name, replication_poll_interval=0.2, replication_retry_max=2.0
        )

    def lag(self, token: str) -> dict[str, Any]:
        peer: dict[str, Any] = self.get_json(f"/v1/repos/{REPO}/replication", token)["peers"][0]
        return peer

    def peer_token(self, primary: str) -> str:
        """A replica token here for `primary`, bound to REPO."""
        token: str = self.cli_json("peer-token", "create", "--name", primary, "--repo", REPO)[
            "token"
        ]
        return token


def make_pack(pack_mib: int) -> tuple[PackId, bytes]:
    builder = PackBuilder()
    for _ in range(pack_mib):  # 1 MiB chunks, like the client's average
        builder.add(ChunkId(os.urandom(32)), os.urandom(MiB))
    return builder.finish(sealed_header=os.urandom(64))


async def upload(server: Server, token: str, packs: int, pack_mib: int) -> float:
    """Upload `packs` fresh packs; return the seconds it took."""
    backend = RemoteBackend(f"{server.url}/{REPO}", token)
    start = time.perf_counter()
    try:
        for _ in range(packs):
            pack_id, data = make_pack(pack_mib)
            await backend.put_pack(pack_id, data)
    finally:
        await backend.close()
    return time.perf_counter() - start


def drain(primary: Server, token: str, start: float) -> tuple[float, list[dict[str, Any]]]:
    """Poll the lag until nothing is pending; return (seconds since `start`, samples)."""
    samples = []
    while True:
        lag = primary.lag(token)
        samples.append({"t": round(time.perf_counter() - start, 2), **_lag_fields(lag)})
        if lag["pending_items"] == 0:
            return time.perf_counter() - start, samples
        time.sleep(0.1)


def _lag_fields(lag: dict[str, Any]) -> dict[str, Any]:
    keys = ("pending_packs", "pending_bytes", "oldest_pending_age")
    return {k: lag[k] for k in keys}


def bulk(root: Path, packs: int, pack_mib: int, rate: str | None) -> dict[str, Any]:
    """Throughput: the primary holds `packs` packs, then is restarted with the peer."""
    a, b = Server(root, "bulk-a"), Server(root, "bulk-b")
    token = b.peer_token("bulk-a")
    tokens = a.create_repo(REPO)
    b.configure([])
    a.configure([])
    b.start()
    a.start()
    try:
        asyncio.run(upload(a, tokens["backup"], packs, pack_mib))
        a.stop()
        peer = {"name": "bulk-b", "url": b.url, "token": token}
        a.configure([{**peer, "rate_limit": rate}] if rate else [peer])
        start = time.perf_counter()
        a.start()
        seconds, _ = drain(a, tokens["admin"], start)
    finally:
        a.stop()
        b.stop()
    size = sum(p.stat().st_size for p in (b.data / "repos" / REPO / "packs").rglob("*"))
    return {"packs": packs, "bytes": size, "seconds": round(seconds, 2),
            "mb_per_s": round(size / MB / seconds, 1)}  # fmt: skip


def burst(root: Path, packs: int, pack_mib: int, rate: str | None) -> dict[str, Any]:
    """Lag: upload a burst to a continuously replicating primary, time until the lag is 0."""
    a, b = Server(root, "burst-a"), Server(root, "burst-b")
    token = b.peer_token("burst-a")
    tokens = a.create_repo(REPO)
    peer: dict[str, Any] = {"name": "burst-b", "url": b.url, "token": token}
    if rate:
        peer["rate_limit"] = rate
    b.configure([])
    a.configure([peer])
    b.start()
    a.start()
    try:
        start = time.perf_counter()
        upload_s = asyncio.run(upload(a, tokens["backup"], packs, pack_mib))
        at_end = _lag_fields(a.lag(tokens["admin"]))
        total_s, samples = drain(a, tokens["admin"], start)
    finally:
        a.stop()
        b.stop()
    return {
        "packs": packs,
        "bytes": packs * pack_mib * MiB,
        "upload_s": round(upload_s, 2),
        "lag_at_end_of_burst": at_end,
        "lag_zero_after_burst_s": round(total_s - upload_s, 2),
        "lag_zero_after_start_s": round(total_s, 2),
        "max_pending_packs": max(s["pending_packs"] for s in samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packs", type=int, default=24)
    parser.add_argument("--pack-mib", type=int, default=16)
    parser.add_argument("--rate", help="peer rate limit, e.g. 50MiB/s (default: none)")
    parser.add_argument("--out", type=Path, help="work folder (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="dvrepl-", dir=args.out))
    try:
        result = {
            "bulk": bulk(root, args.packs, args.pack_mib, args.rate),
            "burst": burst(root, args.packs, args.pack_mib, args.rate),
            "rate_limit": args.rate,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    b, u = result["bulk"], result["burst"]
    print(f"| measure | value |\n|---|---|\n"
          f"| bulk: {b['packs']} packs, {b['bytes'] / MB:.0f} MB | {b['seconds']} s, "
          f"{b['mb_per_s']} MB/s |\n"
          f"| burst upload ({u['packs']} packs) | {u['upload_s']} s |\n"
          f"| lag at end of burst | {u['lag_at_end_of_burst']['pending_packs']} packs |\n"
          f"| lag 0 after end of burst | {u['lag_zero_after_burst_s']} s |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
