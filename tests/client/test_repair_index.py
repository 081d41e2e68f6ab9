"""The local index is a cache: deleted, it is rebuilt from the packs, and nothing is lost."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.helpers import MiB, Vault, restored, tree_state


def test_repair_index_after_deleting_the_cache_restores_and_dedupes(
    vault: Vault, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.bin").write_bytes(os.urandom(2 * MiB))
    (src / "b.txt").write_text("text\n" * 10_000)
    first = vault.json("backup", str(src))
    shutil.rmtree(vault.cache)
    repaired = vault.json("repair-index")
    assert repaired["packs"] == first["packs"] == len(vault.pack_files())
    assert repaired["chunks"] >= first["chunks_new"]
    vault.ok("restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_state(restored(tmp_path / "out", src)) == tree_state(src)
    packs = vault.packs_size()
    again = vault.json("backup", str(src))
    assert again["bytes_read"] == first["bytes_read"]  # the files cache went with the index
    assert again["chunks_new"] == 0 and again["bytes_new"] == 0
    assert vault.packs_size() == packs


def test_backup_without_a_cache_rebuilds_the_index_by_itself(vault: Vault, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(MiB))
    vault.json("backup", str(src))
    shutil.rmtree(vault.cache)
    again = vault.json("backup", str(src))
    assert again["chunks_new"] == 0
