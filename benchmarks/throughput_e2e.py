"""End-to-end throughput on the practice corpus (`benchmarks.corpus`): initial backup of day 0, the
incremental backup of day 1, restore of the full tree and `check --read-data`, by dicomvault,
restic and borg through their command lines, on the same data, disk and page-cache state.

    python -m benchmarks.throughput_e2e [--scale 1] [--seed 0] [--repeat 1] [--out DIR]
                                        [--skip-peers] [--drop-caches] [--json FILE]

Every tool gets a fresh repository and cache per repeat. Day 1 is synced into the same folder
day 0 was backed up from, touching only the files that changed (as a real day does), so each
tool's own change detection works as it does in a practice. Every restore is compared file by
file with day 1; a wrong restore aborts the benchmark rather than report a speed for it. Wall
and CPU seconds and the peak RSS come from `/usr/bin/time -v`. Measures; changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from benchmarks.common import (
    MB,
    PASSWORD,
    Dicomvault,
    Restic,
    RunStats,
    diff_digests,
    dir_size,
    drop_caches,
    md_table,
    median,
    print_report,
    restic_binary,
    run_measured,
    run_quiet,
    tree_digest,
    work_folder,
)
from benchmarks.corpus import Archive

OPS = ("initial", "incremental", "restore", "check")
SPEED_TARGET = 1.5  # dicomvault ÷ each peer, for every op
RSS_TARGET_MIB = 128  # backup and restore


class WrongRestore(RuntimeError):
    """A restore did not reproduce day 1 bit for bit; no speed is reported for it."""


class Tool(Protocol):
    name: str
    repo: Path

    def init(self) -> None: ...
    def backup(self, tree: Path) -> RunStats: ...
    def restore(self, target: Path) -> RunStats: ...
    def check(self) -> RunStats: ...


@dataclass
class Borg:
    """borg 1.2 (`-e repokey`, zstd level 3 as in benchmarks.bandwidth) with its own cache."""

    repo: Path
    home: Path
    name: str = "borg"
    archives: int = 0

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BORG_REPO": str(self.repo),
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(self.home),
        }

    def init(self) -> None:
        run_quiet(["borg", "init", "-e", "repokey"], self._env())

    def backup(self, tree: Path) -> RunStats:
        self.archives += 1
        cmd = ["borg", "create", "--compression", "zstd,3", f"::d{self.archives}", str(tree)]
        return run_measured(cmd, self._env())

    def restore(self, target: Path) -> RunStats:
        target.mkdir(parents=True, exist_ok=True)
        script = f"cd {target} && exec borg extract ::d{self.archives}"
        return run_measured(["sh", "-c", script], self._env())

    def check(self) -> RunStats:
        return run_measured(["borg", "check", "--verify-data"], self._env())


@dataclass
class Days:
    """The practice on day 0 and day 1, each a folder of its own, and their sizes."""

    day0: Path
    day1: Path
    bytes0: int
    bytes1: int
    files1: int

    @classmethod
    def build(cls, work: Path, scale: float, seed: int) -> Days:
        stamp = work / "days.json"
        day0, day1 = work / "day0", work / "day1"
        if stamp.exists() and json.loads(stamp.read_text()) == [scale, seed]:
            return cls.measure(day0, day1)
        for path in (day0, day1, work / "practice"):
            shutil.rmtree(path, ignore_errors=True)
        archive = Archive(work / "practice", scale, seed, measure=False)
        archive.build_day0()
        shutil.copytree(work / "practice", day0, copy_function=shutil.copy2)
        archive.apply_day(1)
        (work / "practice").rename(day1)
        stamp.write_text(json.dumps([scale, seed]))
        return cls.measure(day0, day1)

    @classmethod
    def measure(cls, day0: Path, day1: Path) -> Days:
        files1 = sum(1 for p in day1.rglob("*") if p.is_file())
        return cls(day0, day1, dir_size(day0), dir_size(day1), files1)


def sync_tree(src: Path, dst: Path) -> None:
    """Make `dst` hold `src`'s files, rewriting only those whose size or mtime differ (each as a
    new file, as a PACS or a copy tool writes one) and removing what `src` lacks."""
    want = {p.relative_to(src) for p in src.rglob("*") if p.is_file()}
    for rel in want:
        s, d = src / rel, dst / rel
        st = s.stat()
        if d.exists():
            dt = d.stat()
            if (dt.st_size, dt.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
                continue
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = d.with_name(d.name + ".sync")
        shutil.copy2(s, tmp)
        os.replace(tmp, d)
    for p in sorted(dst.rglob("*"), reverse=True):
        if p.is_file() and p.relative_to(dst) not in want:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()


@dataclass
class Figures:
    """One tool's runs of every op."""

    tool: str
    runs: dict[str, list[RunStats]] = field(default_factory=lambda: {op: [] for op in OPS})
    repo_bytes: int = 0

    def as_json(self, days: Days) -> dict[str, Any]:
        size = {"initial": days.bytes0}
        out: dict[str, Any] = {"tool": self.tool, "repo_mb": round(self.repo_bytes / MB, 1)}
        for op, runs in self.runs.items():
            if not runs:
                continue
            wall = median(r.wall_s for r in runs)
            out[op] = {
                "runs_s": [round(r.wall_s, 2) for r in runs],
                "median_s": round(wall, 2),
                "mb_s": round(size.get(op, days.bytes1) / MB / wall, 1),
                "peak_rss_mib": round(max(r.max_rss_bytes for r in runs) / 2**20, 1),
                "cpu_per_wall": round(median(r.cpu_share for r in runs), 2),
            }
        return out


def factories(scratch: Path, peers: bool) -> dict[str, Callable[[int], Tool]]:
    def dicomvault(i: int) -> Tool:
        return Dicomvault(_fresh(scratch / f"dv-repo-{i}"), _fresh(scratch / f"dv-cache-{i}"))

    def restic(i: int) -> Tool:
        binary = restic_binary()
        assert binary is not None
        return Restic(binary, scratch / f"rs-repo-{i}", _fresh(scratch / f"rs-cache-{i}"))

    def borg(i: int) -> Tool:
        return Borg(scratch / f"borg-repo-{i}", _fresh(scratch / f"borg-home-{i}"))

    out: dict[str, Callable[[int], Tool]] = {"dicomvault": dicomvault}
    if peers and restic_binary() is not None:
        out["restic"] = restic
    if peers and shutil.which("borg") is not None:
        out["borg"] = borg
    return out


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def one_round(
    tool: Tool, days: Days, want: dict[str, str], scratch: Path, drop: bool
) -> dict[str, RunStats]:
    """Initial backup, incremental backup, restore (checked), check --read-data."""
    tree = scratch / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(days.day0, tree, copy_function=shutil.copy2)
    tool.init()
    out: dict[str, RunStats] = {}
    for op in OPS:
        if drop:
            drop_caches()
        if op == "initial":
            out[op] = tool.backup(tree)
        elif op == "incremental":
            sync_tree(days.day1, tree)
            if drop:
                drop_caches()
            out[op] = tool.backup(tree)
        elif op == "restore":
            target = _fresh(scratch / "restored")
            out[op] = tool.restore(target)
            problems = diff_digests(want, tree_digest(target / str(tree).lstrip("/")))
            if problems:
                raise WrongRestore(f"{tool.name} restore is not bit-exact: {problems[:5]}")
            shutil.rmtree(target)
        else:
            out[op] = tool.check()
        print(f"  {tool.name} {op}: {out[op].wall_s:.2f} s", file=sys.stderr)
    return out


def end_to_end(
    days: Days, scratch: Path, repeat: int, peers: bool, drop: bool
) -> dict[str, Figures]:
    makers = factories(scratch, peers)
    figures = {name: Figures(name) for name in makers}
    want = tree_digest(days.day1)
    for i in range(repeat):
        for name, make in makers.items():
            tool = make(i)
            for op, stats in one_round(tool, days, want, scratch, drop).items():
                figures[name].runs[op].append(stats)
            figures[name].repo_bytes = dir_size(tool.repo)
            shutil.rmtree(tool.repo, ignore_errors=True)
    return figures


def ratios(doc: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """dicomvault ÷ each peer, per op (speed: higher is better)."""
    dv = doc["dicomvault"]
    return {
        peer: {op: round(dv[op]["mb_s"] / f[op]["mb_s"], 2) for op in OPS if op in f and op in dv}
        for peer, f in doc.items()
        if peer != "dicomvault"
    }


def _op_row(tool: str, op: str, r: dict[str, Any]) -> tuple[str, ...]:
    runs = ", ".join(f"{x:.2f}" for x in r["runs_s"])
    return (tool, op, f"{r['median_s']:.2f}", f"{r['mb_s']:,.1f}", runs,
            f"{r['peak_rss_mib']:,.0f}", f"{r['cpu_per_wall']:.2f}")  # fmt: skip


def markdown(doc: dict[str, Any]) -> list[str]:
    e2e, rat = doc["tools"], doc["ratios"]
    header = ("tool", "op", "median s", "MB/s", "runs (s)", "peak RSS MiB", "CPU s / wall s")
    rows = [_op_row(name, op, f[op]) for name, f in e2e.items() for op in OPS]
    lines = md_table(header, "llrrlrr", rows)
    ratio_rows = [
        (f"{peer} (target ≥ {SPEED_TARGET}×)",
         *(f"{r[op]:.2f}× {'met' if r[op] >= SPEED_TARGET else '**not met**'}" for op in OPS))
        for peer, r in rat.items()
    ]  # fmt: skip
    lines += ["", *md_table(("dicomvault ÷", *OPS), "l" + "r" * len(OPS), ratio_rows)]
    dv = e2e["dicomvault"]
    rss = [(op, dv[op]["peak_rss_mib"]) for op in ("initial", "incremental", "restore")]
    lines += [
        "",
        "peak RSS (target ≤ 128 MiB): "
        + ", ".join(
            f"{op} {v:.0f} MiB {'met' if v <= RSS_TARGET_MIB else '**not met**'}" for op, v in rss
        ),
    ]
    return lines


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    days = Days.build(work, args.scale, args.seed)
    scratch = _fresh(work / "scratch")
    try:
        figures = end_to_end(days, scratch, args.repeat, not args.skip_peers, args.drop_caches)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    tools = {name: f.as_json(days) for name, f in figures.items()}
    return {
        "corpus": {
            "scale": args.scale,
            "seed": args.seed,
            "day0_mb": round(days.bytes0 / MB, 1),
            "day1_mb": round(days.bytes1 / MB, 1),
            "day1_files": days.files1,
        },
        "tools": tools,
        "ratios": ratios(tools),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", type=float, default=1.0, help="practice corpus scale (1 ≈ 375 MB)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--repeat", type=int, default=1, help="rounds per tool (default 1)")
    p.add_argument("--skip-peers", action="store_true", help="do not run restic and borg")
    p.add_argument(
        "--drop-caches", action="store_true", help="empty the page cache before every op (root)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput_e2e", description=__doc__)
    add_arguments(p)
    p.add_argument("--out", type=Path, help="work folder; the corpus is kept and reused there")
    p.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    args = p.parse_args(argv)
    with work_folder(args.out, "dv-e2e-") as work:
        doc = run(args, work)
    return print_report(doc, lambda d: "\n".join(markdown(d)), args.json)


if __name__ == "__main__":
    sys.exit(main())
