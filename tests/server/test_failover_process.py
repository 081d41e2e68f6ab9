"""Failover and failback between real `dicomvault-server` processes: the primary dies mid-day
with a snapshot its peer never got, the peer is promoted (not while the primary answers), the
practice's backup that was waiting carries on there by itself, the old primary returns fenced
(it refuses the practice's writes), both sites converge, and every snapshot restores bit-exact
from either site."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.serverkit import cli
from tests.conftest import build_dicom_tree
from tests.helpers import CHEAP_KDF_ARGS, PASSPHRASE, Vault, restored, tree_state
from tests.server.test_replication_process import REPO, Site, settled, wait_until
from tests.server.test_replication_process import sites as sites_fixture

sites = sites_fixture
pytestmark = pytest.mark.slow
RETRY = ("--retry-for", "1s")


def add_files(src: Path, day: int) -> None:
    folder = src / f"day{day}"
    folder.mkdir()
    for i in range(3):
        (folder / f"scan{i}.bin").write_bytes(os.urandom(200_000 + i))


def snapshot_ids(vault: Vault, site: Site, token: str) -> set[str]:
    env = {"DICOMVAULT_REPO": f"{site.url}/{REPO}", "DICOMVAULT_TOKEN": token}
    doc = vault.json("snapshots", **env)
    return {s["id"] for s in doc["snapshots"]}


def test_primary_lost_peer_promoted_old_primary_fenced_and_both_converge(
    sites: Callable[..., Site], tmp_path: Path
) -> None:
    b = sites("site-b")
    a = sites("site-a", [b.peer_entry("site-a")])
    tokens = a.create_repo()
    # site-b may push back to site-a once it is primary: a replica token named as a's peer.
    back = cli("peer-token", "create", "--data", str(a.data), "--name", "site-b", "--json")
    assert back.returncode == 0, back.stderr
    b.configure([{"name": "site-a", "url": a.url, "token": json.loads(back.stdout)["token"]}])
    b.start(), a.start()

    vault = Vault(tmp_path / "vault")
    vault.root.mkdir()
    vault.password_file.write_bytes(PASSPHRASE + b"\n")
    both = {
        "DICOMVAULT_REPO": f"{a.url}/{REPO},{b.url}/{REPO}",
        "DICOMVAULT_TOKEN": tokens["backup"],
    }
    src = build_dicom_tree(tmp_path / "practice")
    expected: dict[str, dict[str, Any]] = {}

    def backup() -> None:
        doc = vault.json("backup", *RETRY, str(src), **both)
        expected[doc["snapshot"]] = tree_state(src)

    vault.ok("init", *CHEAP_KDF_ARGS, **both)
    backup()
    wait_until(lambda: settled(a, tokens["admin"]), what="day 1 at the peer")

    # Promote refuses while the primary answers; nothing changes.
    alive = cli("promote", REPO, "--data", str(b.data), "--primary", a.url)
    assert alive.returncode == 23 and "still answers" in alive.stderr, alive.stderr
    no_flag = cli("promote", REPO, "--data", str(b.data))
    assert no_flag.returncode == 2

    # The peer is down for a while: the next snapshot exists at the primary only...
    b.stop()
    add_files(src, 2)
    backup()
    # ...and then the primary dies mid-day.
    a.kill()
    b.start()

    # The practice's next backup finds no site taking writes and waits, retrying...
    add_files(src, 3)
    waiting = subprocess.Popen(
        vault.command("backup", "--json", *RETRY, str(src)), env=vault.env(**both),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    time.sleep(2)  # pacing only: let it meet the refusal first
    assert waiting.poll() is None, waiting.communicate()
    # ...until the operator promotes the peer; then it carries on there by itself.
    promoted = cli("promote", REPO, "--data", str(b.data), "--primary", a.url, "--json")
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(promoted.stdout)["generation"] == 2
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    expected[json.loads(out)["snapshot"]] = tree_state(src)

    # The old primary returns: it hears of generation 2 and is fenced; the sites converge.
    a.start()
    restore = tokens["restore"]
    wait_until(
        lambda: snapshot_ids(vault, a, restore) == snapshot_ids(vault, b, restore) == set(expected),
        timeout=120,
        what="both sites holding every snapshot",
    )
    add_files(src, 4)
    at_a = {"DICOMVAULT_REPO": f"{a.url}/{REPO}", "DICOMVAULT_TOKEN": tokens["backup"]}
    fenced = vault.run("backup", "--retry-for", "0", str(src), **at_a)
    assert fenced.rc == 15 and "no longer the primary" in fenced.err, fenced.err
    assert snapshot_ids(vault, a, restore) == set(expected)  # nothing written there

    # Every snapshot restores bit-exact from either site, with an empty cache each time.
    for site in (a, b):
        env = {"DICOMVAULT_REPO": f"{site.url}/{REPO}", "DICOMVAULT_TOKEN": restore}
        for n, (sid, state) in enumerate(expected.items()):
            target = tmp_path / f"restore-{site.name}-{n}"
            cache = str(tmp_path / f"cache-{site.name}-{n}")
            vault.ok("restore", sid, "--target", str(target), DICOMVAULT_CACHE_DIR=cache, **env)
            assert tree_state(restored(target, src)) == state, (site.name, sid)


def test_packs_the_primary_lost_are_read_from_the_peer_and_backups_stay_at_the_primary(
    sites: Callable[..., Site], tmp_path: Path
) -> None:
    """Real processes, both sites given: the primary lost every pack file (its index still
    lists them); `check --read-data` and `restore` read them from the peer, saying so (check
    names each pack and exits 17: the primary needs repair), and the next backup still commits
    at the primary, which stays the site in use (docs/design.md §17)."""
    b = sites("site-b")
    a = sites("site-a", [b.peer_entry("site-a")])
    tokens = a.create_repo()
    b.start(), a.start()
    vault = Vault(tmp_path / "vault")
    vault.root.mkdir()
    vault.password_file.write_bytes(PASSPHRASE + b"\n")
    both = {"DICOMVAULT_REPO": f"{a.url}/{REPO},{b.url}/{REPO}"}
    src = build_dicom_tree(tmp_path / "practice")
    vault.ok("init", *CHEAP_KDF_ARGS, DICOMVAULT_TOKEN=tokens["backup"], **both)
    first = vault.json("backup", *RETRY, str(src), DICOMVAULT_TOKEN=tokens["backup"], **both)
    state = tree_state(src)
    wait_until(lambda: settled(a, tokens["admin"]), what="the snapshot at the peer")
    packs = [p for p in (a.data / "repos" / REPO / "packs").rglob("*") if p.is_file()]
    assert packs
    for pack in packs:
        pack.unlink()

    reader = {"DICOMVAULT_TOKEN": tokens["restore"], **both}
    checked = vault.run("check", "--read-data", DICOMVAULT_CACHE_DIR=str(tmp_path / "c1"), **reader)
    assert checked.rc == 17, checked.err  # the data is safe, but the primary is damaged
    assert f"read from {b.url}/{REPO}" in checked.err, checked.err
    assert all(f"pack {p.name}: lost or damaged at {a.url}/{REPO}" in checked.err for p in packs)
    target = tmp_path / "restored"
    vault.ok("restore", first["snapshot"], "--target", str(target),
             DICOMVAULT_CACHE_DIR=str(tmp_path / "c2"), **reader)  # fmt: skip
    assert tree_state(restored(target, src)) == state

    add_files(src, 2)
    second = vault.json("backup", *RETRY, str(src), DICOMVAULT_TOKEN=tokens["backup"], **both)
    assert second["snapshot"] in snapshot_ids(vault, a, tokens["restore"])
