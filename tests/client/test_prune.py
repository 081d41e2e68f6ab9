"""`dicomvault prune` through the CLI: a local repository, and a real chunk-server process with
real CLI backups running while prune runs, prunes killed (SIGKILL) at seeded moments, the
server killed mid-prune, a backup token refused and a second prune refused."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.serverkit import REPO, ServerProcess
from engine.backend import LocalBackend
from engine.store.local import LocalStore
from tests.client.test_remote import Agent, agent, server  # noqa: F401
from tests.helpers import (
    CHEAP_KDF_ARGS,
    Vault,
    assert_one_line_error,
    restored,
    tree_state,
    write_pattern_file,
)


def _change(tree: Path, seed: int, files: int = 3) -> None:
    tree.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in rng.sample(range(6), files):
        write_pattern_file(tree / f"f{i}.bin", rng.randrange(20_000, 400_000), seed * 10 + i, 1)


def _snap_states(a: Vault | Agent, tree: Path, rounds: int, seed: int) -> dict[str, dict]:
    states = {}
    for r in range(rounds):
        _change(tree, seed + r)
        states[a.json("backup", str(tree))["snapshot"]] = tree_state(tree)
    return states


def _assert_all_restore(a: Vault | Agent, tree: Path, states: dict[str, dict], root: Path) -> None:
    listed = {s["id"] for s in a.json("snapshots")["snapshots"]}
    for sid, state in states.items():
        if sid not in listed:
            continue
        target = root / f"restore-{sid[:8]}"
        a.ok("restore", sid, "--target", str(target))
        assert tree_state(restored(target, tree)) == state, sid


def _practice(site: ServerProcess, tmp_path: Path) -> tuple[dict[str, str], Agent, Agent]:
    """A repository on `site` with a backup machine (initialised) and an admin's machine."""
    tokens = site.create_repo()
    url = f"{site.url}/{REPO}"
    backup = agent(tmp_path / "pc1", url, tokens["backup"])
    backup.ok("init", *CHEAP_KDF_ARGS)
    return tokens, backup, agent(tmp_path / "admin", url, tokens["admin"])


def test_local_prune_reclaims_forgotten_data_and_checks_clean(vault: Vault, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    states = _snap_states(vault, tree, 5, seed=1)
    before = vault.packs_size()
    vault.ok("forget", "--keep-last", "2")
    frozen = tree_state(vault.repo)
    dry = vault.json("prune", "--dry-run")
    assert tree_state(vault.repo) == frozen  # a dry run changes nothing
    assert dry["packs_deleted"] > 0 and dry["bytes_unused"] > 0
    done = vault.json("prune", "--max-unused", "0%")
    assert done["bytes_reclaimed"] >= dry["bytes_deleted"]
    assert done["unused_after"] == 0
    assert vault.packs_size() == before - done["bytes_reclaimed"] + done["bytes_written"]
    assert done["bytes_reclaimed"] > done["bytes_written"]
    vault.ok("check", "--read-data")
    _assert_all_restore(vault, tree, states, tmp_path)
    again = vault.json("prune", "--max-unused", "0%")  # nothing left to do
    assert again["packs_deleted"] == again["packs_repacked"] == 0
    # forgotten, then undeleted: the pruned packs come back with it
    forgotten = vault.json("undelete")["pending"]
    assert any(d["kind"] == "pack" for d in forgotten)
    vault.ok("undelete", "--all")
    vault.ok("repair-index")
    vault.ok("check", "--read-data")
    _assert_all_restore(vault, tree, states, tmp_path / "after-undelete")


def test_a_second_prune_is_refused_while_the_first_holds_the_lock(
    vault: Vault, tmp_path: Path
) -> None:
    _snap_states(vault, tmp_path / "tree", 2, seed=2)
    vault.ok("forget", "--keep-last", "1")
    import asyncio

    other = LocalBackend(LocalStore(vault.repo), str(vault.repo))
    asyncio.run(other.prune_lock("another-machine", 600))
    frozen = tree_state(vault.repo)
    assert_one_line_error(vault.run("prune"), 14, "another prune (another-machine)")
    assert tree_state(vault.repo) == frozen
    asyncio.run(other.prune_release("another-machine"))
    vault.ok("prune")


def test_prune_on_a_chunk_server_with_backups_running(
    server: ServerProcess,  # noqa: F811
    tmp_path: Path,
) -> None:
    tokens, a, admin = _practice(server, tmp_path)
    url = f"{server.url}/{REPO}"
    tree_a = tmp_path / "tree-a"
    states = _snap_states(a, tree_a, 4, seed=3)

    refused = a.run("prune")  # a backup token: exit 15, nothing changed
    assert_one_line_error(refused, 15, "")
    assert a.run("prune", "--dry-run").rc == 0  # reading is allowed

    b = agent(tmp_path / "pc2", url, tokens["backup"])
    b_states = prune_while_backing_up(a, admin, b, tree_a, tmp_path / "tree-b", states, 6)
    admin.ok("prune", "--max-unused", "0%")
    reader = agent(tmp_path / "fresh", url, tokens["restore"])
    reader.ok("check", "--read-data")
    _assert_all_restore(reader, tree_a, states, tmp_path / "ra")
    _assert_all_restore(reader, tmp_path / "tree-b", b_states, tmp_path / "rb")
    pending = reader.json("undelete")["pending"]
    assert any(d["kind"] == "pack" for d in pending)  # scheduled, not destroyed


def test_a_prune_killed_at_any_moment_is_finished_by_the_next(
    server: ServerProcess,  # noqa: F811
    tmp_path: Path,
) -> None:
    tokens, a, admin = _practice(server, tmp_path)
    url = f"{server.url}/{REPO}"
    tree = tmp_path / "tree"
    states = _snap_states(a, tree, 3, seed=5)
    rng = random.Random(14)
    for round_ in range(6):
        states.update(_snap_states(a, tree, 2, seed=20 + 2 * round_))
        admin.ok("forget", "--keep-last", "2")
        proc = admin.popen("prune", "--max-unused", "0%")
        time.sleep(rng.uniform(0.0, 1.5))
        if round_ % 2:
            server.kill()  # the server dies mid-prune and comes back while the client retries
            time.sleep(rng.uniform(0.0, 0.5))
            server.start()
            proc.wait(300)  # it finishes across the restart, or failed fast before first contact
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        admin.ok("prune", "--max-unused", "0%")  # same machine: takes over its lock
        reader = agent(tmp_path / f"fresh{round_}", url, tokens["restore"])
        reader.ok("check", "--read-data")
        _assert_all_restore(reader, tree, states, tmp_path / f"r{round_}")


def test_the_live_set_grows_its_map_when_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live set writes through its map, so its file is as large as the map: it starts
    small and doubles, adding a batch that did not fit again."""
    from client.prune import LiveSet

    monkeypatch.setattr(LiveSet, "initial_map", 256 * 1024)
    live = LiveSet(tmp_path)
    try:
        ids = [random.Random(i).randbytes(32) for i in range(30_000)]
        assert all(live.add_new(ids[:20_000]))
        assert live.add_new(ids[10_000:]) == [False] * 10_000 + [True] * 10_000
        assert live.count == 30_000 and live.map_size > 256 * 1024
        assert list(live) == sorted(ids) and ids[123] in live
    finally:
        live.close()


def test_repack_reads_live_blobs_in_bounded_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack being repacked is read by ranges of its live blobs (never whole): at most
    RANGE_MAX bytes each, reading through short dead gaps, a blob larger than that alone."""
    from client import prune as module
    from engine.ids import ChunkId
    from engine.pack import ManifestEntry

    monkeypatch.setattr(module, "RANGE_MAX", 100)
    monkeypatch.setattr(module, "RANGE_GAP", 10)
    spans = [(0, 30), (35, 30), (65, 30), (200, 10), (215, 150), (400, 5)]
    wanted = [
        (ManifestEntry(ChunkId(bytes([i]) * 32), o, n), (n, 0)) for i, (o, n) in enumerate(spans)
    ]
    runs = [[(e.offset, e.length) for e, _ in run] for run in module._runs(wanted)]
    assert runs == [[(0, 30), (35, 30), (65, 30)], [(200, 10)], [(215, 150)], [(400, 5)]]
    assert list(module._runs([])) == []


def prune_while_backing_up(
    a: Any, admin: Any, b: Any, tree_a: Path, tree_b: Path, states: dict[str, Any], b_runs: int
) -> dict[str, Any]:
    """Machine `b` backs up `b_runs` times in a thread while `a` backs up and `admin` forgets
    and prunes three times; then one more prune. Adds a's snapshots to `states`, returns b's."""
    b_states: dict[str, Any] = {}
    errors: list[str] = []

    def keep_backing_up() -> None:  # a second machine backs up all through the prunes
        for r in range(b_runs):
            _change(tree_b, 100 + r)
            state = tree_state(tree_b)
            result = b.run("backup", str(tree_b), "--json")
            if result.rc != 0:
                errors.append(result.err)
                return
            b_states[result.doc["snapshot"]] = state

    worker = threading.Thread(target=keep_backing_up)
    worker.start()
    for r in range(3):
        states.update(_snap_states(a, tree_a, 1, seed=10 + r))
        admin.ok("forget", "--keep-last", "2", "--group-by", "host,paths")
        admin.ok("prune", "--max-unused", "0%")
    worker.join()
    assert errors == []
    admin.ok("prune", "--max-unused", "0%")
    return b_states
