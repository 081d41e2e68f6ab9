"""Agent benchmark: receive throughput from dcmtk's storescu into the spool, the same with 1, 10
and 50 concurrent senders with and without an unknown host holding 1,000 idle connections,
the agent's peak RSS receiving large instances, and the delay from C-STORE to
committed-on-server for one study over a 10 Mbit/s link.

    python -m benchmarks.agent [--receive-mb 200] [--study-mb 20] [--senders 1,10,50]
        [--idle 1000] [--big-mb 50] [--big-count 4] [--json]

Receive: the agent runs in batch mode (nothing is backed up meanwhile), storescu sends a seeded
corpus of distinct real DICOM instances over one association; MB/s and instances/s are the spool
bytes over storescu's wall time (every instance fsynced before its Success). Delay: the agent in
real time (quiet 1 s) uploads through `tests/linkproxy.py` paced at 10 Mbit/s (or, without it,
its own `--limit-upload 10Mbit`); the delay runs from storescu's start and from its last
acknowledgement to the moment the agent's status shows the study committed and the spool empty.
Concurrency: the receive corpus split over N storescu processes (TCP_NODELAY=1) started
together (one association each), instances/s and MB/s over the wall time of the slowest; "idle"
adds a host (127.0.0.2, not allow-listed) that opens `--idle` connections that never speak and
reopens each one the agent closes (`attacker_sockets_open`: its sockets not yet seen closed).
Large instances: `--big-count` instances of `--big-mb` each sent at once, the agent's VmHWM
before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from benchmarks.agentkit import AGENT_AET, STORESCU, AgentSite, ChunkServer
from benchmarks.common import build_corpus, corpus_files
from benchmarks.serverkit import wait_for

LINK_RATE = 10 * 10**6 / 8  # 10 Mbit/s in bytes/s
BATCH_ONLY = '[batch]\ninterval_seconds = 86400\nmax_files = 100000\nmax_bytes = "1000GB"\n'
SENDER = ("--allow-sender", "STORESCU@127.0.0.1")  # storescu's default calling AE title
ATTACKER = "127.0.0.2"  # another loopback address: a host no sender names


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


@contextlib.contextmanager
def batch_agent(root: Path) -> Iterator[AgentSite]:
    """An agent that only receives (its batch is a day away), storescu allow-listed."""
    server = ChunkServer(root).start()
    site = AgentSite(root / "site", server).init()
    (site.root / "agent.toml").write_text(BATCH_ONLY)
    try:
        site.start("--dicom-listen", "127.0.0.1:0", "--ae-title", AGENT_AET, *SENDER,
                   "--config", str(site.root / "agent.toml"), "--log-level", "ERROR")  # fmt: skip
        yield site
    finally:
        site.kill(signal.SIGKILL)
        server.stop()


def _rate(count: int, nbytes: int, seconds: float) -> dict[str, Any]:
    return {
        "instances": count,
        "bytes": nbytes,
        "seconds": round(seconds, 3),
        "mb_per_s": round(nbytes / seconds / 1e6, 1),
        "instances_per_s": round(count / seconds, 1),
    }


def receive(root: Path, corpus: list[Path]) -> dict[str, Any]:
    """storescu as shipped, then with dcmtk's TCP_NODELAY=1 (Nagle off on the sender)."""
    out: dict[str, Any] = {}
    with batch_agent(root) as site:
        for name, env in (("storescu", {}), ("storescu_tcp_nodelay", {"TCP_NODELAY": "1"})):
            before = _spool(site)
            seconds = send(site.dicom_port, corpus, env)
            after = _spool(site)
            out[name] = _rate(after[0] - before[0], after[1] - before[1], seconds)
    return out


def concurrent(root: Path, corpus: list[Path], senders: list[int], idle: int) -> dict[str, Any]:
    """The corpus over N storescu processes at once, without and with an idle flood."""
    out: dict[str, Any] = {}
    with batch_agent(root) as site:
        for flood in (0, idle):
            for n in senders:
                with IdleFlood(site.dicom_port, flood) as f:
                    before = _spool(site)
                    seconds = _send_parallel(site.dicom_port, corpus, n)
                    after = _spool(site)
                    held = f.open_now()
                doc = _rate(after[0] - before[0], after[1] - before[1], seconds)
                doc["attacker_sockets_open"] = held
                doc["refused_so_far"] = (site.status() or {}).get("associations_refused")
                out[f"{n}_senders" + (f"_{flood}_idle" if flood else "")] = doc
    return out


def _send_parallel(port: int, files: list[Path], n: int) -> float:
    shares = [files[i::n] for i in range(n)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [STORESCU, "-R", "-nh", "-aec", AGENT_AET, "127.0.0.1", str(port), *map(str, share)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        for share in shares
        if share
    ]
    for p in procs:
        p.wait(timeout=3600)
    return time.perf_counter() - start


class IdleFlood:
    """`count` TCP connections from ATTACKER that never speak; each one the agent closes is
    opened again at once (the attacker keeps at it)."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> IdleFlood:
        if self.count:
            for _ in range(self.count):
                self._open()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for key in list(self._sel.get_map().values()):
            self._sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]

    def open_now(self) -> int:
        return len(self._sel.get_map())

    def _open(self) -> None:
        with contextlib.suppress(OSError):
            s = socket.create_connection(("127.0.0.1", self.port), 5, (ATTACKER, 0))
            self._sel.register(s, selectors.EVENT_READ)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.1):
                self._sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
                self._open()
            time.sleep(0.01)  # a determined but not CPU-bound attacker


def big_instances(root: Path, mb: float, count: int) -> dict[str, Any]:
    """`count` instances of `mb` MB sent at once: the agent's peak RSS before and after."""
    root.mkdir(parents=True, exist_ok=True)
    files = [_big_file(root / f"big-{i}.dcm", int(mb * 1e6)) for i in range(count)]
    with batch_agent(root / "agent") as site:
        assert site.proc is not None
        before = _peak_rss(site.proc.pid)
        seconds = _send_parallel(site.dicom_port, files, count)
        after = _peak_rss(site.proc.pid)
        stored = len(site.spooled())
    return {
        "instances": count,
        "instance_bytes": files[0].stat().st_size,
        "stored": stored,
        "seconds": round(seconds, 2),
        "peak_rss_before_mib": before >> 20,
        "peak_rss_after_mib": after >> 20,
    }


def _big_file(path: Path, nbytes: int) -> Path:
    ds = pydicom.dcmread(Path(pydicom.data.get_testdata_file("CT_small.dcm")))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    columns = 4096
    ds.Rows, ds.Columns = max(1, nbytes // (2 * columns)), columns
    ds.PixelData = os.urandom(1 << 20) * (ds.Rows * columns * 2 >> 20) + bytes(
        ds.Rows * columns * 2 % (1 << 20)
    )
    ds.save_as(path, enforce_file_format=True)
    return path


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _spool(site: AgentSite) -> tuple[int, int]:
    files = site.spooled()
    return len(files), sum(p.stat().st_size for p in files)


def latency(root: Path, study: list[Path]) -> dict[str, Any]:
    server = ChunkServer(root).start()
    proxy, limit = _link(server.port)
    site = AgentSite(root / "site", server)
    if proxy is not None:
        site.extra_env["DICOMVAULT_REPO"] = f"{proxy.url}/{server.repo}"
    site.init()
    try:
        site.start(
            "--dicom-listen",
            "127.0.0.1:0",
            "--ae-title",
            AGENT_AET,
            *SENDER,
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
    p.add_argument("--senders", default="1,10,50", help="concurrent senders, comma-separated")
    p.add_argument("--idle", type=int, default=1000, help="idle connections of the flood")
    p.add_argument("--big-mb", type=float, default=50, help="size of each large instance")
    p.add_argument("--big-count", type=int, default=4, help="large instances sent at once")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    senders = [int(n) for n in args.senders.split(",")]
    with tempfile.TemporaryDirectory(prefix="dv-agent-bench-") as tmp:
        root = Path(tmp)
        corpus = build_corpus(root / "corpus", int(args.receive_mb * 1e6), seed=1)
        study = build_corpus(root / "study", int(args.study_mb * 1e6), seed=2)
        files = corpus_files(corpus.root)
        result = {
            "receive": receive(root / "r", files),
            "concurrent": concurrent(root / "c", files, senders, args.idle),
            "big_1": big_instances(root / "b1", args.big_mb, 1),
            f"big_{args.big_count}": big_instances(root / "b4", args.big_mb, args.big_count),
            "study_over_10mbit": latency(root / "l", corpus_files(study.root)),
            "load_average": os.getloadavg(),
        }
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
