"""Adversarial restores: a catalogue that points outside the target, links found or restored at
the target, and files that fail. Restore writes nothing outside its target, reports each refused
or failed entry, restores all the others bit-exact, and exits 20.

Snapshots that no honest backup writes are crafted with the engine's own writers (seal, pack,
commit) into a real repository; restores run through the CLI as a user runs it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from client.repository import Repository, now_rfc3339
from engine import blob
from engine.blob import Content, Hint
from engine.catalogue import Entry, SnapshotBody
from engine.ids import ChunkId
from tests.helpers import PASSPHRASE, Result, Vault, restored, tree_state

pytestmark = pytest.mark.robustness

EXIT_RESTORE_INCOMPLETE = 20
MTIME = 1_700_000_000_123_456_789
PIECE = 4096  # bytes per chunk of a crafted file


def _file(path: str, data: bytes) -> tuple[Entry, bytes]:
    return Entry(path, "file", 0o644, MTIME, len(data)), data


def _link(path: str, target: str) -> tuple[Entry, None]:
    return Entry(path, "symlink", 0o777, MTIME, target=target), None


def _dir(path: str) -> tuple[Entry, None]:
    return Entry(path, "dir", 0o755, MTIME), None


async def craft_snapshot(
    vault: Vault,
    entries: Sequence[tuple[Entry, bytes | None]],
    unstored: frozenset[str] = frozenset(),
) -> None:
    """Commit a snapshot holding exactly `entries` (in this order): each file's data in chunks
    of PIECE bytes, stored unless its path is in `unstored` (missing chunks)."""
    repo = await Repository.open(vault.backend(), PASSPHRASE, vault.cache)
    try:
        refs: list[ChunkId] = []

        def put(data: bytes, content: Content) -> ChunkId:
            cid = repo.key.chunk_id(data)
            if cid not in repo.packer and cid not in repo.index:
                sealed = blob.seal(repo.key, cid, data, Hint(content))
                repo.packer.add(cid, sealed, len(data), content)
            refs.append(cid)
            return cid

        catalogue = b""
        for entry, data in entries:
            for piece in _pieces(data):
                cid = repo.key.chunk_id(piece)
                if entry.path not in unstored:
                    put(piece, Content.DATA)
                entry.chunks.append((cid, len(piece)))
            catalogue += entry.encode()
        tree = [(put(catalogue, Content.TREE), len(catalogue))]
        await repo.packer.flush()
        stats = {"files": len(entries), "dirs": 0, "bytes": 0}
        body = SnapshotBody(now_rfc3339(), "crafted", ["/"], tree, stats)
        await repo.commit(body, None, refs, "crafted")
    finally:
        await repo.close()


def _pieces(data: bytes | None) -> list[bytes]:
    data = data or b""
    return [data[i : i + PIECE] for i in range(0, len(data), PIECE)]


def assert_incomplete(result: Result, *refused: str) -> None:
    """Exit 20, one `error:` line per refused or failed entry, no stray task errors."""
    assert result.rc == EXIT_RESTORE_INCOMPLETE, result.err
    assert "Task exception was never retrieved" not in result.err
    assert "Traceback" not in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(refused), result.err
    for path in refused:
        assert any(line.startswith(f"error: /{path}: ") for line in errors), (path, result.err)
    assert result.err.splitlines()[-1].startswith("dicomvault: restore completed, but")


def _everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


async def test_a_file_beneath_a_restored_symlink_is_refused_not_written_outside(
    vault: Vault, tmp_path: Path
) -> None:
    outside, out = tmp_path / "outside", tmp_path / "out"
    outside.mkdir()
    await craft_snapshot(
        vault,
        [
            _dir("t"),
            _link("t/link", str(outside)),
            _file("t/link/file", b"escaped"),
            _file("t/link/sub/deeper", b"escaped too"),
            _file("t/kept", b"kept"),
        ],
    )
    result = vault.run("restore", "latest", "--target", str(out), "--json")
    assert_incomplete(result, "t/link/file", "t/link/sub/deeper")
    assert _everything_under(outside) == []
    assert os.readlink(out / "t" / "link") == str(outside)
    assert (out / "t" / "kept").read_bytes() == b"kept"
    doc = result.doc
    assert doc["files"] == 1 and len(doc["errors"]) == 2
    assert all("symlink" in e for e in doc["errors"])


async def test_a_symlink_listed_after_the_files_beneath_it_is_refused(
    vault: Vault, tmp_path: Path
) -> None:
    """An unsorted (hand-made) catalogue: the folder is made for the file first, so the link
    that comes later cannot take its place, and nothing is written through it."""
    outside, out = tmp_path / "outside", tmp_path / "out"
    outside.mkdir()
    await craft_snapshot(vault, [_file("link/file", b"inside"), _link("link", str(outside))])
    result = vault.run("restore", "latest", "--target", str(out))
    assert_incomplete(result, "link")
    assert _everything_under(outside) == []
    assert (out / "link" / "file").read_bytes() == b"inside"


def test_a_symlink_found_at_the_target_is_not_followed(vault: Vault, tmp_path: Path) -> None:
    """A real backup of `tree/link/file`; at the target, `link` is already a symlink out."""
    tree, outside, out = tmp_path / "tree", tmp_path / "outside", tmp_path / "out"
    (tree / "link").mkdir(parents=True)
    (tree / "link" / "file").write_bytes(b"secret")
    (tree / "other").write_bytes(b"other")
    outside.mkdir()
    vault.ok("backup", str(tree))
    restored(out, tree).mkdir(parents=True)
    restored(out, tree / "link").symlink_to(outside)
    result = vault.run("restore", "latest", "--target", str(out))
    rel = str(tree.resolve()).lstrip("/")
    assert_incomplete(result, f"{rel}/link", f"{rel}/link/file")
    assert _everything_under(outside) == []
    assert restored(out, tree / "other").read_bytes() == b"other"


@pytest.mark.parametrize(
    "bad",
    ["../escape", "a/../../escape", "/abs/escape", "./../escape"],
)
async def test_catalogue_paths_leaving_the_target_are_refused(
    vault: Vault, tmp_path: Path, bad: str
) -> None:
    out = tmp_path / "deep" / "out"
    await craft_snapshot(vault, [_file(bad, b"escaped"), _file("ok/file", b"ok")])
    result = vault.run("restore", "latest", "--target", str(out))
    assert_incomplete(result, bad.lstrip("/"))
    assert _everything_under(tmp_path / "deep") == ["out", "out/ok", "out/ok/file"]
    assert not Path("/abs").exists()
    assert (out / "ok" / "file").read_bytes() == b"ok"


async def test_a_missing_chunk_fails_one_file_and_every_other_file_restores(
    vault: Vault, tmp_path: Path
) -> None:
    files = [_file(f"d/f{i:03}", os.urandom(1000 + i)) for i in range(40)]
    await craft_snapshot(vault, files, unstored=frozenset({"d/f007"}))
    out = tmp_path / "out"
    result = vault.run("restore", "latest", "--target", str(out), "--json")
    assert_incomplete(result, "d/f007")
    for entry, data in files:
        if entry.path != "d/f007":
            assert (out / entry.path).read_bytes() == data
            assert (out / entry.path).stat().st_mtime_ns == MTIME
    assert not (out / "d/f007").exists()
    assert sorted(os.listdir(out / "d")) == [e.path[2:] for e, _ in files if e.path != "d/f007"]
    assert result.doc["files"] == 39


async def test_a_file_whose_chunks_are_all_missing_leaves_no_task_unretrieved(
    vault: Vault, tmp_path: Path
) -> None:
    """Several chunk reads of one file in flight fail together: each failure is collected."""
    lost = _file("lost", os.urandom(PIECE * 6))
    await craft_snapshot(vault, [lost, _file("kept", b"kept")], unstored=frozenset({"lost"}))
    result = vault.run("restore", "latest", "--target", str(tmp_path / "out"))
    assert_incomplete(result, "lost")
    assert _everything_under(tmp_path / "out") == ["kept"]


def test_a_folder_in_the_way_fails_that_file_and_the_rest_restore(
    vault: Vault, tmp_path: Path
) -> None:
    tree, out = tmp_path / "tree", tmp_path / "out"
    tree.mkdir()
    for i in range(30):
        (tree / f"f{i:02}").write_bytes(os.urandom(2000 + i))
    vault.ok("backup", str(tree))
    (restored(out, tree) / "f13" / "x").mkdir(parents=True)  # not replaceable by a file
    result = vault.run("restore", "latest", "--target", str(out))
    rel = str(tree.resolve()).lstrip("/")
    assert_incomplete(result, f"{rel}/f13")
    state, source = tree_state(restored(out, tree)), tree_state(tree)
    for name, want in source.items():
        if name not in (".", "f13"):
            assert state[name] == want, name


async def test_study_restore_never_uses_a_uid_or_catalogue_value_as_a_path(
    vault: Vault, tmp_path: Path
) -> None:
    out = tmp_path / "deep" / "out"
    evil = "../../etc/x"
    study = {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": evil, "SOPInstanceUID": evil}
    bad, good = _file(evil, b"escaped"), _file("s/ok.dcm", b"ok")
    bad[0].dicom = good[0].dicom = study
    await craft_snapshot(vault, [bad, good])
    result = vault.run("restore", "--study", "1.2.3", "--target", str(out))
    assert_incomplete(result, evil)
    assert _everything_under(tmp_path / "deep") == ["out", "out/s", "out/s/ok.dcm"]
