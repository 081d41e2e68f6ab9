"""Restoring into a folder that already holds files: restic 0.17's `--overwrite` and `--delete`,
each reported (never silent), and a clear usage error for a target that cannot be a folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import Vault, assert_one_line_error, restored

MTIME_NS = 1_600_000_000_000_000_000


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> tuple[Vault, Path]:
    vault = Vault(tmp_path_factory.mktemp("existing") / "vault").init()
    src = vault.root / "src"
    (src / "sub").mkdir(parents=True)
    for name, text in (("a.txt", "alpha\n"), ("b.txt", "beta\n"), ("sub/c.txt", "gamma\n")):
        (src / name).write_text(text)
        os.utime(src / name, ns=(MTIME_NS, MTIME_NS))
    vault.ok("backup", str(src))
    return vault, src


def restore(vault: Vault, target: Path, *args: str) -> dict[str, int]:
    doc: dict[str, int] = vault.json("restore", "latest", "--target", str(target), *args)
    return doc


def lived_in(vault: Vault, src: Path, target: Path) -> Path:
    """A restored tree someone kept using: a.txt edited, a stray file and a stray folder."""
    restore(vault, target)
    tree = restored(target, src)
    (tree / "a.txt").write_text("edited after the backup\n")
    (tree / "stray.txt").write_text("not in the snapshot\n")
    (tree / "sub" / "extra").mkdir()
    (tree / "sub" / "extra" / "d.txt").write_text("nor this\n")
    return tree


def test_default_always_replaces_every_existing_file_and_says_so(
    backed_up: tuple[Vault, Path], tmp_path: Path
) -> None:
    vault, src = backed_up
    tree = lived_in(vault, src, tmp_path)
    doc = restore(vault, tmp_path)
    assert (tree / "a.txt").read_text() == "alpha\n"
    assert (doc["files"], doc["overwritten"], doc["kept"], doc["deleted"]) == (3, 3, 0, 0)
    assert (tree / "stray.txt").exists()  # no --delete: strays stay
    text = vault.ok("restore", "latest", "--target", str(tmp_path)).out
    assert "(replaced 3 existing)" in text


@pytest.mark.parametrize(
    ("policy", "a_text", "written", "kept"),
    [
        ("if-changed", "alpha\n", 1, 2),  # b and c match in size and mtime: kept
        ("if-newer", "edited after the backup\n", 0, 3),  # the edit is newer than the snapshot
        ("never", "edited after the backup\n", 0, 3),
    ],
)
def test_overwrite_policies(
    backed_up: tuple[Vault, Path],
    tmp_path: Path,
    policy: str,
    a_text: str,
    written: int,
    kept: int,
) -> None:
    vault, src = backed_up
    tree = lived_in(vault, src, tmp_path)
    doc = restore(vault, tmp_path, "--overwrite", policy)
    assert (tree / "a.txt").read_text() == a_text
    assert (doc["files"], doc["overwritten"], doc["kept"]) == (written, written, kept)


def test_if_newer_replaces_a_file_older_than_the_snapshot(
    backed_up: tuple[Vault, Path], tmp_path: Path
) -> None:
    vault, src = backed_up
    tree = lived_in(vault, src, tmp_path)
    os.utime(tree / "a.txt", ns=(MTIME_NS - 10**9, MTIME_NS - 10**9))
    doc = restore(vault, tmp_path, "--overwrite", "if-newer")
    assert (tree / "a.txt").read_text() == "alpha\n" and doc["overwritten"] == 1


def test_delete_removes_what_the_snapshot_does_not_hold_and_nothing_outside(
    backed_up: tuple[Vault, Path], tmp_path: Path
) -> None:
    vault, src = backed_up
    target, outside = tmp_path / "target", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("outside the target\n")
    tree = lived_in(vault, src, target)
    (tree / "sub" / "link").symlink_to(outside)  # a stray link to a folder outside
    doc = restore(vault, target, "--delete")
    assert doc["deleted"] == 3  # stray.txt, sub/extra (whole), sub/link (the link only)
    assert sorted(p.name for p in tree.rglob("*")) == ["a.txt", "b.txt", "c.txt", "sub"]
    assert (outside / "keep.txt").read_text() == "outside the target\n"
    assert (tree / "a.txt").read_text() == "alpha\n"


def test_delete_with_include_cleans_only_the_included_path(
    backed_up: tuple[Vault, Path], tmp_path: Path
) -> None:
    vault, src = backed_up
    tree = lived_in(vault, src, tmp_path)
    doc = restore(vault, tmp_path, "--delete", "--include", str(src / "sub"))
    assert doc["deleted"] == 1 and not (tree / "sub" / "extra").exists()
    assert (tree / "stray.txt").exists()


def test_a_target_that_is_a_file_is_a_usage_error(
    backed_up: tuple[Vault, Path], tmp_path: Path
) -> None:
    vault, _ = backed_up
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = vault.run("restore", "latest", "--target", str(afile))
    assert_one_line_error(result, 2, "is a file, not a folder")
    result = vault.run("restore", "latest", "--target", str(afile / "below"))
    assert_one_line_error(result, 2, "cannot create the --target folder")


def test_delete_is_refused_for_a_study_restore(
    backed_up: tuple[Vault, Path], tmp_path: Path
) -> None:
    vault, _ = backed_up
    result = vault.run("restore", "--study", "1.2.3", "--delete", "--target", str(tmp_path))
    assert_one_line_error(result, 2, "--delete")
