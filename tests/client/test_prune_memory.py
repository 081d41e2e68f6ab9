"""Memory of forget, prune and stats does not grow with the repository (docs/design.md §14,
"Memory"): the real CLI in a child process, its anonymous memory sampled from /proc (what the
process allocated: Python's heap and LMDB's page buffers, not the index's mapped file pages),
on two local repositories built like the prune benchmark's, one six times the other (same
number of snapshots, six times the chunks and packs). The packs are built small (2 MiB), so
what is bounded by a pack's size (repacking) is the same in both and what grows with the
repository shows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from benchmarks.prune import Child, build
from engine import packer
from tests.helpers import PASSPHRASE, Vault

SNAPSHOTS = 400  # 4 windows of 100 whose chunks are shuffled together (benchmarks.prune)
SMALL, LARGE = 40_000, 240_000
# What the larger repository may add. Before the bounded index transactions and the records
# held without their refs it added 20 MiB to forget, 13 to prune and 10 to stats here; with
# transactions of 2,000 rows prune still added 3 to 6.5 (their page buffers: 2,000 random ids
# dirty more of the larger index's leaves) and a local prune read each doomed pack whole to copy
# it to trash; with 500 rows and a move to trash, -0.3 to 0.3.
GROWTH_MIB = 6


def _peaks(root: Path, chunks: int) -> dict[str, float]:
    vault = Vault(root)
    root.mkdir()
    vault.password_file.write_bytes(PASSPHRASE + b"\n")
    asyncio.run(build(vault.repo, root / "builder", SNAPSHOTS, chunks, 512))
    out = {}
    for name, args in (
        ("forget", ("forget", "--keep-last", str(SNAPSHOTS // 2), "--group-by", "")),
        ("prune", ("prune",)),  # a fresh cache: the whole first sync
        ("stats", ("stats",)),
    ):
        child = Child(vault.command(*args, "--json"), vault.env())
        child.wait()
        out[name] = child.anon_kib / 1024
    return out


def test_forget_prune_and_stats_memory_does_not_grow_with_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packer, "TARGET_SIZE", 2 << 20)  # the builder's packs (this process)
    small = _peaks(tmp_path / "small", SMALL)
    large = _peaks(tmp_path / "large", LARGE)
    grown = {k: round(large[k] - small[k], 1) for k in small}
    print("peak anonymous MiB", small, large, grown)
    assert all(g < GROWTH_MIB for g in grown.values()), f"grew (MiB): {grown}"
