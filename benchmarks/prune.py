"""Forget and prune at scale: `python -m benchmarks.prune` (figures in benchmarks/RESULTS.md).

Builds a chunk-server repository of N snapshots (default 1,000) over M chunks (default 1,000,000)
directly in the server's data folder: real sealed catalogues and pack headers (prune reads
them), synthetic data blobs (random bytes: prune never opens one, so `check --read-data` is not
run here; the tests run it), chunks of a window of 100 snapshots shuffled across packs so the
boundary packs mix live and dead chunks. Each snapshot shares 10 % of its chunks with the one
before. The server index is built by `reindex`, then a real `dicomvault-server` serves it and
the real CLI runs, each a child process measured from /proc (time, peak RSS, peak anonymous
RSS):

1. backup of a fresh 64 MiB tree alone (backup token, its own cache);
2. `forget --keep-last N/2 --group-by ''` (admin token): the known dead set is every chunk only
   the older half references;
3. `prune --max-unused 5%` while a second 64 MiB backup runs: prune's time and RSS, bytes
   reclaimed ÷ dead bytes, bytes read and written by repacking, and the backup's throughput
   against (1);
4. `stats` (the same pass over every catalogue as prune's mark): time and RSS.

Each snapshot's record lists the chunks it stored new, as a backup's does, so the records of
all snapshots together name every chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.clikit import PASSPHRASE, cli_command, cli_env
from benchmarks.serverkit import ServerProcess
from client.repository import Repository
from engine import blob
from engine.backend import LocalBackend
from engine.blob import Content, Hint
from engine.catalogue import Entry, SnapshotBody
from engine.ids import ChunkId
from engine.keys import CHEAP_KDF
from engine.repoconfig import init_repository
from engine.store.local import LocalStore
from server.admin import create_repository_offline, reindex_offline
from server.config import ServerConfig

REPO = "bench"
MiB = 1024 * 1024
WINDOW = 100  # snapshots whose chunks are shuffled together across packs
FILES = 10  # catalogue entries per snapshot
SHARED = 0.1  # share of a snapshot's chunks taken from the one before


@dataclass
class Built:
    snapshots: int
    chunks: int
    blob_bytes: int
    dead_bytes: int
    seconds: float


async def build(repo_dir: Path, cache: Path, snapshots: int, chunks: int, size: int) -> Built:
    start = time.monotonic()
    backend = LocalBackend(LocalStore(repo_dir), str(repo_dir))
    await init_repository(backend, PASSPHRASE, CHEAP_KDF)
    repo = await Repository.open(backend, PASSPHRASE, cache)
    rng = random.Random(1)
    per = chunks // snapshots  # unique data chunks per snapshot
    shared = int(per * SHARED)  # and this many more, reused from the snapshot before
    lists: list[list[ChunkId]] = []
    trees: list[list[ChunkId]] = []  # each snapshot's catalogue chunks
    length: dict[ChunkId, int] = {}
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    try:
        for w in range(0, snapshots, WINDOW):
            window = range(w, min(w + WINDOW, snapshots))
            fresh: list[ChunkId] = []
            for i in window:
                own = [ChunkId(os.urandom(32)) for _ in range(per)]
                fresh += own
                prev = lists[i - 1][:shared] if i else []
                lists.append(own + prev)
            rng.shuffle(fresh)
            for cid in fresh:
                length[cid] = size
                repo.packer.add(cid, os.urandom(size), size, Content.DATA)
                if repo.packer.full:
                    await repo.packer.flush()
            for i in window:
                tree = await _catalogue(repo, lists[i], size, length)
                trees.append([c for c, _ in tree])
                when = (t0 + timedelta(hours=i)).isoformat().replace("+00:00", "Z")
                stats = {"files": FILES, "dirs": 0, "bytes": per * size}
                body = SnapshotBody(when, "pacs", ["/srv/pacs"], tree, stats, [], [])
                # refs as a backup's: every chunk it stored new (the record carries them all)
                refs = [c for c, _ in tree] + lists[i][:per]
                await repo.commit(body, None, refs, "pacs")
        await repo.packer.flush()
    finally:
        await repo.close()
    keep = set(range(snapshots - snapshots // 2, snapshots))
    live = {c for i in keep for c in lists[i] + trees[i]}
    dead = sum(n for c, n in length.items() if c not in live)
    return Built(snapshots, len(length), sum(length.values()), dead, time.monotonic() - start)


def _build(repo_dir: Path, cache: Path, args: argparse.Namespace) -> Built:
    return asyncio.run(build(repo_dir, cache, args.snapshots, args.chunks, args.size))


async def _catalogue(
    repo: Repository, ids: list[ChunkId], size: int, length: dict[ChunkId, int]
) -> list[tuple[ChunkId, int]]:
    per_file = max(1, len(ids) // FILES)
    lines = b"".join(
        Entry(f"srv/pacs/f{f}.dcm", "file", 0o644, 0, per_file * size,
              [(c, size) for c in ids[f * per_file : (f + 1) * per_file]]).encode()
        for f in range(FILES)
    )  # fmt: skip
    tree = []
    for piece in repo.chunker.cut_stream(io.BytesIO(lines), len(lines), 0, 0):
        cid = repo.key.chunk_id(piece.data)
        tree.append((cid, len(piece.data)))
        if cid in length:
            continue  # the same stretch of catalogue as another snapshot's: stored once
        sealed = blob.seal(repo.key, cid, piece.data, Hint(Content.TREE))
        repo.packer.add(cid, sealed, len(piece.data), Content.TREE)
        length[cid] = len(sealed)
    return tree


class Child:
    """A child process: its peak RSS (VmHWM: LMDB's mapped index pages count there), peak
    anonymous RSS (what the process itself allocated) and peak file-backed RSS (mapped file
    pages, mostly LMDB's, which the kernel can drop), sampled from /proc every 20 ms. Not
    wait4's ru_maxrss: a forked child starts with its parent's pages, and this parent has just
    mapped the server's index for reindex."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.start = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.cmd = cmd
        self.anon_kib = 0
        self.file_kib = 0
        self.hwm_kib = 0
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        status = Path(f"/proc/{self.proc.pid}/status")
        while True:
            try:
                text = status.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("RssAnon:"):
                    self.anon_kib = max(self.anon_kib, int(line.split()[1]))
                elif line.startswith("RssFile:"):
                    self.file_kib = max(self.file_kib, int(line.split()[1]))
                elif line.startswith("VmHWM:"):
                    self.hwm_kib = max(self.hwm_kib, int(line.split()[1]))
            if "State:\tZ" in text:
                return
            time.sleep(0.02)

    def wait(self) -> tuple[float, int, str]:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out = self.proc.stdout.read()
        err = self.proc.stderr.read()
        self.proc.wait()
        self._sampler.join(5)
        if self.proc.returncode:
            raise SystemExit(f"{' '.join(self.cmd)} failed: {err.decode()[-2000:]}")
        return time.monotonic() - self.start, self.hwm_kib, out.decode()


def _tree(root: Path, mib: int, seed: int) -> Path:
    root.mkdir(parents=True)
    rng = random.Random(seed)
    for i in range(mib // 4):
        (root / f"f{i}.bin").write_bytes(rng.randbytes(4 * MiB))
    return root


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="dv-prune-bench-", dir=args.dir))
    server = None
    try:
        data = root / "server"
        config = ServerConfig(data_dir=data)
        tokens = create_repository_offline(config, REPO)
        # In a child process: the builder's 10⁶ ids would otherwise count in every measured
        # child's peak RSS (a forked child starts with its parent's pages).
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            built = pool.apply(_build, (data / "repos" / REPO, root / "builder", args))
        reindex_offline(config)
        server = ServerProcess(data).start()
        port = server.port
        (root / "pw").write_bytes(PASSPHRASE + b"\n")
        base = cli_env(DICOMVAULT_REPO=f"http://127.0.0.1:{port}/{REPO}",
                       DICOMVAULT_PASSWORD_FILE=str(root / "pw"))  # fmt: skip
        agent = base | {"DICOMVAULT_TOKEN": tokens["backup"],
                        "DICOMVAULT_CACHE_DIR": str(root / "agent")}  # fmt: skip
        admin = base | {"DICOMVAULT_TOKEN": tokens["admin"],
                        "DICOMVAULT_CACHE_DIR": str(root / "admin")}  # fmt: skip
        cli = cli_command()
        t1 = _tree(root / "tree1", args.backup_mib, 1)
        alone_s, _, _ = Child([*cli, "backup", str(t1), "--json"], agent).wait()
        forgetting = Child(
            [*cli, "forget", "--keep-last", str(args.snapshots // 2), "--group-by", "",
             "--json"], admin,
        )  # fmt: skip
        forget_s, forget_rss, _ = forgetting.wait()
        t2 = _tree(root / "tree2", args.backup_mib, 2)
        pruning = Child([*cli, "prune", "--max-unused", args.max_unused, "--json"], admin)
        time.sleep(args.backup_delay)  # let prune take its lock and start marking
        during = Child([*cli, "backup", str(t2), "--json"], agent)
        during_s, _, _ = during.wait()
        prune_s, prune_rss, out = pruning.wait()
        report = json.loads(out)
        counting = Child([*cli, "stats", "--json"], admin)
        stats_s, stats_rss, _ = counting.wait()
        dead_freed = report["bytes_unused"] - report["unused_after"]  # blob bytes
        return {
            "snapshots": built.snapshots,
            "chunks": built.chunks,
            "blob_bytes": built.blob_bytes,
            "dead_bytes": built.dead_bytes,
            "build_s": round(built.seconds, 1),
            "forget_s": round(forget_s, 2),
            "forget_peak_rss_mib": round(forget_rss / 1024, 1),
            "forget_peak_anon_mib": round(forgetting.anon_kib / 1024, 1),
            "forget_peak_file_mib": round(forgetting.file_kib / 1024, 1),
            "prune_s": round(prune_s, 2),
            "prune_peak_rss_mib": round(prune_rss / 1024, 1),
            "prune_peak_anon_mib": round(pruning.anon_kib / 1024, 1),
            "prune_peak_file_mib": round(pruning.file_kib / 1024, 1),
            "stats_s": round(stats_s, 2),
            "stats_peak_rss_mib": round(stats_rss / 1024, 1),
            "stats_peak_anon_mib": round(counting.anon_kib / 1024, 1),
            "packs": report["packs"],
            "packs_deleted": report["packs_deleted"],
            "packs_repacked": report["packs_repacked"],
            "repack_bytes_read": report["bytes_repacked"],
            "repack_bytes_written": report["bytes_written"],
            "bytes_reclaimed": report["bytes_reclaimed"],
            "dead_blob_bytes_reclaimed": dead_freed,
            "reclaimed_over_dead": round(dead_freed / built.dead_bytes, 4),
            "stored_bytes_freed": report["bytes_reclaimed"] - report["bytes_written"],
            "packs_kept_for_concurrent_backups": len(report["packs_kept_for_concurrent_backups"]),
            "backup_mib": args.backup_mib,
            "backup_alone_mib_s": round(args.backup_mib / alone_s, 1),
            "backup_during_prune_mib_s": round(args.backup_mib / during_s, 1),
        }
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.prune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--snapshots", type=int, default=1000)
    p.add_argument("--chunks", type=int, default=1_000_000)
    p.add_argument("--size", type=int, default=512, help="bytes per synthetic blob")
    p.add_argument("--backup-mib", type=int, default=64)
    p.add_argument("--max-unused", default="5%", help="prune's --max-unused (default 5%%)")
    p.add_argument("--backup-delay", type=float, default=1.0)
    p.add_argument("--dir", default=None, help="where to build (default: the temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the built repository")
    args = p.parse_args()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
