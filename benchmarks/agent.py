"""Agent benchmark: receive throughput from dcmtk's storescu into the spool, and the delay from
C-STORE to committed-on-server for one study over a 10 Mbit/s link.

    python -m benchmarks.agent [--receive-mb 200] [--study-mb 20] [--json]

Receive: the agent runs in batch mode (nothing is backed up meanwhile), storescu sends a seeded
corpus of distinct real DICOM instances over one association; MB/s and instances/s are the spool
bytes over storescu's wall time (every instance fsynced before its Success). Delay: the agent in
real time (quiet 1 s) uploads through `tests/linkproxy.py` paced at 10 Mbit/s (or, without it,
its own `--limit-upload 10Mbit`); the delay runs from storescu's start and from its last
acknowledgement to the moment the agent's status shows the study committed and the spool empty.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import build_corpus, corpus_files
from tests.client.agentkit import AGENT_AET, STORESCU, AgentSite, ChunkServer, wait_for

LINK_RATE = 10 * 10**6 / 8  # 10 Mbit/s in bytes/s
BATCH_ONLY = '[batch]\ninterval_seconds = 86400\nmax_files = 100000\nmax_bytes = "1000GB"\n'


def send(port: int, files: list[Path], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    # -R: propose only each file's own transfer syntax, so compressed files go as they are;
    # -nh: a file storescu cannot read (the corpus has a truncated one) does not stop the run.
    subprocess.run(
        [STORESCU, "-R", "-nh", "-aec", AGENT_AET, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        timeout=3600,
        env={**os.environ, **(env or {})},
    )
    return time.perf_counter() - start


def receive(root: Path, corpus: list[Path]) -> dict[str, Any]:
    """storescu as shipped, then with dcmtk's TCP_NODELAY=1 (Nagle off on the sender)."""
    server = ChunkServer(root).start()
    site = AgentSite(root / "site", server).init()
    (site.root / "agent.toml").write_text(BATCH_ONLY)
    out: dict[str, Any] = {}
    try:
        site.start(
            "--dicom-listen",
            "127.0.0.1:0",
            "--ae-title",
            AGENT_AET,
            "--config",
            str(site.root / "agent.toml"),
            "--log-level",
            "WARNING",
        )
        for name, env in (("storescu", {}), ("storescu_tcp_nodelay", {"TCP_NODELAY": "1"})):
            before = _spool(site)
            seconds = send(site.dicom_port, corpus, env)
            after = _spool(site)
            count, nbytes = after[0] - before[0], after[1] - before[1]
            out[name] = {
                "instances": count,
                "bytes": nbytes,
                "seconds": round(seconds, 3),
                "mb_per_s": round(nbytes / seconds / 1e6, 1),
                "instances_per_s": round(count / seconds, 1),
            }
    finally:
        site.kill(signal.SIGKILL)
        server.stop()
    return out


def _spool(site: AgentSite) -> tuple[int, int]:
    files = site.spooled()
    return len(files), sum(p.stat().st_size for p in files)


def latency(root: Path, study: list[Path]) -> dict[str, Any]:
    server = ChunkServer(root).start()
    proxy, limit = _link(server.port)
    site = AgentSite(root / "site", server)
    if proxy is not None:
        site.extra_env["DICOMVAULT_REPO"] = f"{proxy.url}/{server.name}"
    site.init()
    try:
        site.start(
            "--dicom-listen",
            "127.0.0.1:0",
            "--ae-title",
            AGENT_AET,
            *limit,
            "--log-level",
            "WARNING",
        )
        t0 = time.perf_counter()
        acked = t0 + send(site.dicom_port, study)
        wait_for("the study committed", lambda: _drained(site), timeout=3600)
        done = time.perf_counter()
        status = site.status() or {}
    finally:
        site.stop()
        server.stop()
        if proxy is not None:
            proxy.close()
    return {
        "instances": len(study),
        "bytes": sum(p.stat().st_size for p in study),
        "link": "linkproxy 10 Mbit/s" if proxy is not None else "--limit-upload 10Mbit",
        "send_s": round(acked - t0, 2),
        "first_send_to_committed_s": round(done - t0, 2),
        "last_ack_to_committed_s": round(done - acked, 2),
        "uploaded_bytes": status.get("upload", {}).get("bytes_total"),
    }


def _link(port: int) -> tuple[Any, tuple[str, ...]]:
    try:
        from benchmarks.linkproxy import LinkProxy
    except ImportError:
        return None, ("--limit-upload", "10Mbit")
    return LinkProxy(port, rate=LINK_RATE).start(), ()


def _drained(site: AgentSite) -> bool:
    doc = site.status()
    return bool(
        doc
        and doc["last_commit"]
        and doc["queue"]["files"] == 0
        and doc["spool"]["packs_bytes"] == 0
        and not site.spooled()
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--receive-mb", type=float, default=200)
    p.add_argument("--study-mb", type=float, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="dv-agent-bench-") as tmp:
        root = Path(tmp)
        corpus = build_corpus(root / "corpus", int(args.receive_mb * 1e6), seed=1)
        study = build_corpus(root / "study", int(args.study_mb * 1e6), seed=2)
        result = {
            "receive": receive(root / "r", corpus_files(corpus.root)),
            "study_over_10mbit": latency(root / "l", corpus_files(study.root)),
        }
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
