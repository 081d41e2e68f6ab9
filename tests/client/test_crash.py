"""A backup killed with SIGKILL at any moment leaves a repository that passes `check`, and the
next backup completes, reusing what the killed run stored."""

from __future__ import annotations

import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.ids import ChunkId
from engine.pack import read_pack_info
from tests.helpers import MiB, Vault, restored, tree_state, write_pattern_file


def make_tree(root: Path, files: int, size: int) -> Path:
    src = root / "src"
    for i in range(files):
        folder = src / f"series-{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        write_pattern_file(folder / f"image-{i:02}.bin", size, seed=i, random_every=2)
    return src


@dataclass(frozen=True)
class Clean:
    summary: dict
    packs_size: int


def clean_backup(root: Path, src: Path) -> Clean:
    vault = Vault(root / "clean").init()
    summary = vault.json("backup", str(src))
    return Clean(summary, vault.packs_size())


Moment = tuple[str, float]  # ("seconds", 0.5): after half a second; ("packs", 2): two packs


def kill_backup_at(vault: Vault, src: Path, moment: Moment) -> bool:
    """Start a backup, SIGKILL it at `moment`; return whether it was still running then."""
    kind, value = moment
    proc = vault.popen("backup", str(src), "--json")
    start = time.monotonic()

    def reached() -> bool:
        if kind == "seconds":
            return time.monotonic() - start >= value
        return len(vault.pack_files()) >= value

    while proc.poll() is None and not reached():
        time.sleep(0.01)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return running


def duplicated_chunks(vault: Vault) -> list[ChunkId]:
    """Chunk ids stored in more than one pack: what a resumed backup must never produce."""
    seen: Counter[ChunkId] = Counter()
    for pack in vault.pack_files():
        seen.update(e.chunk_id for e in read_pack_info(pack.read_bytes()).entries)
    return [cid for cid, n in seen.items() if n > 1]


def assert_resumes(vault: Vault, src: Path, clean: Clean, out: Path, read_data: bool) -> None:
    before_kill = vault.packs_size()
    report = vault.json("check")
    assert report["problems"] == []
    resumed = vault.json("backup", str(src))
    assert resumed["errors"] == []
    if read_data:
        assert vault.json("check", "--read-data")["problems"] == []
    # What the killed run stored is reused: nothing is stored twice.
    if before_kill:
        assert resumed["bytes_new"] < clean.summary["bytes_new"]
        assert resumed["bytes_stored"] < clean.packs_size
    assert duplicated_chunks(vault) == []
    # Each repository's keyed chunker cuts differently, and these files alternate compressible
    # and random blocks, so stored sizes match a clean run only roughly (seen: up to 10 % apart).
    # The exact check is the one above: no chunk is stored twice.
    assert vault.packs_size() <= clean.packs_size * 1.2, (before_kill, resumed, clean)
    vault.ok("restore", "latest", "--target", str(out))
    assert tree_state(restored(out, src)) == tree_state(src)


def test_backup_killed_after_its_first_pack_resumes_and_restores(tmp_path: Path) -> None:
    src = make_tree(tmp_path, files=3, size=12 * MiB)
    clean = clean_backup(tmp_path, src)
    assert clean.summary["packs"] >= 2
    vault = Vault(tmp_path / "killed").init()
    assert kill_backup_at(vault, src, ("packs", 1)), "backup finished before the kill"
    assert vault.pack_files() and not list((vault.repo / "snapshots").glob("*"))
    assert_resumes(vault, src, clean, tmp_path / "out", read_data=False)


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Clean]:
    root = tmp_path_factory.mktemp("crash")
    src = make_tree(root, files=15, size=10 * MiB)
    return src, clean_backup(root, src)


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment",
    [
        ("seconds", 0.2),
        ("seconds", 0.5),
        ("seconds", 1),
        ("seconds", 2),
        ("seconds", 3),
        ("packs", 1),
        ("packs", 3),
    ],
    ids=lambda m: f"{m[1]}{m[0]}",
)
def test_backup_killed_at_any_moment_leaves_a_checkable_resumable_repository(
    big_tree: tuple[Path, Clean], tmp_path: Path, moment: Moment
) -> None:
    src, clean = big_tree
    vault = Vault(tmp_path / "killed").init()
    kill_backup_at(vault, src, moment)
    assert_resumes(vault, src, clean, tmp_path / "out", read_data=True)
