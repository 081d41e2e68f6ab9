"""End to end through the CLI: a real DICOM tree restores bit-exact, with modes and mtimes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from client.restore import RestoreSummary
from tests.conftest import BackedUp
from tests.helpers import (
    MiB,
    Vault,
    pydicom_data_files,
    pydicom_test_files,
    restored,
    tree_state,
    write_pattern_file,
)


def test_dicom_tree_restores_bit_exact_with_modes_and_mtimes(
    dicom_backup: BackedUp, tmp_path: Path
) -> None:
    vault, tree = dicom_backup.vault, dicom_backup.tree
    source = tree_state(tree)
    dicom = len(pydicom_test_files()) + len(pydicom_data_files())
    assert dicom > 200
    assert sum(1 for v in source.values() if v[0] == "file") == dicom + 4  # + non-DICOM files
    summary = vault.json("restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_state(restored(tmp_path / "out", tree)) == source
    assert summary["files"] == dicom_backup.summary["files"]
    assert summary["bytes_written"] == dicom_backup.summary["bytes_total"]


def test_backup_summary_counts_the_tree(dicom_backup: BackedUp) -> None:
    s, tree = dicom_backup.summary, dicom_backup.tree
    files = [p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()]
    assert s["files"] == len(files)
    assert s["bytes_total"] == s["bytes_read"] == sum(p.stat().st_size for p in files)
    assert s["errors"] == []
    assert 0 < s["bytes_stored"] < s["bytes_total"]  # compressed, and stored at all


def test_check_read_data_passes_on_a_healthy_repository(dicom_backup: BackedUp) -> None:
    report = dicom_backup.vault.json("check", "--read-data")
    assert report["problems"] == []
    assert report["packs"] >= 1 and report["bytes_verified"] == dicom_backup.vault.packs_size()
    assert report["chunks_referenced"] > 0


def test_ls_lists_every_path_of_the_snapshot(dicom_backup: BackedUp) -> None:
    tree = dicom_backup.tree
    entries = dicom_backup.vault.json("ls", "latest")["entries"]
    listed = {e["path"]: e for e in entries}
    root = str(tree.resolve()).lstrip("/")
    expected = {root, *(f"{root}/{p.relative_to(tree)}" for p in tree.rglob("*"))}
    assert set(listed) == expected
    assert listed[f"{root}/notes/link"]["type"] == "symlink"
    assert listed[f"{root}/notes/link"]["target"] == "a/b/c/readme.txt"
    assert listed[f"{root}/notes/empty"]["size"] == 0
    assert all("chunks" not in e for e in entries)
    text = dicom_backup.vault.ok("ls", "latest").out
    assert f"/{root}/notes/a/b/c/readme.txt" in text


def test_ls_shows_dicom_attributes_for_dicom_files(dicom_backup: BackedUp) -> None:
    entries = dicom_backup.vault.json("ls", "latest")["entries"]
    ct = [e for e in entries if e["path"].endswith("/CT_small.dcm")]
    assert ct and all(e.get("dicom") for e in ct)


def test_snapshots_json_describes_each_snapshot(dicom_backup: BackedUp) -> None:
    rows = dicom_backup.vault.json("snapshots")["snapshots"]
    mine = [r for r in rows if r["id"] == dicom_backup.summary["snapshot"]]
    assert len(mine) == 1
    row = mine[0]
    assert row["paths"] == [str(dicom_backup.tree.resolve())]
    assert row["files"] == dicom_backup.summary["files"]
    assert row["bytes"] == dicom_backup.summary["bytes_total"]
    assert row["time"].endswith("Z")


def test_restore_include_restores_only_the_named_subtree(
    dicom_backup: BackedUp, tmp_path: Path
) -> None:
    tree = dicom_backup.tree
    sub = tree / "notes" / "a"
    out = tmp_path / "out"
    dicom_backup.vault.ok("restore", "latest", "--target", str(out), "--include", str(sub))
    assert tree_state(restored(out, sub)) == tree_state(sub)
    assert not restored(out, tree / "pydicom").exists()
    assert not restored(out, tree / "notes" / "empty").exists()


def test_restore_by_unique_id_prefix(dicom_backup: BackedUp, tmp_path: Path) -> None:
    prefix = dicom_backup.summary["snapshot"][:12]
    out = tmp_path / "out"
    inc = str(dicom_backup.tree / "notes")
    dicom_backup.vault.ok("restore", prefix, "--target", str(out), "--include", inc)
    assert tree_state(restored(out, dicom_backup.tree / "notes")) == tree_state(
        dicom_backup.tree / "notes"
    )


def test_restore_of_a_single_file_backup(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "one.bin"
    path.write_bytes(os.urandom(5000))
    os.utime(path, ns=(1, 1_234_567_890_123_456_789))
    vault.ok("backup", str(path))
    vault.ok("restore", "latest", "--target", str(tmp_path / "out"))
    out = restored(tmp_path / "out", path)
    assert out.read_bytes() == path.read_bytes()
    assert out.stat().st_mtime_ns == 1_234_567_890_123_456_789


def test_names_up_to_255_bytes_restore_bit_exact(vault: Vault, tmp_path: Path) -> None:
    """A temp name longer than the file's own (`.NAME.suffix`) exceeded NAME_MAX from 236 bytes."""
    src = tmp_path / "long"
    src.mkdir()
    names = ["n" * size for size in range(236, 256)] + ["é" * 127 + "x"]  # 255 bytes of UTF-8
    for i, name in enumerate(names):
        (src / name).write_bytes(os.urandom(3000 + i))
    (src / ("d" * 255)).mkdir()
    (src / ("d" * 255) / ("f" * 255)).write_bytes(b"deep")
    vault.ok("backup", str(src))
    result = vault.run("restore", "latest", "--target", str(tmp_path / "out"))
    assert result.rc == 0, result.err
    assert "Task exception was never retrieved" not in result.err
    assert tree_state(restored(tmp_path / "out", src)) == tree_state(src)


@pytest.mark.slow
def test_several_hundred_megabyte_file_restores_bit_exact(vault: Vault, tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.mkdir()
    write_pattern_file(src / "big.bin", 300 * MiB + 12345, seed=7)
    os.chmod(src / "big.bin", 0o640)
    summary = vault.json("backup", str(src))
    assert summary["bytes_read"] == 300 * MiB + 12345
    assert summary["packs"] >= 1
    vault.ok("restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_state(restored(tmp_path / "out", src)) == tree_state(src)


def test_restore_summaries_add_every_count_and_error_but_keep_their_own_name() -> None:
    total = RestoreSummary(snapshot="as of now", files=1, errors=["a: denied"])
    total.add(
        RestoreSummary(
            snapshot="ab12", files=2, dirs=3, bytes_written=4, overwritten=5, kept=6, deleted=7,
            duration_s=0.5, errors=["b: denied"],
        )
    )  # fmt: skip
    assert total == RestoreSummary(
        snapshot="as of now", files=3, dirs=3, bytes_written=4, overwritten=5, kept=6, deleted=7,
        duration_s=0.5, errors=["a: denied", "b: denied"],
    )  # fmt: skip
