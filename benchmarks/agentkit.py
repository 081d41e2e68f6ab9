"""Test harness for the practice agent: a real chunk server subprocess (`benchmarks.serverkit`'s,
with one repository), a real agent subprocess and real DICOM senders (dcmtk).

Nothing is mocked: the server is `python -m server serve` on a free loopback port, the agent is
`dicomvault agent` as a user starts it. A missing tool (dcmtk, Orthanc) fails the test with a
message saying what to install, never skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pydicom
from pynetdicom import AllStoragePresentationContexts

from benchmarks import clikit
from benchmarks.clikit import CHEAP_KDF_ARGS, CHEAP_KDF_ENV, PASSPHRASE, Result, cli_command
from benchmarks.serverkit import REPO, ServerProcess, wait_for
from client.agent.inbox import valid_uid

STORESCU = "/usr/bin/storescu"
DCMSEND = "/usr/bin/dcmsend"
AGENT_AET = "DVAGENT"
SENDERS = (
    "MODALITY",
    "PACS",
    "STORESCU",
    "ECHOSCU",
)  # the calling AE titles the tests' senders use
STORAGE_CLASSES = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}


def require_tool(path: str, package: str) -> None:
    assert os.access(path, os.X_OK), (
        f"{path} is missing: install the Debian package {package!r} (make setup-system)"
    )


class ChunkServer(ServerProcess):
    """The kit's server process on ROOT/server with one repository, `repo`, whose tokens are
    made at the first `start` (or given, for a server started elsewhere)."""

    def __init__(
        self, root: Path, *, port: int | None = None, tokens: dict[str, str] | None = None,
        repo: str = REPO,
    ) -> None:  # fmt: skip
        super().__init__(root / "server", port=port, name="the chunk server")
        self.repo, self.tokens = repo, dict(tokens or {})

    def start(self) -> Self:
        """Create the repository (the first time), then start or restart the process."""
        if not self.tokens:
            self.tokens = self.create_repo(self.repo)
        return super().start()

    def get(self, path: str, role: str = "admin") -> Any:
        """GET /v1/repos/REPO/PATH with the `role` token; parsed JSON."""
        return self.get_json(f"/v1/repos/{self.repo}/{path}", self.tokens[role])


@dataclass
class AgentSite:
    """A practice machine: passphrase, cache, spool and state folders, and the agent process."""

    root: Path
    server: ChunkServer
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def env(self) -> dict[str, str]:
        return (
            clikit.cli_env(
                DICOMVAULT_REPO=self.server.repo_url(self.server.repo),
                DICOMVAULT_TOKEN=self.server.tokens["backup"],
                DICOMVAULT_PASSWORD_FILE=str(self.root / "passphrase"),
                DICOMVAULT_CACHE_DIR=str(self.root / "cache"),
                **CHEAP_KDF_ENV,
            )
            | self.extra_env
        )

    def cli(self, *args: str, timeout: float = 300) -> Result:
        proc = subprocess.run(
            [*cli_command(), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def cli_json(self, *args: str) -> Any:
        result = self.cli(*args, "--json")
        assert result.rc == 0, f"dicomvault {' '.join(args)} exited {result.rc}: {result.err}"
        return result.doc

    def init(self) -> AgentSite:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "passphrase").write_bytes(PASSPHRASE + b"\n")
        result = self.cli("init", *CHEAP_KDF_ARGS)
        assert result.rc == 0, result.err
        return self

    def start(self, *args: str) -> AgentSite:
        """Start `dicomvault agent ARGS` and wait until its status file says it is running."""
        (self.root / "status-before").unlink(missing_ok=True)
        log = open(self.root / "agent.log", "ab")  # noqa: SIM115 - lives as long as the agent
        self.proc = subprocess.Popen(
            [
                *cli_command(),
                "agent",
                "--spool",
                str(self.spool),
                "--state-dir",
                str(self.state),
                *args,
            ],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        pid = self.proc.pid
        wait_for("the agent to report itself running", lambda: self._running(pid))
        return self

    def _running(self, pid: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the agent exited {self.proc.returncode}:\n{self.log()}")
        doc = self.status()
        return bool(doc and doc["pid"] == pid and doc["state"] == "running")

    def status(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.state / "status.json").read_text()))
        except (OSError, ValueError):
            return None

    @property
    def dicom_port(self) -> int:
        doc = self.status()
        assert doc is not None and doc["dicom_port"], "the agent runs no DICOM listener"
        return int(doc["dicom_port"])

    def log(self) -> str:
        return (self.root / "agent.log").read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=60)
        self.proc = None
        return rc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)
        self.proc = None

    def snapshots(self) -> list[dict[str, Any]]:
        return list(self.cli_json("snapshots")["snapshots"])

    def spooled(self) -> list[Path]:
        folder = self.spool / "instances"
        return (
            sorted(p for p in folder.iterdir() if not p.name.startswith("."))
            if folder.is_dir()
            else []
        )

    def restore_all(self, target: Path) -> list[Path]:
        """Restore every snapshot into `target`; return the restored files."""
        for snap in self.snapshots():
            result = self.cli("restore", snap["id"], "--target", str(target))
            assert result.rc == 0, result.err
        return sorted(p for p in target.rglob("*") if p.is_file())


@contextmanager
def agent_site(root: Path) -> Iterator[AgentSite]:
    """A chunk server under ROOT and an initialised practice site at ROOT/site on it (the agent
    not started); both stopped on the way out."""
    server = ChunkServer(root).start()
    try:
        site = AgentSite(root / "site", server).init()
        try:
            yield site
        finally:
            site.stop()
    finally:
        server.stop()


# DICOM


def dataset_digest(path: Path) -> tuple[str, str]:
    """(SOP Instance UID, SHA-256 of the pixel data bytes as stored): what a C-STORE hop keeps
    when the transfer syntax is kept, whatever it does to the meta group."""
    ds = pydicom.dcmread(path, force=True)
    pixels = ds.get((0x7FE0, 0x0010))
    data = pixels.value if pixels is not None else b""
    if isinstance(data, list | tuple):
        data = b"".join(data)
    return str(ds.SOPInstanceUID), hashlib.sha256(bytes(data or b"")).hexdigest()


def dataset_body(path: Path) -> bytes:
    """The encoded dataset after the File Meta group: the bytes a sender put on the wire."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", f"{path} is not a DICOM Part 10 file"
    # (0002,0000) UL, explicit VR little endian: tag 4, VR 2, length 2, value 4 bytes.
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


def transfer_syntax(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def pick_files(candidates: list[Path], syntaxes: set[str], limit: int) -> list[Path]:
    """Up to `limit` files in one of `syntaxes`, of a storage SOP class, with distinct and valid
    SOP Instance UIDs (pydicom's test files include a "UID" that is a hex digest, which the
    agent refuses, and one whose UIDs are VR UN, which dcmtk sends as class "31")."""
    out, seen = [], set()
    for path in candidates:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            raw = ds.get_item(0x00080016)  # before any access turns it into a UI element
            uid, ts = str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID)
        except Exception:
            continue
        classes = {str(ds.get("SOPClassUID", "")), str(ds.file_meta.MediaStorageSOPClassUID)}
        storage = classes <= STORAGE_CLASSES and raw is not None and raw.VR == "UI"
        if ts in syntaxes and uid not in seen and storage and valid_uid(uid):
            seen.add(uid)
            out.append(path)
        if len(out) >= limit:
            break
    return out


def allow(*titles: str, host: str = "127.0.0.1") -> tuple[str, ...]:
    """`dicomvault agent` flags allow-listing `titles` (default: `SENDERS`) from `host`."""
    return tuple(a for t in titles or SENDERS for a in ("--allow-sender", f"{t}@{host}"))


def storescu(
    port: int, *files: Path, timeout: float = 120, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    require_tool(STORESCU, "dcmtk")
    return subprocess.run(
        [
            STORESCU,
            *options,
            "-aec",
            AGENT_AET,
            "-aet",
            "MODALITY",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dcmsend(port: int, *files: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    require_tool(DCMSEND, "dcmtk")
    return subprocess.run(
        [
            DCMSEND,
            "-dn",
            "-aec",
            AGENT_AET,
            "-aet",
            "PACS",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
