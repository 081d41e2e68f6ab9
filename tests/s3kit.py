"""S3 parts for the tests: settings for the session's SeaweedFS (`seaweed` fixture in
tests/conftest.py), `dicomvault-server --store s3://...` processes (benchmarks.serverkit's) and
a real haproxy (Debian's, Makefile APT_PACKAGES) balancing over them."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.seaweed import SeaweedFS, free_port
from benchmarks.seaweed import settings as s3_settings
from benchmarks.serverkit import ServerProcess, wait_for
from engine.store.s3 import S3Settings, open_api

__all__ = [
    "Balancer",
    "SeaweedFS",
    "api",
    "balanced_nodes",
    "locked_bucket",
    "s3_node",
    "s3_settings",
]


def api(weed: SeaweedFS) -> Any:
    """A botocore S3 client on the session's SeaweedFS, with the provider's own credentials."""
    return open_api(s3_settings(weed))


def locked_bucket(weed: SeaweedFS, prefix: str = "") -> S3Settings:
    """A new bucket created with Object Lock enabled (so versioned), and its settings."""
    bucket = f"locked-{secrets.token_hex(4)}"
    api(weed).create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return replace(s3_settings(weed, prefix), bucket=bucket)


def s3_node(data: Path, store: str, weed: SeaweedFS, config: Path | None = None) -> ServerProcess:
    """`python -m server serve --store s3://...` with its own DATA (its own index), not started."""
    return ServerProcess(data, store=store, config=config, env=weed.env)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class Balancer:
    """haproxy round-robin over `nodes`, health-checking /v1/health every 200 ms, so a killed
    node leaves the rotation within a few hundred milliseconds."""

    def __init__(self, folder: Path, nodes: list[ServerProcess]) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.path.exists(binary):
            raise RuntimeError("no haproxy: make setup-system (Makefile APT_PACKAGES)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "haproxy.cfg"
        servers = "".join(
            f"    server n{i} 127.0.0.1:{n.port} check inter 200ms fall 1 rise 2\n"
            for i, n in enumerate(nodes)
        )
        self.config.write_text(
            "global\n    maxconn 256\n"
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 120s\n"
            "    timeout server 120s\n    retries 2\n    option redispatch\n"
            f"frontend vault\n    bind 127.0.0.1:{self.port}\n    default_backend nodes\n"
            "backend nodes\n    balance roundrobin\n    option httpchk GET /v1/health\n"
            f"{servers}"
        )
        self.log = folder / "haproxy.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(self.config)], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        wait_for("haproxy", lambda: _answers(f"{self.url}/v1/health"), 30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@contextmanager
def balanced_nodes(
    weed: SeaweedFS, root: Path, tag: str
) -> Iterator[tuple[list[ServerProcess], Balancer]]:
    """Two `serve --store s3://` nodes on a fresh bucket prefix behind a real haproxy."""
    settings = s3_settings(weed, f"{tag}-{secrets.token_hex(6)}")
    store = f"s3://{settings.bucket}/{settings.prefix}"
    with ExitStack() as stack:  # whatever started is stopped, even if a later start fails
        nodes = []
        for i in range(2):
            nodes.append(s3_node(root / f"node{i}", store, weed).start())
            stack.callback(nodes[-1].stop)
        balancer = Balancer(root, nodes)
        stack.callback(balancer.stop)
        yield nodes, balancer
