"""The `dicomvault` CLI against a real `dicomvault-server` process, over real loopback sockets.

Every test starts `python -m server serve` on a free port (real LMDB in tmp_path), creates a
repository with `repo create --json`, and drives the client as a user would, through
DICOMVAULT_REPO=http(s)://… and DICOMVAULT_TOKEN. Link faults come from `benchmarks.linkproxy`:
a paced link keeps packs waiting in the spool, and resets drop connections mid-upload.
Nothing asserts wall-clock speed; the rate test checks bytes per elapsed second, generously.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from benchmarks.linkproxy import LinkProxy, max_in_window
from benchmarks.serverkit import REPO, ServerProcess, free_port
from tests.helpers import (
    CHEAP_KDF_ARGS,
    PASSPHRASE,
    MiB,
    Vault,
    assert_one_line_error,
    pydicom_test_files,
    restored,
    tree_state,
    write_pattern_file,
)
from tests.server.test_tls import self_signed

RANDOM = 1  # write_pattern_file(random_every=1): every piece random, so nothing compresses


def wait_until(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "server").start()
    yield srv
    srv.stop()


@dataclass(frozen=True)
class Agent(Vault):
    """A practice machine: its own cache folder, talking to a repository on a chunk server."""

    url: str = ""
    token: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = super().env(DICOMVAULT_REPO=self.url, DICOMVAULT_TOKEN=self.token)
        env.update(self.extra_env)
        env.update(extra)
        return env

    def with_token(self, token: str) -> Agent:
        return Agent(self.root, self.url, token, self.extra_env)

    def direct(self, server: ServerProcess) -> Agent:
        """The same machine talking to the server without the proxy in between."""
        return Agent(self.root, f"{server.url}/{REPO}", self.token, self.extra_env)

    def create(self) -> Agent:
        self.root.mkdir(parents=True, exist_ok=True)
        self.password_file.write_bytes(PASSPHRASE + b"\n")
        return self

    def repo_id(self) -> str:
        (folder,) = [p for p in self.cache.iterdir() if p.is_dir()]
        return folder.name

    def spool(self) -> list[Path]:
        folder = self.cache / self.repo_id() / "spool"
        return [p for p in folder.iterdir() if not p.name.startswith(".")]

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args), env=self.env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip


def agent(root: Path, url: str, token: str) -> Agent:
    return Agent(root, url=url, token=token).create()


def random_tree(root: Path, sizes_mib: list[float], seed: int = 0) -> Path:
    """Incompressible files, so pack sizes (and upload times) follow the file sizes."""
    root.mkdir(parents=True)
    for i, size in enumerate(sizes_mib):
        write_pattern_file(root / f"f{i:02d}.bin", int(size * MiB), seed + i, RANDOM)
    return root


def small_dicom_tree(root: Path) -> Path:
    """pydicom's DICOM test files, text, random bytes, empty files, a symlink, odd modes."""
    for i, path in enumerate(pydicom_test_files()):
        dest = root / "dicom" / f"d{i % 3}" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    nested = root / "notes" / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "readme.txt").write_text("not DICOM\n" * 1000)
    write_pattern_file(nested / "random.bin", 3 * MiB + 17, 7, RANDOM)
    (root / "notes" / "empty").write_bytes(b"")
    (root / "notes" / "link").symlink_to("a/b/readme.txt")
    (root / "empty-folder").mkdir()
    os.chmod(nested / "random.bin", 0o600)
    os.chmod(root / "empty-folder", 0o700)
    for n, path in enumerate(sorted(root.rglob("*"), reverse=True)):
        if not path.is_symlink():
            os.utime(path, ns=(1_600_000_000_123_456_789 + n, 1_600_000_000_123_456_789 + n * 7))
    return root


def assert_restores_bit_exact(a: Agent, tree: Path, target: Path, snapshot: str = "latest") -> None:
    a.ok("restore", snapshot, "--target", str(target))
    assert tree_state(restored(target, tree)) == tree_state(tree)


def packs_size(server: ServerProcess) -> int:
    return sum(p.stat().st_size for p in server.pack_files())


# every command


def test_every_command_works_against_a_chunk_server(server: ServerProcess, tmp_path: Path) -> None:
    tokens = server.create_repo()
    tree = small_dicom_tree(tmp_path / "tree")
    with LinkProxy(server.port) as link:  # unpaced: only here to count the bytes on the wire
        a = agent(tmp_path / "pc1", f"{link.url}/{REPO}", tokens["backup"])
        assert a.json("init", *CHEAP_KDF_ARGS)["repo"] == a.url
        link.reset_counters()
        first = a.json("backup", str(tree))
        on_wire = link.stats.bytes_up
        stored = packs_size(server)
        assert first["packs"] == len(server.pack_files()) and first["bytes_stored"] == stored
        # bytes_uploaded counts the socket: every pack body plus the HTTP requests, and it
        # matches what the link carried (which also saw the repository being opened).
        assert first["bytes_uploaded"] >= stored
        assert first["bytes_uploaded"] <= on_wire <= first["bytes_uploaded"] + 16 * 1024
        assert first["bytes_uploaded"] <= stored * 1.02 + 64 * 1024
        _every_other_command(a, tree, tmp_path, first, server)


def _every_other_command(
    a: Agent, tree: Path, tmp_path: Path, first: dict[str, Any], server: ServerProcess
) -> None:
    second = a.json("backup", str(tree))
    assert second["files_unchanged"] == second["files"] == first["files"]
    assert second["bytes_uploaded"] < 0.001 * first["bytes_total"]

    snaps = a.json("snapshots")["snapshots"]
    assert [s["id"] for s in snaps] == [first["snapshot"], second["snapshot"]]
    listing = {e["path"]: e for e in a.json("ls", first["snapshot"][:10])["entries"]}
    assert listing[str(tree / "notes" / "link").lstrip("/")]["type"] == "symlink"

    assert_restores_bit_exact(a, tree, tmp_path / "restored")
    checked = a.json("check", "--read-data")
    assert checked["problems"] == [] and checked["bytes_verified"] == packs_size(server)
    rebuilt = a.json("repair-index")
    assert rebuilt["packs"] == len(server.pack_files())
    third = a.json("backup", str(tree))  # the rebuilt index still dedupes everything
    assert third["chunks_new"] <= 1 and third["bytes_uploaded"] < 0.001 * first["bytes_total"]


def test_a_backup_before_init_says_to_run_init(server: ServerProcess, tmp_path: Path) -> None:
    """The README's chunk-server steps: `repo create` makes the space, `init` the repository."""
    tokens = server.create_repo()
    a = agent(tmp_path / "pc1", f"{server.url}/{REPO}", tokens["backup"])
    tree = random_tree(tmp_path / "tree", [0.1])
    assert_one_line_error(a.run("backup", str(tree)), 10, "dicomvault init")


def test_a_stopped_server_fails_at_once_with_its_cause(tmp_path: Path) -> None:
    """Issue 17 item 3: no server on the port is one line at once, not five minutes of retries
    (a budget of 0 s after the first answer would fail too: nothing here is retried)."""
    a = agent(tmp_path / "pc1", f"http://127.0.0.1:{free_port()}/{REPO}", "token")
    assert_one_line_error(a.run("snapshots"), 14, "connection refused")
    assert_one_line_error(a.run("snapshots", "--retry-for", "soon"), 2, "30s, 5m or 2h")


def test_a_token_that_starts_with_a_dash_works_in_the_equals_form(
    server: ServerProcess, tmp_path: Path
) -> None:
    """One bare token_urlsafe in 64 starts with '-' (tokens minted before the dv_ prefix)."""
    from server.admin import open_index
    from server.auth import Role, hash_token
    from server.config import load_config

    server.create_repo()
    token = "-" + "x" * 42
    with open_index(load_config(None, data_dir=server.data)) as index:
        index.put_token(hash_token(token), {"repo": REPO, "role": str(Role.BACKUP), "created": 0})
    a = agent(tmp_path / "pc1", f"{server.url}/{REPO}", "")
    a.ok(f"--token={token}", "init", *CHEAP_KDF_ARGS)
    assert a.json("snapshots", f"--token={token}")["snapshots"] == []


def test_restore_token_reads_but_cannot_back_up(server: ServerProcess, tmp_path: Path) -> None:
    tokens = server.create_repo()
    tree = random_tree(tmp_path / "tree", [0.5])
    a = agent(tmp_path / "pc1", f"{server.url}/{REPO}", tokens["backup"])
    a.ok("init", *CHEAP_KDF_ARGS)
    a.ok("backup", str(tree))
    reader = agent(tmp_path / "viewer", a.url, tokens["restore"])
    assert len(reader.json("snapshots")["snapshots"]) == 1
    assert_restores_bit_exact(reader, tree, tmp_path / "restored")
    refused = reader.run("backup", str(random_tree(tmp_path / "new", [0.3], seed=9)))
    assert_one_line_error(refused, 15, "restore")
    assert len(a.json("snapshots")["snapshots"]) == 1


def test_tokens_are_confined_to_their_repository(server: ServerProcess, tmp_path: Path) -> None:
    clinic, other = server.create_repo(), server.create_repo("other")
    a = agent(tmp_path / "pc1", f"{server.url}/{REPO}", clinic["backup"])
    a.ok("init", *CHEAP_KDF_ARGS)
    intruder = agent(tmp_path / "pc2", f"{server.url}/{REPO}", other["admin"])
    assert_one_line_error(intruder.run("snapshots"), 10)
    assert_one_line_error(intruder.with_token("x" * 43).run("snapshots"), 15)
    assert_one_line_error(intruder.run("init", *CHEAP_KDF_ARGS), 10)


# dedupe across agents


def test_two_agents_of_one_practice_dedupe_against_each_other(
    server: ServerProcess, tmp_path: Path
) -> None:
    tokens = server.create_repo()
    tree = small_dicom_tree(tmp_path / "tree")
    copy = tmp_path / "elsewhere" / "same-studies"
    shutil.copytree(tree, copy, symlinks=True)
    a = agent(tmp_path / "pc1", f"{server.url}/{REPO}", tokens["backup"])
    a.ok("init", *CHEAP_KDF_ARGS)
    first = a.json("backup", str(tree), "--host", "pc1")
    b = agent(tmp_path / "pc2", a.url, tokens["backup"])  # its own, empty cache
    second = b.json("backup", str(copy), "--host", "pc2")
    assert second["bytes_read"] == first["bytes_read"]  # pc2 really read every file
    # Only its own catalogue (other paths) is new; every file chunk was known to the server.
    assert second["chunks_new"] <= 2
    assert second["bytes_uploaded"] < 0.02 * first["bytes_uploaded"]
    assert_restores_bit_exact(a, copy, tmp_path / "restored")


# link faults


def test_dropped_connection_mid_upload_is_retried_to_completion(
    server: ServerProcess, tmp_path: Path
) -> None:
    tokens = server.create_repo()
    tree = random_tree(tmp_path / "tree", [12, 6])
    with LinkProxy(server.port, rate=16 * MiB) as link:
        a = agent(tmp_path / "pc1", f"{link.url}/{REPO}", tokens["backup"])
        a.ok("init", *CHEAP_KDF_ARGS)
        link.reset_after = link.stats.bytes_up + 6 * MiB  # inside the first pack's body
        summary = a.json("backup", str(tree))
        assert link.stats.resets >= 1
    assert summary["bytes_uploaded"] > summary["bytes_stored"]  # a pack went twice (in part)
    a = a.direct(server)
    assert a.json("check", "--read-data")["problems"] == []
    assert_restores_bit_exact(a, tree, tmp_path / "restored")


def test_server_restart_mid_backup_is_survived(server: ServerProcess, tmp_path: Path) -> None:
    tokens = server.create_repo()
    tree = random_tree(tmp_path / "tree", [20, 4])
    with LinkProxy(server.port, rate=8 * MiB) as link:
        a = agent(tmp_path / "pc1", f"{link.url}/{REPO}", tokens["backup"])
        a.ok("init", *CHEAP_KDF_ARGS)
        proc = a.popen("backup", "--json", str(tree))
        start = link.stats.bytes_up
        wait_until(lambda: link.stats.bytes_up > start + 4 * MiB, what="the upload to start")
        server.kill()
        time.sleep(1.0)  # the client sees refused connections and backs off meanwhile
        server.start()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "retrying" in err
    summary = json.loads(out)
    assert summary["packs"] == len(server.pack_files())
    a = a.direct(server)
    assert a.json("check", "--read-data")["problems"] == []
    assert_restores_bit_exact(a, tree, tmp_path / "restored")


def test_killed_client_resends_only_unacknowledged_packs(
    server: ServerProcess, tmp_path: Path
) -> None:
    tokens = server.create_repo()
    tree = random_tree(tmp_path / "tree", [15, 15, 4])  # three packs: ~16, ~16 and ~2 MiB
    with LinkProxy(server.port, rate=8 * MiB) as link:
        a = agent(tmp_path / "pc1", f"{link.url}/{REPO}", tokens["backup"])
        a.ok("init", *CHEAP_KDF_ARGS)
        proc = a.popen("backup", "--json", str(tree))
        wait_until(lambda: len(server.pack_files()) >= 1, what="the first acknowledged pack")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        acknowledged = packs_size(server)
        spooled = a.spool()
        assert spooled, "every pack was already uploaded; the link should have held some back"
        link.rate = None
        resumed = a.json("backup", str(tree))
    total = packs_size(server)
    # The resumed run sends what was still spooled, never the packs the server acknowledged.
    waiting = total - acknowledged
    assert resumed["bytes_uploaded"] <= waiting * 1.02 + 256 * 1024
    assert resumed["bytes_uploaded"] < 0.75 * total
    assert a.spool() == []
    a = a.direct(server)
    assert a.json("check", "--read-data")["problems"] == []
    assert_restores_bit_exact(a, tree, tmp_path / "restored")


def test_upload_limit_holds_on_the_wire(server: ServerProcess, tmp_path: Path) -> None:
    tokens = server.create_repo()
    tree = random_tree(tmp_path / "tree", [6])
    rate = 2_000_000
    with LinkProxy(server.port) as link:
        a = agent(tmp_path / "pc1", f"{link.url}/{REPO}", tokens["backup"])
        a.ok("init", *CHEAP_KDF_ARGS)
        link.reset_counters()
        summary = a.json("--limit-upload", "2MB", "backup", str(tree))
        samples = link.stats.samples
    assert summary["bytes_uploaded"] >= 6 * MiB
    # Generous bounds: the limiter allows 0.2 s of burst, and the proxy sees kernel buffering.
    assert max_in_window(samples, 2.0) <= rate * 2 * 1.15 + 256 * 1024
    assert link.up_rate() <= rate * 1.15


# TLS


def test_backup_and_restore_over_tls_with_a_generated_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    srv = ServerProcess(tmp_path / "server", tls=(cert, key)).start()
    try:
        tokens = srv.create_repo()
        tree = random_tree(tmp_path / "tree", [1.5])
        a = agent(tmp_path / "pc1", f"{srv.url}/{REPO}", tokens["backup"])
        untrusted = a.run("init", *CHEAP_KDF_ARGS)
        assert_one_line_error(untrusted, 14, "certificate")
        a.ok("--cacert", str(cert), "init", *CHEAP_KDF_ARGS)
        summary = a.json("--cacert", str(cert), "backup", str(tree))
        assert summary["bytes_uploaded"] >= summary["bytes_stored"] > 1.5 * MiB
        target = tmp_path / "restored"
        a.ok("--cacert", str(cert), "restore", "latest", "--target", str(target))
        assert tree_state(restored(target, tree)) == tree_state(tree)
    finally:
        srv.stop()
