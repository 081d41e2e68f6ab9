"""Replication between real `dicomvault-server` processes on loopback: kill -9 of either side
mid-transfer, a peer down for a while, and a full disaster restore from the peers via the
`dicomvault` CLI with only the passphrase and the practice's restore token."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarks.serverkit import ServerProcess, cli
from engine.ids import ChunkId, PackId
from engine.pack import pack_id_of
from engine.remote import RemoteBackend
from tests.conftest import build_dicom_tree
from tests.helpers import CHEAP_KDF_ARGS, PASSPHRASE, Vault, restored, tree_state
from tests.server.conftest import make_commit, make_pack

pytestmark = pytest.mark.slow
REPO = "clinic"


class Site(ServerProcess):
    """One `python -m server serve` process with its data folder, config file and port."""

    def __init__(self, root: Path, name: str, peers: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(root / name, name=name)
        self.configure(peers)

    def configure(self, peers: Sequence[dict[str, Any]]) -> None:
        """(Re)write the site's config file: its name, quick replication retries, `peers`."""
        self.write_config(
            peers, site_name=self.name, index_map_size=268435456,
            replication_poll_interval=0.2, replication_retry_max=1.0,
        )  # fmt: skip

    def peer_entry(self, primary: str, **extra: Any) -> dict[str, Any]:
        """Mint a replica token here (for `primary`) and return the `[[peers]]` entry."""
        token = self.cli_json("peer-token", "create", "--name", primary, "--repo", REPO)["token"]
        return {"name": self.name, "url": self.url, "token": token, **extra}

    def replication(self, token: str, repo: str = REPO) -> dict[str, Any]:
        doc: dict[str, Any] = self.get_json(f"/v1/repos/{repo}/replication", token, timeout=5)
        return doc


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    made: list[Site] = []

    def make(name: str, peers: Sequence[dict[str, Any]] = ()) -> Site:
        made.append(Site(tmp_path, name, list(peers)))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def settled(site: Site, token: str) -> bool:
    doc = site.replication(token)
    return all(p["pending_items"] == 0 for p in doc["peers"])


async def upload(site: Site, token: str, packs: int, size: int) -> tuple[list[PackId], bytes]:
    """`packs` packs of ~`size` bytes, then the commit naming all their chunks."""
    backend = RemoteBackend(f"{site.url}/{REPO}", token)
    ids: list[PackId] = []
    refs: list[ChunkId] = []
    try:
        for _ in range(packs):
            pack_id, data, chunks = make_pack(chunks=4, size=size // 4)
            await backend.put_pack(pack_id, data)
            ids.append(pack_id)
            refs += chunks
        record = make_commit(refs)
        await backend.commit(record)
    finally:
        await backend.close()
    return ids, record


async def mid_transfer(
    sites: Callable[..., Site], packs: int
) -> tuple[Site, Site, dict[str, str], list[PackId]]:
    """Peer site-b and primary site-a replicating to it at 2 MiB/s, both running; `packs` packs of
    1 MiB and their commit uploaded to a practice on site-a, mostly still to be sent."""
    b = sites("site-b")
    a = sites("site-a", [b.peer_entry("site-a", rate_limit="2MiB/s")])
    tokens = a.create_repo()
    b.start()
    a.start()
    ids, _ = await upload(a, tokens["backup"], packs=packs, size=1024 * 1024)
    return a, b, tokens, ids


def assert_all_verified(site: Site, packs: list[PackId]) -> None:
    held = {p.name: p for p in site.pack_files()}
    assert sorted(held) == sorted(p.hex() for p in packs)
    for name, path in held.items():
        assert pack_id_of(path.read_bytes()).hex() == name
    assert not list((site.data / "repos" / REPO / ".incoming").glob(".tmp-*"))


async def test_kill_9_of_the_primary_mid_transfer_resumes_without_resending(
    sites: Callable[..., Site],
) -> None:
    a, b, tokens, packs = await mid_transfer(sites, 12)  # ~6 s at 2 MiB/s
    wait_until(lambda: len(b.pack_files()) >= 3, what="some packs at the peer")
    a.kill()
    assert len(b.pack_files()) < len(packs)
    stored_before = b.metric("dicomvault_packs_stored_total")
    a.start()
    wait_until(lambda: settled(a, tokens["admin"]), what="replication to settle")
    assert_all_verified(b, packs)
    assert b.metric("dicomvault_packs_stored_total") == len(packs)
    assert b.metric("dicomvault_packs_stored_total") > stored_before
    # Acknowledged packs were not sent again (anti-entropy also spots a pack the peer stored
    # just before the kill, before it could be acknowledged).
    assert b.metric("dicomvault_packs_duplicate_total") == 0
    snapshots = a.replication(tokens["admin"])["peers"][0]["snapshots"]
    assert list(snapshots.values()) == [True]


async def test_kill_9_of_the_peer_mid_transfer_then_restart_delivers_everything(
    sites: Callable[..., Site],
) -> None:
    a, b, tokens, packs = await mid_transfer(sites, 10)
    wait_until(lambda: len(b.pack_files()) >= 2, what="some packs at the peer")
    b.kill()
    lag = a.replication(tokens["admin"])["peers"][0]
    assert lag["pending_packs"] > 0
    b.start()
    wait_until(lambda: settled(a, tokens["admin"]), what="replication to settle")
    assert_all_verified(b, packs)
    assert list(a.replication(tokens["admin"])["peers"][0]["snapshots"].values()) == [True]


async def test_a_peer_down_for_a_while_gets_the_backlog_when_it_returns(
    sites: Callable[..., Site],
) -> None:
    b = sites("site-b")
    a = sites("site-a", [b.peer_entry("site-a")])
    tokens = a.create_repo()
    a.start()  # the peer is not running
    packs, _ = await upload(a, tokens["backup"], packs=5, size=256 * 1024)
    lag = wait_until(
        lambda: a.replication(tokens["admin"])["peers"][0]["last_error"] and
        a.replication(tokens["admin"])["peers"][0],
        what="an error about the peer",
    )  # fmt: skip
    assert lag["pending_packs"] == 5 and lag["up"] is False
    assert lag["pending_bytes"] >= 5 * 256 * 1024
    assert a.metric('dicomvault_replication_lag_packs{peer="site-b",repo="clinic"}') == 5
    b.start()
    wait_until(lambda: settled(a, tokens["admin"]), what="the backlog to arrive")
    assert_all_verified(b, packs)
    assert a.metric('dicomvault_replication_lag_packs{peer="site-b",repo="clinic"}') == 0


def _vault_env(url: str, token: str) -> dict[str, str]:
    return {"DICOMVAULT_REPO": url, "DICOMVAULT_TOKEN": token}


async def test_disaster_restore_from_a_peer_with_the_passphrase_and_restore_token(
    sites: Callable[..., Site], tmp_path: Path
) -> None:
    b, c = sites("site-b"), sites("site-c")
    a = sites("site-a", [b.peer_entry("site-a"), c.peer_entry("site-a", rate_limit="50MiB/s")])
    tokens = a.create_repo()
    for s in (b, c, a):
        s.start()
    src = build_dicom_tree(tmp_path / "practice")
    vault = Vault(tmp_path / "vault")
    vault.root.mkdir()
    vault.password_file.write_bytes(PASSPHRASE + b"\n")
    at_a = _vault_env(f"{a.url}/{REPO}", tokens["backup"])
    vault.ok("init", *CHEAP_KDF_ARGS, **at_a)
    vault.ok("backup", str(src), **at_a)
    wait_until(lambda: settled(a, tokens["admin"]), what="replication to both peers")
    listing = vault.json("snapshots", **_vault_env(f"{a.url}/{REPO}", tokens["restore"]))
    [snap] = listing["snapshots"]
    assert snap["sites"] == {"site-a": True, "site-b": True, "site-c": True}

    # The primary site burns down and the practice's machine is replaced.
    a.kill()
    shutil.rmtree(a.data)
    shutil.rmtree(vault.cache)
    for peer in (b, c):
        out = tmp_path / f"restored-{peer.name}"
        env = _vault_env(f"{peer.url}/{REPO}", tokens["restore"])
        vault.ok("restore", "latest", "--target", str(out), **env)
        assert tree_state(restored(out, src)) == tree_state(src)
        shutil.rmtree(vault.cache, ignore_errors=True)
    # A restore token cannot write at the peer, and the peer refuses the practice's backups
    # while it holds a replica (they would diverge from the primary).
    small = tmp_path / "small"
    small.mkdir()
    (small / "note.txt").write_text("after the fire\n")
    url, token = f"{b.url}/{REPO}", tokens["backup"]
    denied = vault.run("backup", str(small), DICOMVAULT_REPO=url, DICOMVAULT_TOKEN=token)
    assert denied.rc != 0 and "replica" in denied.err


def test_peer_token_create_prints_a_push_only_token(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    out = cli("peer-token", "create", "--data", data, "--json", "--name", "x", "--repo", "clinic")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["role"] == "replica" and doc["token"].startswith("dv_") and len(doc["token"]) == 46
    assert doc["repositories"] == ["clinic"]
    text = cli("peer-token", "create", "--data", data, "--repo", "other")
    assert "cannot read packs or delete" in text.stdout
    assert "fill these repositories here: other" in text.stdout


def test_replica_names_are_bound_by_the_operator_and_never_taken_twice(tmp_path: Path) -> None:
    """A name bound to a primary cannot become a practice here, and a practice's name (or
    another primary's) cannot be bound (issue 11, item 13)."""
    data = str(tmp_path / "d")
    bound = cli("peer-token", "create", "--data", data, "--name", "site-a", "--repo", "clinic")
    assert bound.returncode == 0, bound.stderr
    taken = cli("repo", "create", "clinic", "--data", data)
    assert taken.returncode == 11 and "reserved for replicas from 'site-a'" in taken.stderr
    assert cli("repo", "create", "local", "--data", data).returncode == 0
    for name, holder in (("local", "a practice of this site"), ("clinic", "replicas from")):
        out = cli("peer-token", "create", "--data", data, "--name", "site-x", "--repo", name)
        assert out.returncode == 11 and holder in out.stderr, out.stderr
    again = cli("peer-token", "create", "--data", data, "--name", "site-a", "--repo", "clinic")
    assert again.returncode == 0, again.stderr  # the same primary: a new token, same binding
    # Without --repo a token binds no name: a peer that may become primary after a failover.
    unbound = cli("peer-token", "create", "--data", data, "--name", "site-b")
    assert unbound.returncode == 0, unbound.stderr
    assert cli("repo", "create", "other", "--data", data).returncode == 0


def test_serve_refuses_a_peer_without_its_token(tmp_path: Path) -> None:
    args = ["serve", "--data", str(tmp_path), "--peer", "http://127.0.0.1:1"]
    out = cli(*args, timeout=30)
    assert out.returncode == 2 and "--peer-token" in out.stderr
