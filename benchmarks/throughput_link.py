"""Restore from a chunk server through a paced link: does the pipelined fetch keep the link full?

    python -m benchmarks.throughput_link [--rates 100Mbit,1Gbit] [--size-mb 64] [--json FILE]

A real `dicomvault-server` subprocess behind the link proxy (`benchmarks/linkproxy.py`); the
`dicomvault` CLI backs up a seeded DICOM corpus (`benchmarks.common.build_corpus`) over an
unpaced link, then restores it once per rate with the downstream direction paced at that rate,
each restore compared file by file with the corpus. Link utilisation = bytes down ÷ (rate × wall
seconds of the restore, start-up included). Measures; changes nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MB,
    build_corpus,
    diff_digests,
    md_table,
    print_report,
    tree_digest,
    work_folder,
)
from benchmarks.link import REPO, Client, chunk_server
from benchmarks.linkproxy import LinkProxy
from engine.rates import parse_rate


class WrongRestore(RuntimeError):
    pass


def restore_at(client: Client, link: LinkProxy, rate: float, target: Path) -> dict[str, Any]:
    link.down_rate = rate
    link.reset_counters()
    start = time.perf_counter()
    client._run("restore", "latest", "--target", str(target))
    wall = time.perf_counter() - start
    down = link.stats.bytes_down
    return {
        "rate_mbit": round(rate * 8 / 1e6, 1),
        "wall_s": round(wall, 2),
        "bytes_down": down,
        "utilisation": round(down / (rate * wall), 3),
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    corpus = build_corpus(work / "corpus", int(args.size_mb * MB), args.seed)
    want = tree_digest(corpus.root)
    out: list[dict[str, Any]] = []
    with chunk_server(work / "server") as (port, tokens, _), LinkProxy(port) as link:
        url = f"{link.url}/{REPO}"
        client = Client(work, url, tokens["backup"], link)
        client.init()
        client._run("backup", str(corpus.root))
        client.env["DICOMVAULT_TOKEN"] = tokens["restore"]
        for rate in args.rates:
            target = work / "restored"
            shutil.rmtree(target, ignore_errors=True)
            out.append(restore_at(client, link, rate, target))
            got = tree_digest(target / str(corpus.root).lstrip("/"))
            if problems := diff_digests(want, got):
                raise WrongRestore(f"restore is not bit-exact: {problems[:5]}")
            print(f"  restore at {out[-1]['rate_mbit']} Mbit/s: {out[-1]}", file=sys.stderr)
    return {"corpus_mb": round(corpus.bytes / MB, 1), "restores": out}


def markdown(doc: dict[str, Any]) -> str:
    rows = [
        (
            f"{r['rate_mbit']:g} Mbit/s",
            f"{r['wall_s']:.2f}",
            f"{r['bytes_down'] / MB:.1f}",
            f"{r['utilisation'] * 100:.0f} %",
        )
        for r in doc["restores"]
    ]
    table = md_table(("link", "wall s", "MB down", "link utilisation"), "lrrr", rows)
    title = f"Restore of {doc['corpus_mb']} MB from a chunk server through the link proxy:"
    return "\n".join([title, "", *table])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput_link", description=__doc__)
    p.add_argument("--rates", default="100Mbit,1Gbit", help="downstream rates, comma-separated")
    p.add_argument("--size-mb", type=float, default=64, help="corpus size in MB (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    args = p.parse_args(argv)
    args.rates = [parse_rate(r) for r in args.rates.split(",")]
    with work_folder(None, "dv-link-restore-") as work:
        doc = run(args, work)
    return print_report(doc, markdown, args.json)


if __name__ == "__main__":
    sys.exit(main())
