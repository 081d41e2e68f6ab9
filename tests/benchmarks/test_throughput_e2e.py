"""`benchmarks.throughput_e2e.sync_tree`: day 1 reaches the backed-up folder as a real day does,
so each tool's change detection (size, mtime, ctime, inode) sees only what changed."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.throughput_e2e import sync_tree


def test_sync_rewrites_only_changed_files_and_removes_the_rest(tmp_path: Path) -> None:
    src, dst = tmp_path / "day1", tmp_path / "tree"
    for root in (src, dst):
        (root / "a").mkdir(parents=True)
        (root / "a" / "same").write_bytes(b"same")
    os.utime(src / "a" / "same", ns=(1, 10**18))
    os.utime(dst / "a" / "same", ns=(1, 10**18))
    (src / "a" / "changed").write_bytes(b"new bytes")
    (dst / "a" / "changed").write_bytes(b"old")
    (dst / "gone").mkdir()
    (dst / "gone" / "file").write_bytes(b"deleted on day 1")
    (src / "b").mkdir()
    (src / "b" / "added").write_bytes(b"added")
    before = (dst / "a" / "same").stat().st_ino
    sync_tree(src, dst)
    assert (dst / "a" / "same").stat().st_ino == before  # untouched
    assert (dst / "a" / "changed").read_bytes() == b"new bytes"
    assert (dst / "b" / "added").read_bytes() == b"added"
    assert not (dst / "gone").exists()
    files = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert files == ["a/changed", "a/same", "b/added"]
