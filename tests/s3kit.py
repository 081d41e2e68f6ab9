"""S3 parts for the tests: settings for the session's SeaweedFS (`seaweed` fixture in
tests/conftest.py), `dicomvault-server --store s3://...` processes, and a real haproxy (Debian's,
Makefile APT_PACKAGES) balancing over them."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.seaweed import SeaweedFS, free_port
from benchmarks.seaweed import settings as s3_settings
from engine.store.s3 import S3Settings, open_api

__all__ = ["Balancer", "NodeProcess", "SeaweedFS", "api", "locked_bucket", "s3_settings"]


def api(weed: SeaweedFS) -> Any:
    """A botocore S3 client on the session's SeaweedFS, with the provider's own credentials."""
    return open_api(s3_settings(weed))


def locked_bucket(weed: SeaweedFS, prefix: str = "") -> S3Settings:
    """A new bucket created with Object Lock enabled (so versioned), and its settings."""
    bucket = f"locked-{secrets.token_hex(4)}"
    api(weed).create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return replace(s3_settings(weed, prefix), bucket=bucket)


ROOT = Path(__file__).resolve().parents[1]


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class NodeProcess:
    """`python -m server serve --store s3://...` with its own DATA (its own index)."""

    def __init__(self, data: Path, store: str, weed: SeaweedFS, config: Path | None = None) -> None:
        self.data, self.store, self.weed, self.config = data, store, weed, config
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = data.parent / f"{data.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "server", *args, "--data", str(self.data)]
        return subprocess.run(
            [*cmd, "--store", self.store], cwd=ROOT, env=self.env(), capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.weed.env}

    def start(self) -> NodeProcess:
        args = ["serve", "--data", str(self.data), "--store", self.store]
        args += ["--config", str(self.config)] if self.config else []
        args += ["--listen", f"127.0.0.1:{self.port}"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", *args], cwd=ROOT, env=self.env(),
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        _wait(lambda: self._alive() and _answers(f"{self.base}/v1/health"), 60, "a node's health")
        return self

    def _alive(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
        return True

    def create_repo(self, name: str) -> dict[str, str]:
        done = self.run("repo", "create", name, "--json")
        assert done.returncode == 0, done.stderr
        tokens: dict[str, str] = json.loads(done.stdout)["tokens"]
        return tokens

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Balancer:
    """haproxy round-robin over `nodes`, health-checking /v1/health every 200 ms, so a killed
    node leaves the rotation within a few hundred milliseconds."""

    def __init__(self, folder: Path, nodes: list[NodeProcess]) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.path.exists(binary):
            raise RuntimeError("no haproxy: make setup-system (Makefile APT_PACKAGES)")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
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
        _wait(lambda: _answers(f"{self.base}/v1/health"), 30, "haproxy")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
