"""Throughput of dicomvault on real DICOM: each pipeline stage alone, then backup and restore end to
end through the CLI, and restic's backup and restore of the same tree in the same run.

    python -m benchmarks.throughput [--size-mb 400] [--out DIR] [--json FILE] [--repeat 3]
                                    [--drop-caches] [--skip-stages] [--skip-restic]

Stage figures are single-threaded, in memory, on the corpus bytes (no disk except the two stages
that say so). End-to-end figures run `dicomvault` and `restic` as child processes against
repositories on the same disk as the corpus, with a fresh repository and cache per backup (so every
backup is of new data), and report the median of `--repeat` runs, the peak RSS of the client and
its CPU seconds per wall second (2.0 = both cores busy). Every restore is compared file by file with
the corpus, and a wrong restore aborts the benchmark rather than report a speed for it.
Measures the engine and the client; changes neither.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MB,
    Corpus,
    Dicomvault,
    Restic,
    RunStats,
    Tool,
    build_corpus,
    can_drop_caches,
    corpus_files,
    diff_digests,
    dir_size,
    drop_caches,
    machine_load,
    mb_per_s,
    median,
    restic_binary,
    restic_version,
    tree_digest,
)
from client.walk import pieces
from engine import blob
from engine.blob import Codec, Hint
from engine.catalogue import PACK_HEADER_AD
from engine.chunker import Chunker, Piece
from engine.dicom import DicomLayout, segment
from engine.ids import ChunkId, PackId
from engine.keys import MasterKey
from engine.pack import HEADER_ENTRY_SIZE, TARGET_SIZE, PackBuilder, pack_name
from engine.store.local import LocalStore

BACKUP_TARGET = 1.0  # end-to-end backup at least as fast as restic
RESTORE_TARGET = 2.0  # end-to-end restore at least twice as fast as restic


Pack = tuple[PackId, bytes, list[int]]  # id, bytes, offset of each blob


class WrongRestore(RuntimeError):
    """A restore did not reproduce the corpus bit for bit; no speed is reported for it."""


# --- stage micro-benchmarks ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stage:
    side: str  # "backup" or "restore"
    name: str
    input_bytes: int  # bytes this stage consumes (raw, encoded or sealed, as it sees them)
    seconds: float
    note: str

    def as_json(self, corpus_bytes: int) -> dict[str, Any]:
        return {
            **asdict(self),
            "mb_s": round(mb_per_s(self.input_bytes, self.seconds), 1),
            "corpus_mb_s": round(mb_per_s(corpus_bytes, self.seconds), 1),
        }


@dataclass
class _Chunk:
    piece: Piece
    hint: Hint
    chunk_id: ChunkId | None = None
    codec: int = 0
    payload: bytes = b""
    sealed: bytes = b""


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _segment_all(files: list[bytes]) -> list[DicomLayout]:
    return [segment(data) for data in files]


def _chunk_all(chunker: Chunker, files: list[bytes], layouts: list[DicomLayout]) -> list[_Chunk]:
    out: list[_Chunk] = []
    for data, layout in zip(files, layouts, strict=True):
        f = io.BytesIO(data)
        out += [_Chunk(p, h) for p, h in pieces(chunker, f, layout, len(data), Codec.JPEGLS)]
    return out


def _hash_all(key: MasterKey, chunks: list[_Chunk]) -> list[_Chunk]:
    """Name every chunk; return the first of each id, which is what backup goes on to seal."""
    unique: dict[ChunkId, _Chunk] = {}
    for c in chunks:
        c.chunk_id = key.chunk_id(c.piece.data)
        unique.setdefault(c.chunk_id, c)
    return list(unique.values())


def _encode_all(chunks: list[_Chunk]) -> None:
    for c in chunks:
        c.codec, c.payload = blob.encode(c.piece.data, c.hint)


def _plaintext(c: _Chunk) -> bytes:
    # Mirrors blob.seal: frame, then Padmé padding; blob._FRAME is the format's one definition.
    framed = blob._FRAME.pack(c.codec, len(c.piece.data), len(c.payload)) + c.payload
    return framed + bytes(blob.padme(len(framed)) - len(framed))


def _encrypt_all(key: MasterKey, chunks: list[_Chunk], plaintexts: list[bytes]) -> None:
    for c, plain in zip(chunks, plaintexts, strict=True):
        assert c.chunk_id is not None
        c.sealed = blob.seal_plaintext(key, c.chunk_id, plain)


def _pack_all(key: MasterKey, chunks: list[_Chunk]) -> list[Pack]:
    """Build ~16 MiB packs as `engine.packer.Packer` does; keep each blob's offset for reading."""
    packs: list[Pack] = []
    builder, offsets = PackBuilder(), []
    for i, c in enumerate(chunks):
        assert c.chunk_id is not None
        offsets.append(builder.add(c.chunk_id, c.sealed).offset)
        if builder.blob_bytes >= TARGET_SIZE or i == len(chunks) - 1:
            header = blob.seal_plaintext(
                key, PACK_HEADER_AD, bytes(HEADER_ENTRY_SIZE * len(builder))
            )
            pack_id, data = builder.finish(header)
            packs.append((pack_id, data, offsets))
            builder, offsets = PackBuilder(), []
    return packs


def _write_packs(store: LocalStore, packs: list[Pack]) -> None:
    async def put_all() -> None:
        for pack_id, data, _ in packs:
            await store.put(pack_name(pack_id), data)

    asyncio.run(put_all())


def _read_blobs(store: LocalStore, packs: list[Pack], chunks: list[_Chunk]) -> list[bytes]:
    """One range read per blob, as restore does."""

    async def read_all() -> list[bytes]:
        out: list[bytes] = []
        it = iter(chunks)
        for pack_id, _, offsets in packs:
            for offset in offsets:
                size = len(next(it).sealed)
                out.append(await store.get_range(pack_name(pack_id), offset, size))
        return out

    return asyncio.run(read_all())


def _decrypt_all(key: MasterKey, chunks: list[_Chunk], blobs: list[bytes]) -> list[bytes]:
    out = []
    for c, sealed in zip(chunks, blobs, strict=True):
        assert c.chunk_id is not None
        out.append(blob.open_plaintext(key, c.chunk_id, sealed))
    return out


def _decode_all(chunks: list[_Chunk]) -> list[bytes]:
    return [blob.decode(c.codec, c.payload, len(c.piece.data)) for c in chunks]


def _verify_all(key: MasterKey, chunks: list[_Chunk], decoded: list[bytes]) -> int:
    """Hash every decoded chunk as restore does; return how many do not match their id."""
    return sum(key.chunk_id(d) != c.chunk_id for c, d in zip(chunks, decoded, strict=True))


def _write_files(target: Path, files: list[bytes]) -> None:
    for i, data in enumerate(files):
        (target / f"{i:06d}.dcm").write_bytes(data)


@dataclass
class _StageRun:
    """What the stages hand each other, and the figures they produce."""

    key: MasterKey
    files: list[bytes]
    scratch: Path
    stages: list[Stage] = field(default_factory=list)

    def time(self, side: str, name: str, nbytes: int, note: str, fn: Callable[[], Any]) -> Any:
        result, seconds = _timed(fn)
        self.stages.append(Stage(side, name, nbytes, seconds, note))
        return result


def _backup_stages(run: _StageRun) -> tuple[list[_Chunk], list[Pack], LocalStore]:
    files, key, total = run.files, run.key, sum(map(len, run.files))
    layouts = run.time(
        "backup", "segment", total, "engine.dicom.segment per file", lambda: _segment_all(files)
    )
    chunks = run.time(
        "backup",
        "chunk",
        total,
        "client.walk.pieces: FastCDC + row bands",
        lambda: _chunk_all(Chunker(key.chunker_seed), files, layouts),
    )
    unique = run.time(
        "backup",
        "hash",
        total,
        "MasterKey.chunk_id (keyed BLAKE3, 1 thread)",
        lambda: _hash_all(key, chunks),
    )
    run.time(
        "backup",
        "encode",
        _raw_bytes(unique),
        "blob.encode with walk hints (JPEG-LS/zstd)",
        lambda: _encode_all(unique),
    )
    plaintexts = [_plaintext(c) for c in unique]
    run.time(
        "backup",
        "encrypt",
        sum(map(len, plaintexts)),
        "blob.seal_plaintext (AES-256-GCM)",
        lambda: _encrypt_all(key, unique, plaintexts),
    )
    packs = run.time(
        "backup",
        "pack",
        _sealed_bytes(unique),
        "PackBuilder.add/finish incl. pack-id BLAKE3",
        lambda: _pack_all(key, unique),
    )
    store = LocalStore(run.scratch / "stage-store")
    run.time(
        "backup",
        "write",
        sum(len(p[1]) for p in packs),
        "LocalStore.put (fsync) to the corpus disk",
        lambda: _write_packs(store, packs),
    )
    return unique, packs, store


def _restore_stages(
    run: _StageRun, unique: list[_Chunk], packs: list[Pack], store: LocalStore
) -> None:
    key, sealed = run.key, _sealed_bytes(unique)
    blobs = run.time(
        "restore",
        "read",
        sealed,
        "LocalStore.get_range per blob (page cache)",
        lambda: _read_blobs(store, packs, unique),
    )
    plain = run.time(
        "restore",
        "decrypt",
        sealed,
        "blob.open_plaintext",
        lambda: _decrypt_all(key, unique, blobs),
    )
    blobs.clear()
    decoded = run.time(
        "restore",
        "decode",
        sum(map(len, plain)),
        "blob.decode (JPEG-LS/zstd)",
        lambda: _decode_all(unique),
    )
    plain.clear()
    bad = run.time(
        "restore",
        "verify",
        _raw_bytes(unique),
        "MasterKey.chunk_id of each decoded chunk",
        lambda: _verify_all(key, unique, decoded),
    )
    if bad:
        raise WrongRestore(f"{bad} chunks did not decode to their id in the stage benchmark")
    decoded.clear()
    out = _fresh(run.scratch / "stage-files")
    run.time(
        "restore",
        "write",
        sum(map(len, run.files)),
        "plain file writes, no fsync (as restore)",
        lambda: _write_files(out, run.files),
    )


def _raw_bytes(chunks: list[_Chunk]) -> int:
    return sum(len(c.piece.data) for c in chunks)


def _sealed_bytes(chunks: list[_Chunk]) -> int:
    return sum(len(c.sealed) for c in chunks)


def stage_benchmarks(corpus: Corpus, scratch: Path) -> list[Stage]:
    """Time every stage alone, single-threaded, over the corpus held in memory."""
    files = [p.read_bytes() for p in corpus_files(corpus.root)]
    run = _StageRun(MasterKey.generate(), files, scratch)
    unique, packs, store = _backup_stages(run)
    _restore_stages(run, unique, packs, store)
    shutil.rmtree(scratch / "stage-files")
    shutil.rmtree(scratch / "stage-store")
    return run.stages


def serial_bound(stages: Sequence[Stage], side: str, corpus_bytes: int) -> float:
    """Corpus MB/s if one thread ran every stage of `side` back to back."""
    return mb_per_s(corpus_bytes, sum(s.seconds for s in stages if s.side == side))


# --- end to end ----------------------------------------------------------------------------------


@dataclass
class EndToEnd:
    tool: str
    backups: list[RunStats] = field(default_factory=list)
    restores: list[RunStats] = field(default_factory=list)
    repo_bytes: int = 0
    version: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    def figures(self, corpus_bytes: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tool": self.tool,
            "version": self.version,
            "repo_bytes": self.repo_bytes,
        }
        for kind, runs in (("backup", self.backups), ("restore", self.restores)):
            wall = median(r.wall_s for r in runs)
            out[kind] = {
                "runs_s": [round(r.wall_s, 3) for r in runs],
                "median_s": round(wall, 3),
                "mb_s": round(mb_per_s(corpus_bytes, wall), 1),
                "peak_rss_mb": round(max(r.max_rss_bytes for r in runs) / MB, 1),
                "cpu_per_wall": round(median(r.cpu_share for r in runs), 2),
            }
        if self.summary:
            out["backup_summary"] = self.summary
        return out


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _maybe_drop(enabled: bool) -> None:
    if enabled:
        drop_caches()


def _tool_factories(scratch: Path, with_restic: bool) -> dict[str, Callable[[int], Tool]]:
    """One factory per tool: run number → a tool with a fresh, empty repository and cache."""

    def dicomvault(i: int) -> Tool:
        return Dicomvault(_fresh(scratch / f"dv-repo-{i}"), _fresh(scratch / f"dv-cache-{i}"))

    def restic(i: int) -> Tool:
        binary = restic_binary()
        assert binary is not None
        return Restic(binary, scratch / f"restic-repo-{i}", _fresh(scratch / f"restic-cache-{i}"))

    out: dict[str, Callable[[int], Tool]] = {"dicomvault": dicomvault}
    if with_restic and restic_binary() is not None:
        out["restic"] = restic
    return out


def _backups(
    corpus: Corpus,
    factories: dict[str, Callable[[int], Tool]],
    repeat: int,
    drop: bool,
    results: dict[str, EndToEnd],
) -> dict[str, Tool]:
    """Back up the corpus `repeat` times per tool, interleaved; return each tool's last repo."""
    last: dict[str, Tool] = {}
    for i in range(repeat):
        for name, make in factories.items():
            if name in last:
                _discard(last[name])
            tool = make(i)
            tool.init()
            _maybe_drop(drop)
            results[name].backups.append(tool.backup(corpus.root))
            print(
                f"  {name} backup {i + 1}/{repeat}: {results[name].backups[-1].wall_s:.1f} s",
                file=sys.stderr,
            )
            last[name] = tool
    for name, tool in last.items():
        results[name].repo_bytes = dir_size(tool.repo)
        if isinstance(tool, Dicomvault):
            results[name].summary = tool.last_backup
    return last


def _discard(tool: Tool) -> None:
    shutil.rmtree(tool.repo, ignore_errors=True)


def _restores(
    corpus: Corpus,
    tools: dict[str, Tool],
    repeat: int,
    drop: bool,
    want: dict[str, str],
    scratch: Path,
    results: dict[str, EndToEnd],
) -> None:
    """Restore each tool's last snapshot `repeat` times into empty folders and check every byte."""
    for i in range(repeat):
        for name, tool in tools.items():
            target = _fresh(scratch / f"{name}-restore")
            _maybe_drop(drop)
            stats = tool.restore(target)
            problems = diff_digests(want, tree_digest(target / corpus.root.relative_to("/")))
            if problems:
                raise WrongRestore(f"{name} restore is not bit-exact: {problems[:5]}")
            results[name].restores.append(stats)
            print(
                f"  {name} restore {i + 1}/{repeat}: {stats.wall_s:.1f} s, bit-exact",
                file=sys.stderr,
            )
            shutil.rmtree(target)


def end_to_end(
    corpus: Corpus, scratch: Path, repeat: int, drop: bool, with_restic: bool
) -> dict[str, EndToEnd]:
    factories = _tool_factories(scratch, with_restic)
    results = {name: EndToEnd(name) for name in factories}
    if "restic" in results:
        results["restic"].version = restic_version()
    want = tree_digest(corpus.root)
    last = _backups(corpus, factories, repeat, drop, results)
    _restores(corpus, last, repeat, drop, want, scratch, results)
    for tool in last.values():
        _discard(tool)
    return results


# --- report --------------------------------------------------------------------------------------


def ratios(e2e: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """dicomvault ÷ restic for speed (higher is better) and repository size (lower is better)."""
    if "restic" not in e2e:
        return {}
    dv, rs = e2e["dicomvault"], e2e["restic"]
    backup = dv["backup"]["mb_s"] / rs["backup"]["mb_s"]
    restore = dv["restore"]["mb_s"] / rs["restore"]["mb_s"]
    return {
        "backup_speed": round(backup, 2),
        "backup_target": BACKUP_TARGET,
        "backup_target_met": backup >= BACKUP_TARGET,
        "restore_speed": round(restore, 2),
        "restore_target": RESTORE_TARGET,
        "restore_target_met": restore >= RESTORE_TARGET,
        "repo_size": round(dv["repo_bytes"] / rs["repo_bytes"], 3),
    }


def _md_stages(stages: list[dict[str, Any]], bounds: dict[str, float]) -> list[str]:
    lines = [
        "| side | stage | MB/s (own input) | MB/s (corpus) | share of side | what |",
        "|---|---|---:|---:|---:|---|",
    ]
    for side in ("backup", "restore"):
        side_s = sum(s["seconds"] for s in stages if s["side"] == side)
        for s in (s for s in stages if s["side"] == side):
            lines.append(
                f"| {side} | {s['name']} | {s['mb_s']:,.1f} | {s['corpus_mb_s']:,.1f} | "
                f"{100 * s['seconds'] / side_s:.0f} % | {s['note']} |"
            )
        lines.append(
            f"| {side} | **all, one thread** | | **{bounds[side]:,.1f}** | 100 % | "
            "corpus MB ÷ sum of stage seconds |"
        )
    return lines


def _md_e2e(e2e: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| tool | op | median s | MB/s | runs (s) | peak RSS MB | CPU s / wall s | repo MB |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for name, f in e2e.items():
        for op in ("backup", "restore"):
            r = f[op]
            runs = ", ".join(f"{x:.2f}" for x in r["runs_s"])
            repo = f"{f['repo_bytes'] / MB:,.1f}" if op == "backup" else ""
            lines.append(
                f"| {name} | {op} | {r['median_s']:.2f} | {r['mb_s']:,.1f} | {runs} | "
                f"{r['peak_rss_mb']:,.0f} | {r['cpu_per_wall']:.2f} | {repo} |"
            )
    return lines


def _md_ratios(r: dict[str, Any]) -> list[str]:
    if not r:
        return ["restic: not installed, comparison skipped."]

    def verdict(met: bool) -> str:
        return "met" if met else "**not met**"

    return [
        "| dicomvault ÷ restic | ratio | target | |",
        "|---|---:|---:|---|",
        f"| backup speed | {r['backup_speed']:.2f}× | ≥ {r['backup_target']:.0f}× | "
        f"{verdict(r['backup_target_met'])} |",
        f"| restore speed | {r['restore_speed']:.2f}× | ≥ {r['restore_target']:.0f}× | "
        f"{verdict(r['restore_target_met'])} |",
        f"| repository size | {r['repo_size']:.3f}× | lower is better | |",
    ]


def _load_text(load: dict[str, float]) -> str:
    pressure = load.get("cpu_pressure_avg60_pct")
    text = f"loadavg {load['loadavg_1m']:.2f}"
    return text + (f", CPU pressure {pressure:.0f} %" if pressure is not None else "")


def markdown(report: dict[str, Any]) -> str:
    c, m = report["corpus"], report["machine"]
    kinds = ", ".join(
        f"{k} {v['files']} files / {v['bytes'] / MB:,.1f} MB"
        for k, v in sorted(c["by_kind"].items())
    )
    head = [
        f"# dicomvault throughput, {report['time']}",
        "",
        f"- machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}; "
        f"load before/after: {_load_text(m['load']['before'])} / {_load_text(m['load']['after'])}",
        f"- corpus: {c['files']} files, {c['bytes'] / MB:,.1f} MB from {c['sources']} real "
        f"DICOM sources (seed {c['seed']}): {kinds}",
        f"- page cache: {report['settings']['page_cache']}; "
        f"end to end = median of {report['settings']['repeat']} runs, fresh repository per backup",
        "",
    ]
    body: list[str] = []
    if report["stages"]:
        body += [
            "## Stages (single thread, in memory)",
            "",
            *_md_stages(report["stages"], report["serial_bound"]),
            "",
        ]
    if report["end_to_end"]:
        body += [
            "## End to end (CLI as a child process)",
            "",
            *_md_e2e(report["end_to_end"]),
            "",
            *_md_ratios(report["ratios"]),
            "",
        ]
    return "\n".join(head + body)


# --- command line --------------------------------------------------------------------------------


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size-mb", type=float, default=400, help="corpus size in MB (default 400)")
    p.add_argument("--out", type=Path, help="work folder; the corpus is kept and reused there")
    p.add_argument("--json", type=Path, help="write the full report as JSON to this file")
    p.add_argument("--repeat", type=int, default=3, help="end-to-end runs per measurement")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument(
        "--drop-caches",
        action="store_true",
        help="empty the page cache before every timed run (root only)",
    )
    p.add_argument("--skip-stages", action="store_true", help="end to end only")
    p.add_argument("--skip-restic", action="store_true", help="do not run restic")
    return p.parse_args(argv)


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


@dataclass
class _Workdir:
    root: Path
    temporary: bool

    @classmethod
    def open(cls, out: Path | None) -> _Workdir:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            return cls(out.resolve(), False)
        return cls(Path(tempfile.mkdtemp(prefix="dv-throughput-")), True)

    def scratch(self) -> Path:
        return _fresh(self.root / "scratch")

    def close(self) -> None:
        shutil.rmtree(self.root if self.temporary else self.root / "scratch", ignore_errors=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.drop_caches and not can_drop_caches():
        raise SystemExit("--drop-caches needs write access to /proc/sys/vm/drop_caches (root)")
    work = _Workdir.open(args.out)
    load_before = machine_load()
    try:
        print(f"building corpus of {args.size_mb:g} MB in {work.root}", file=sys.stderr)
        corpus = build_corpus(work.root / "corpus", int(args.size_mb * MB), args.seed)
        stages: list[Stage] = []
        if not args.skip_stages:
            print("stage benchmarks", file=sys.stderr)
            stages = stage_benchmarks(corpus, work.scratch())
        print("end to end", file=sys.stderr)
        e2e = end_to_end(
            corpus, work.scratch(), args.repeat, args.drop_caches, not args.skip_restic
        )
    finally:
        work.close()
    e2e_json = {name: r.figures(corpus.bytes) for name, r in e2e.items()}
    load = {"before": load_before, "after": machine_load()}
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {**_machine(), "load": load},
        "settings": {
            "repeat": args.repeat,
            "page_cache": "dropped before every timed run"
            if args.drop_caches
            else "warm (not dropped)",
            "restic": "skipped (--skip-restic)"
            if args.skip_restic
            else ("not installed, skipped" if "restic" not in e2e else "run"),
        },
        "corpus": corpus.as_json(),
        "stages": [s.as_json(corpus.bytes) for s in stages],
        "serial_bound": {
            side: round(serial_bound(stages, side, corpus.bytes), 1)
            for side in ("backup", "restore")
        }
        if stages
        else {},
        "end_to_end": e2e_json,
        "ratios": ratios(e2e_json),
    }


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    report = run(args)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
