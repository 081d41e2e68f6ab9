"""Bytes on the wire per day: a seeded practice archive (`benchmarks.corpus`) changes day by day,
and each day is backed up by dicomvault through a real chunk server behind a throttled link, and
by restic and borg into local repositories, side by side.

    python -m benchmarks.bandwidth [--rate-mbit 10] [--scale 1] [--seed 0] [--days 5]
                                   [--out DIR] [--work DIR] [--skip-peers]

dicomvault's wire bytes are counted on the socket by the link proxy (`tests/linkproxy.py`,
client → server, HTTP included) and cross-checked with the client's own `bytes_uploaded`. restic's
and borg's wire bytes are their repository growth, which is what they would have to upload.
The ideal bound comes from the corpus generator: new pixels with the best lossless codec, new
headers zstd-19. Prints a Markdown report; writes `bandwidth.json` and `bandwidth.png` to --out.
Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.corpus import MB, Archive, DayLog
from benchmarks.link import REPO, chunk_server

IDEAL_TARGET = 1.2  # wire bytes per day at most 1.2 × the ideal engine's
PEER_TARGET = 0.5  # and at most half of restic's and borg's
PASSWORD = "bandwidth-benchmark"
HOST = "practice"  # one host name for every tool, so each finds its previous snapshot


def log(msg: str) -> None:
    print(f"[bandwidth {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def dir_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 3):  # 3: dicomvault skipped a file; reported, not fatal
        raise RuntimeError(f"{' '.join(cmd[:3])} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


# --- the systems under test -------------------------------------------------------------------


@dataclass
class Backup:
    """One system's backup of one day."""

    wire_bytes: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class Dicomvault:
    """dicomvault's client (the agent in one-shot mode when it has one) through the link."""

    def __init__(self, work: Path, url: str, token: str, proxy: Any) -> None:
        self.proxy = proxy
        self.env = {
            **os.environ,
            "DICOMVAULT_REPO": url,
            "DICOMVAULT_TOKEN": token,
            "DICOMVAULT_PASSWORD": PASSWORD,
            "DICOMVAULT_CACHE_DIR": str(work / "dv-cache"),
            "DICOMVAULT_TEST_CHEAP_KDF": "1",  # init's 8 MiB, 1 pass: KDF cost is not measured
            "DICOMVAULT_STATE_DIR": str(work / "dv-state"),
        }
        self.client = [sys.executable, "-m", "client"]
        self.mode = agent_mode()

    def init(self) -> None:
        run([*self.client, "init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"], self.env)

    def backup(self, root: Path) -> Backup:
        self.proxy.reset_counters()
        start = time.perf_counter()
        if self.mode == "agent":
            out = run([*self.client, "agent", "--once", "--watch", str(root), "--json"], self.env)
        else:
            out = run([*self.client, "backup", str(root), "--json", "--host", HOST], self.env)
        seconds = time.perf_counter() - start
        summary = json.loads(out.strip().splitlines()[-1])
        stats = self.proxy.stats
        keep = ("files_unchanged", "chunks_new", "bytes_new", "bytes_stored", "bytes_uploaded")
        extra = {k: summary.get(k) for k in keep} | {"bytes_down": stats.bytes_down}
        return Backup(stats.bytes_up, seconds, extra)


def agent_mode() -> str:
    """ "agent" if `dicomvault agent` can back up the watched folders once and exit, else "cli"."""
    proc = subprocess.run(
        [sys.executable, "-m", "client", "agent", "--help"], capture_output=True, text=True
    )
    return "agent" if proc.returncode == 0 and "--once" in proc.stdout else "cli"


class Restic:
    """restic into a local repository (default compression `auto`); growth = its wire bytes."""

    name = "restic"

    def __init__(self, work: Path) -> None:
        self.repo = work / "restic-repo"
        self.env = {
            **os.environ,
            "RESTIC_REPOSITORY": str(self.repo),
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_CACHE_DIR": str(work / "restic-cache"),
        }

    @staticmethod
    def available() -> bool:
        return shutil.which("restic") is not None

    def init(self) -> None:
        run(["restic", "init"], self.env)

    def backup(self, root: Path) -> Backup:
        before, start = dir_size(self.repo), time.perf_counter()
        run(["restic", "backup", "--host", HOST, "--json", "-q", str(root)], self.env)
        return Backup(dir_size(self.repo) - before, time.perf_counter() - start)


class Borg:
    """borg (`-e repokey`, `--compression zstd,3`) into a local repository; growth = wire bytes."""

    name = "borg"

    def __init__(self, work: Path) -> None:
        self.repo = work / "borg-repo"
        self.env = {
            **os.environ,
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(work / "borg-home"),
            "BORG_REPO": str(self.repo),
        }
        self.day = 0

    @staticmethod
    def available() -> bool:
        return shutil.which("borg") is not None

    def init(self) -> None:
        run(["borg", "init", "-e", "repokey"], self.env)

    def backup(self, root: Path) -> Backup:
        before, start = dir_size(self.repo), time.perf_counter()
        archive = f"::day-{self.day}"
        run(["borg", "create", "--compression", "zstd,3", archive, str(root)], self.env)
        self.day += 1
        return Backup(dir_size(self.repo) - before, time.perf_counter() - start)


def tool_version(cmd: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        return out.strip().splitlines()[0] if out.strip() else "?"
    return "?"


# --- the run ----------------------------------------------------------------------------------


def day_row(day: DayLog, systems: dict[str, Backup], rate_bps: float) -> dict[str, Any]:
    dv = systems["dicomvault"]
    row: dict[str, Any] = {
        "day": day.day,
        "events": day.kinds,
        "event_log": day.events,
        "archive_bytes": day.archive_bytes,
        "archive_files": day.archive_files,
        "written_bytes": day.bytes_written,
        "new_bytes": day.new_bytes,
        "new_pixel_bytes": day.new_pixel_bytes,
        "new_header_bytes": day.new_header_bytes,
        "ideal_bytes": day.ideal_bytes,
        "wire": {name: b.wire_bytes for name, b in systems.items()},
        "seconds": {name: round(b.seconds, 2) for name, b in systems.items()},
        "dicomvault": dv.extra,
        "drain_s": round(dv.wire_bytes * 8 / rate_bps, 1),
        "vs_ideal": _ratio(dv.wire_bytes, day.ideal_bytes),
    }
    for peer in ("restic", "borg"):
        if peer in systems:
            row[f"vs_{peer}"] = _ratio(dv.wire_bytes, systems[peer].wire_bytes)
    return row


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 3) if b > 0 else None


def run_days(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rate_bps = args.rate_mbit * 1_000_000
    archive = Archive(work / "practice", args.scale, args.seed)
    peers = [] if args.skip_peers else [p(work) for p in (Restic, Borg) if p.available()]
    from benchmarks.linkproxy import LinkProxy

    with (
        chunk_server(work / "server") as (port, tokens, _),
        LinkProxy(port, rate=rate_bps / 8) as px,
    ):
        dv = Dicomvault(work, f"{px.url}/{REPO}", tokens["backup"], px)
        dv.init()
        for peer in peers:
            peer.init()
        rows = []
        for d in range(args.days + 1):
            day = archive.build_day0() if d == 0 else archive.apply_day(d)
            log(f"day {d}: {'; '.join(day.events)} ({day.build_s:.1f} s to generate)")
            systems = {"dicomvault": dv.backup(archive.root)}
            for peer in peers:
                systems[peer.name] = peer.backup(archive.root)
            rows.append(day_row(day, systems, rate_bps))
            log("  " + ", ".join(f"{k} {b.wire_bytes / MB:.1f} MB" for k, b in systems.items()))
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "benchmarks.bandwidth", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rate_mbit": args.rate_mbit,
        "scale": args.scale,
        "seed": args.seed,
        "client": dv.mode,
        "hop": archive.hop,
        "systems": ["dicomvault", *(p.name for p in peers)],
        "versions": {
            "restic": tool_version(["restic", "version"]),
            "borg": tool_version(["borg", "--version"]),
        },
        "days": rows,
        "totals": totals(rows),
    }


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over the later days (the steady state) and over the whole run."""
    out: dict[str, Any] = {}
    for label, part in (("days 1+", rows[1:]), ("all", rows)):
        if not part:
            continue
        wire: dict[str, int] = {}
        for r in part:
            for k, v in r["wire"].items():
                wire[k] = wire.get(k, 0) + v
        out[label] = {
            "new_bytes": sum(r["new_bytes"] for r in part),
            "ideal_bytes": sum(r["ideal_bytes"] for r in part),
            "written_bytes": sum(r["written_bytes"] for r in part),
            "wire": wire,
            "drain_s": round(sum(r["drain_s"] for r in part), 1),
        }
    return out


# --- output -----------------------------------------------------------------------------------


def _mb(n: int | None) -> str:
    return "–" if n is None else f"{n / MB:,.1f}"


def _x(r: float | None, target: float) -> str:
    if r is None:
        return "–"
    return f"{r:.2f} {'✓' if r <= target else '✗'}"


def markdown(rep: dict[str, Any]) -> str:
    peers = [s for s in rep["systems"] if s != "dicomvault"]
    head = ["day", "events", "archive MB", "written MB", "new MB", "ideal MB", "dicomvault MB"]
    head += ["÷ ideal (≤1.2)", f"drain s @{rep['rate_mbit']:g} Mbit/s"]
    head += [f"{p} MB" for p in peers] + [f"÷ {p} (≤0.5)" for p in peers]
    lines = [
        f"## Bandwidth ({rep['date']}, scale {rep['scale']}, seed {rep['seed']}, "
        f"link {rep['rate_mbit']:g} Mbit/s)",
        "",
        f"Command: `{rep['command']}`. Client: "
        + (
            "`dicomvault agent --once`."
            if rep["client"] == "agent"
            else "`dicomvault backup --json` — the CLI client stood in for the agent "
            "(`dicomvault agent` has no one-shot mode)."
        )
        + f" Re-route hop: {rep['hop']}. Peers: "
        + (", ".join(f"{p} ({rep['versions'][p]})" for p in peers) or "none installed")
        + ".",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rep["days"]:
        cells = [str(r["day"]), ", ".join(r["events"]), _mb(r["archive_bytes"])]
        cells += [_mb(r["written_bytes"]), _mb(r["new_bytes"]), _mb(r["ideal_bytes"])]
        cells += [_mb(r["wire"]["dicomvault"]), _x(r["vs_ideal"], IDEAL_TARGET), f"{r['drain_s']}"]
        cells += [_mb(r["wire"][p]) for p in peers]
        cells += [_x(r.get(f"vs_{p}"), PEER_TARGET) for p in peers]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_md_totals(rep, peers), "", *_md_events(rep)]
    return "\n".join(lines)


def _md_totals(rep: dict[str, Any], peers: list[str]) -> list[str]:
    lines = ["| total | new MB | ideal MB | dicomvault MB | ÷ ideal | drain s |"]
    lines[0] += "".join(f" {p} MB | ÷ {p} |" for p in peers)
    lines.append("|" + "---|" * (6 + 2 * len(peers)))
    for label, t in rep["totals"].items():
        dv = t["wire"]["dicomvault"]
        cells = [label, _mb(t["new_bytes"]), _mb(t["ideal_bytes"]), _mb(dv)]
        cells += [_x(_ratio(dv, t["ideal_bytes"]), IDEAL_TARGET), str(t["drain_s"])]
        for p in peers:
            cells += [_mb(t["wire"][p]), _x(_ratio(dv, t["wire"][p]), PEER_TARGET)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md_events(rep: dict[str, Any]) -> list[str]:
    lines = ["Events and dicomvault's own counts per day:", ""]
    for r in rep["days"]:
        dv = r["dicomvault"]
        lines.append(
            f"- day {r['day']}: {'; '.join(r['event_log'])}. Client: "
            f"{dv.get('chunks_new')} new chunks, {_mb(dv.get('bytes_new'))} MB new plaintext, "
            f"bytes_uploaded {_mb(dv.get('bytes_uploaded'))} MB, link down "
            f"{_mb(dv.get('bytes_down'))} MB, {r['seconds']['dicomvault']} s."
        )
    return lines


def chart(rep: dict[str, Any], path: Path) -> None:
    """Grouped bars: bytes on the wire per day per system (log scale), with the ideal bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {"ideal bound": [r["ideal_bytes"] for r in rep["days"]]}
    for s in rep["systems"]:
        series[s] = [r["wire"][s] for r in rep["days"]]
    days = [r["day"] for r in rep["days"]]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    for i, (name, values) in enumerate(series.items()):
        xs = [d + (i - (len(series) - 1) / 2) * width for d in days]
        bars = ax.bar(xs, [max(v, 1) / MB for v in values], width, label=name)
        ax.bar_label(
            bars,
            [f"{v / MB:.0f}" if v >= 100 * MB else f"{v / MB:.1f}" for v in values],
            fontsize=7,
            rotation=90,
            padding=2,
        )
    ax.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xticks(days, [f"day {r['day']}\n{_short(r['events'])}" for r in rep["days"]], fontsize=8)
    top = max(max(v) for v in series.values()) / MB
    ax.set_ylim(top=top * 1.6)  # room for the labels over the tallest bars
    ax.set_ylabel("MB sent, log scale (lower is better)")
    ax.set_title(
        f"Bytes on the wire per day — {rep['rate_mbit']:g} Mbit/s link, scale {rep['scale']}"
    )
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _short(kinds: list[str]) -> str:
    """Event names two to a line, for the x-axis labels."""
    names = [k for k in kinds if k != "new"]
    return "\n".join("+".join(names[i : i + 2]) for i in range(0, len(names), 2))


# --- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bandwidth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rate-mbit", type=float, default=10.0, help="link rate (default 10 Mbit/s)")
    p.add_argument("--scale", type=float, default=1.0, help="corpus scale (1 ≈ 375 MB on day 0)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    p.add_argument("--days", type=int, default=5, help="days of events after day 0 (default 5)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "dv-bandwidth",
        help="where bandwidth.json and bandwidth.png go",
    )
    p.add_argument("--work", type=Path, help="scratch folder (default: a temp folder, removed)")
    p.add_argument("--skip-peers", action="store_true", help="do not run restic and borg")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if args.work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dv-bw-")))
        else:
            work = args.work
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
        rep = run_days(args, work)
    (args.out / "bandwidth.json").write_text(json.dumps(rep, indent=1))
    chart(rep, args.out / "bandwidth.png")
    print(markdown(rep))
    log(f"wrote {args.out / 'bandwidth.json'} and {args.out / 'bandwidth.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
