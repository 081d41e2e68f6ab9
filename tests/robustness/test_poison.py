"""What a stolen append-only backup token (and a server that swaps records) can plant, against a
real `dicomvault-server` process on loopback, driven through the CLI as a practice would.

Each planted object is either refused by the server, or skipped and named by the client while
`snapshots`, `restore` of the good snapshots and `check` keep working; and the practice's admin
token moves it to the server's quarantine folder, after which `check` is clean again.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.serverkit import REPO, ServerProcess
from engine.commit import CommitRecord
from engine.ids import PackId
from engine.pack import PackBuilder, read_pack_info
from tests.client.test_remote import Agent, agent
from tests.helpers import CHEAP_KDF_ARGS, Vault, ct_small, restored, tree_state

pytestmark = pytest.mark.robustness
CHECK_FAILED, INTEGRITY, FORBIDDEN = 17, 13, 15


@dataclass
class Practice:
    server: ServerProcess
    tokens: dict[str, str]
    pc: Agent
    tree: Path
    snapshots: list[str]

    def url(self, path: str) -> str:
        return f"{self.server.url}/v1/repos/{REPO}/{path}"

    def http(self, method: str, path: str, role: str = "backup", data: bytes | None = None) -> int:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        request = urllib.request.Request(self.url(path), data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                self.last_body: bytes = response.read()
                return int(response.status)
        except urllib.error.HTTPError as e:
            self.last_body = e.read()
            return int(e.code)

    @property
    def folder(self) -> Path:
        return self.server.data / "repos" / REPO

    def record(self, snapshot: str) -> bytes:
        return (self.folder / "snapshots" / snapshot).read_bytes()

    def admin(self) -> Agent:
        return self.pc.with_token(self.tokens["admin"])

    def fresh_machine(self, name: str) -> Agent:
        """Another machine of the practice: same passphrase and token, an empty cache."""
        return agent(self.pc.root.parent / name, self.pc.url, self.pc.token)

    def assert_good_snapshots_work(self, pc: Agent, target: Path) -> None:
        listed = [s["id"] for s in pc.json("snapshots")["snapshots"]]
        assert listed == self.snapshots
        pc.ok("restore", "latest", "--target", str(target))
        assert tree_state(restored(target, self.tree)) == tree_state(self.tree)

    def assert_quarantined(self, name: str) -> None:
        log = self.server.data / "quarantine" / REPO / "log"
        assert name in [json.loads(p.read_text())["object"] for p in log.glob("*.json")]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "server").start()
    yield srv
    srv.stop()


@pytest.fixture
def practice(server: ServerProcess, tmp_path: Path) -> Practice:
    """A repository made with the backup token, as the quick start does, with two snapshots."""
    tokens = server.create_repo()
    pc = agent(tmp_path / "pc", f"{server.url}/{REPO}", tokens["backup"])
    pc.ok("init", *CHEAP_KDF_ARGS)
    tree = tmp_path / "src"
    tree.mkdir()
    shutil.copyfile(ct_small(), tree / "ct.dcm")
    (tree / "notes.txt").write_text("report\n" * 2000)
    (tree / "scan.bin").write_bytes(os.urandom(300_000))
    pc.ok("backup", str(tree))
    (tree / "later.bin").write_bytes(os.urandom(100_000))
    pc.ok("backup", str(tree))
    snapshots = [s["id"] for s in pc.json("snapshots")["snapshots"]]
    assert len(snapshots) == 2
    return Practice(server, tokens, pc, tree, snapshots)


def _sealed_junk_record() -> bytes:
    return CommitRecord("2099-01-01T00:00:00Z", "intruder", None, (), os.urandom(200)).encode()


def test_malformed_commit_records_are_refused_by_the_server(practice: Practice) -> None:
    good = json.loads(practice.record(practice.snapshots[0]))
    for junk in (
        b"not json",
        b"[]",
        json.dumps({**good, "refs": "ab"}).encode(),
        json.dumps({**good, "time": "tomorrow"}).encode(),
        json.dumps({**good, "agent": "x" * 10_000}).encode(),
        json.dumps({**good, "version": 99}).encode(),
        json.dumps({**good, "sealed": ""}).encode(),
    ):
        assert practice.http("POST", "snapshots", data=junk) == 422, junk[:60]


def test_a_junk_commit_is_skipped_named_and_quarantined(practice: Practice, tmp_path: Path) -> None:
    # Well-formed outside, random inside: only a key holder can tell, so the server accepts it.
    assert practice.http("POST", "snapshots", data=_sealed_junk_record()) == 201
    junk = json.loads(practice.last_body)["snapshot"]
    pc = practice.pc
    practice.assert_good_snapshots_work(pc, tmp_path / "out1")
    assert junk in pc.run("snapshots").err
    practice.assert_good_snapshots_work(practice.fresh_machine("pc2"), tmp_path / "out2")
    check = pc.run("check")
    assert check.rc == CHECK_FAILED and junk in check.err

    assert pc.run("quarantine", "snapshot", junk).rc == FORBIDDEN  # not with the backup token
    practice.admin().ok("quarantine", "snapshot", junk, "--reason", "planted")
    practice.assert_quarantined(f"snapshots/{junk}")
    result = pc.ok("check")
    assert junk not in result.err and "warning" not in result.err


def bad_key_objects(keys: Path) -> dict[str, bytes]:
    """Key objects no unlock may open, named by their flaw: not JSON, and the one real key
    object of the `keys` folder with KDF costs past the engine's bounds."""
    (name,) = os.listdir(keys)
    real = json.loads((keys / name).read_bytes())
    return {
        "junk": b"junk",
        "slow": json.dumps({**real, "iterations": 2**31}).encode(),
        "huge": json.dumps({**real, "memory_kib": 2**31 - 1}).encode(),
    }


def test_a_backup_token_cannot_add_key_objects(practice: Practice) -> None:
    (name,) = os.listdir(practice.folder / "keys")
    planted = bad_key_objects(practice.folder / "keys")
    planted["valid"] = (practice.folder / "keys" / name).read_bytes()
    for key, body in planted.items():
        assert practice.http("PUT", f"keys/{key}", "backup", body) == 403, key
    for key in ("junk", "slow", "huge"):
        assert practice.http("PUT", f"keys/{key}", "admin", planted[key]) == 422, key
    assert practice.http("PUT", "keys/another", "admin", planted["valid"]) == 201
    assert sorted(os.listdir(practice.folder / "keys")) == sorted([name, "another"])
    practice.pc.ok("snapshots")


def test_the_client_skips_key_objects_it_cannot_or_must_not_open(tmp_path: Path) -> None:
    """A local repository (or a server's folder edited on disk): nothing refuses the object
    first, so the client must skip it without a hang, a MemoryError or an exit 13."""
    vault = Vault(tmp_path / "local").init()
    # Named to sort before the real key object's hex name, so the client meets them first.
    bad = bad_key_objects(vault.repo / "keys").values()
    planted = {f"{i:04}": body for i, body in enumerate(bad)}
    for key, body in planted.items():
        (vault.repo / "keys" / key).write_bytes(body)
    result = vault.run("snapshots", timeout=120)
    assert result.rc == 0, result.err
    for key in planted:
        assert f"skipped key object {key}" in result.err


def _planted_pack(practice: Practice) -> tuple[PackId, bytes]:
    """Every chunk id the repository holds, each with a random blob of the right length."""
    builder = PackBuilder()
    for path in practice.server.pack_files():
        for e in read_pack_info(path.read_bytes()).entries:
            builder.add(e.chunk_id, os.urandom(e.length))
    return builder.finish(sealed_header=os.urandom(64))


def test_a_pack_reusing_chunk_ids_cannot_break_restores(practice: Practice, tmp_path: Path) -> None:
    pack_id, data = _planted_pack(practice)
    assert practice.http("PUT", f"packs/{pack_id.hex()}", data=data) == 201
    practice.assert_good_snapshots_work(practice.pc, tmp_path / "warm")
    for n in range(2):  # fresh caches learn the packs in whatever order they arrive
        practice.assert_good_snapshots_work(practice.fresh_machine(f"new{n}"), tmp_path / f"new{n}")
    check = practice.fresh_machine("checker").run("check", "--read-data")
    assert check.rc == CHECK_FAILED and pack_id.hex() in check.err

    practice.admin().ok("quarantine", "pack", pack_id.hex())
    practice.assert_quarantined(f"packs/{pack_id.hex()[:2]}/{pack_id.hex()}")
    practice.pc.ok("check", "--read-data")
    practice.fresh_machine("after").ok("check", "--read-data")
    practice.assert_good_snapshots_work(practice.pc, tmp_path / "after")


def test_an_edited_record_is_not_a_snapshot(practice: Practice, tmp_path: Path) -> None:
    """A backup token re-posts a real record with its readable fields changed: a new id, well
    formed, whose sealed body no longer authenticates."""
    doc = json.loads(practice.record(practice.snapshots[1]))
    edited = json.dumps({**doc, "agent": "intruder", "refs": doc["refs"][:1]}).encode()
    assert practice.http("POST", "snapshots", data=edited) == 201
    fake = json.loads(practice.last_body)["snapshot"]
    practice.assert_good_snapshots_work(practice.pc, tmp_path / "out")
    restore = practice.pc.run("restore", fake, "--target", str(tmp_path / "fake"))
    assert restore.rc == INTEGRITY and fake in restore.err
    check = practice.pc.run("check")
    assert check.rc == CHECK_FAILED and fake in check.err
    practice.admin().ok("quarantine", "snapshot", fake)
    practice.pc.ok("check")


def test_swapped_records_are_detected(practice: Practice, tmp_path: Path) -> None:
    """A server that serves one snapshot's record under the other's name."""
    one, two = (practice.folder / "snapshots" / s for s in practice.snapshots)
    a, b = one.read_bytes(), two.read_bytes()
    one.write_bytes(b)
    two.write_bytes(a)
    first = practice.snapshots[0]
    restore = practice.pc.run("restore", first, "--target", str(tmp_path / "out"))
    assert restore.rc == INTEGRITY and first in restore.err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    check = practice.pc.run("check")
    assert check.rc == CHECK_FAILED
    assert all(s in check.err for s in practice.snapshots)
    one.write_bytes(a)
    two.write_bytes(b)
    practice.pc.ok("check")
