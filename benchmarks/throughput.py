"""Throughput of dicomvault on the practice corpus against restic and borg, in one run: the
end-to-end figures the targets are about (`benchmarks.throughput_e2e`), each pipeline stage alone
(`benchmarks.throughput_stages`) and the codec frontier (`benchmarks.throughput_codecs`).

    python -m benchmarks.throughput [--scale 1] [--seed 0] [--repeat 1] [--out DIR] [--json FILE]
                                    [--skip-stages] [--skip-codecs] [--skip-peers] [--drop-caches]

Prints one Markdown report with the machine's load before and after (other work on the machine
slows every figure; the ratios are measured in the same run, so they are what to compare).
Measures; changes nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import throughput_codecs, throughput_e2e, throughput_stages
from benchmarks.common import (
    can_drop_caches,
    machine_load,
    print_report,
    restic_version,
    run_quiet,
    work_folder,
)

MB = 1_000_000


def _load_text(load: dict[str, float]) -> str:
    pressure = load.get("cpu_pressure_avg60_pct")
    text = f"loadavg {load['loadavg_1m']:.2f}"
    return text + (f", CPU pressure {pressure:.0f} %" if pressure is not None else "")


def _versions() -> dict[str, str]:
    out = {"restic": restic_version()}
    if shutil.which("borg"):
        out["borg"] = run_quiet(["borg", "--version"]).strip()
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    before = machine_load()
    print("end to end", file=sys.stderr)
    e2e = throughput_e2e.run(args, work)
    days = throughput_e2e.Days.measure(work / "day0", work / "day1")
    doc: dict[str, Any] = {"end_to_end": e2e}
    if not args.skip_stages:
        print("stages", file=sys.stderr)
        stages = throughput_stages.stage_benchmarks(days.day0, work / "stages")
        doc["stages"] = [s.as_json(days.bytes0) for s in stages]
        doc["serial_bound"] = {
            side: round(throughput_stages.serial_bound(stages, side, days.bytes0), 1)
            for side in ("backup", "restore")
        }
    if not args.skip_codecs:
        print("codec frontier", file=sys.stderr)
        frames = list(throughput_codecs.native_frames(days.day0, int(args.codec_mb * MB)))
        doc["codecs"] = throughput_codecs.report(throughput_codecs.measure(frames))
    doc["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load": {"before": before, "after": machine_load()},
        "peers": _versions() if not args.skip_peers else {},
    }
    doc["time"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    doc["page_cache"] = "dropped before every op" if args.drop_caches else "warm (not dropped)"
    return doc


def markdown(doc: dict[str, Any]) -> str:
    m, c = doc["machine"], doc["end_to_end"]["corpus"]
    lines = [
        f"# dicomvault throughput, {doc['time']}",
        "",
        f"- machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}; load before/after: "
        f"{_load_text(m['load']['before'])} / {_load_text(m['load']['after'])}",
        f"- peers: {', '.join(m['peers'].values()) or 'skipped'}",
        f"- corpus: practice scale {c['scale']} seed {c['seed']}: day 0 {c['day0_mb']} MB, "
        f"day 1 {c['day1_mb']} MB ({c['day1_files']} files); page cache {doc['page_cache']}",
        "",
        "## End to end (command lines as child processes)",
        "",
        *throughput_e2e.markdown(doc["end_to_end"]),
        "",
    ]
    if "stages" in doc:
        lines += [
            "## Stages (single thread, in memory, day 0)",
            "",
            *throughput_stages.md_stages(doc["stages"], doc["serial_bound"]),
            "",
        ]
    if "codecs" in doc:
        lines += ["## Codec frontier (single thread, day 0 frames)", ""]
        lines += [throughput_codecs.markdown(doc["codecs"]), ""]
    return "\n".join(lines)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    throughput_e2e.add_arguments(p)
    p.add_argument("--out", type=Path, help="work folder; the corpus is kept and reused there")
    p.add_argument("--json", type=Path, help="write the full report as JSON to this file")
    p.add_argument("--skip-stages", action="store_true", help="no stage micro-benchmarks")
    p.add_argument("--skip-codecs", action="store_true", help="no codec frontier")
    p.add_argument("--codec-mb", type=float, default=200, help="frames for the frontier, MB")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.drop_caches and not can_drop_caches():
        raise SystemExit("--drop-caches needs write access to /proc/sys/vm/drop_caches (root)")
    with work_folder(args.out, "dv-throughput-") as work:
        doc = run(args, work)
    return print_report(doc, markdown, args.json)


if __name__ == "__main__":
    sys.exit(main())
