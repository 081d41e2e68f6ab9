"""Per-repository storage on the server: an engine `LocalStore` at DATA/repos/NAME/.

Owns repository folders, their layout (`config`, `keys/*`, `packs/xx/<id>`, `snapshots/<id>`, the
same as `engine.backend.LocalBackend`, so a server repository folder is also a valid local
repository) and sweeping the temp files of uploads that were never published. Every read and
write of a stored object goes through `Repository.store`; `object_path` is left only for
quarantine's move (tests/server/test_storage_contract.py keeps that list). Must not hold keys or
decide who may do what.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from engine.errors import RepositoryExists, RepositoryNotFound
from engine.store.base import validate_name
from engine.store.local import INCOMING, TMP_PREFIX, LocalStore, fsync_dir
from server.auth import validate_repo_name
from server.errors import from_os_error


class Repository:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.store = LocalStore(root, from_os_error)

    @property
    def incoming(self) -> Path:
        return self.root / INCOMING

    def object_path(self, name: str) -> Path:
        return self.root / validate_name(name)  # same names, same layout as LocalStore


class Repositories:
    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, name: str) -> Repository:
        path = self.root / validate_repo_name(name)
        if not path.is_dir():
            raise RepositoryNotFound(f"no repository {name!r}")
        return Repository(name, path)

    def create(self, name: str) -> Repository:
        path = self.root / validate_repo_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            raise RepositoryExists(f"repository {name!r} already exists") from None
        (path / INCOMING).mkdir()
        fsync_dir(self.root)
        return Repository(name, path)

    def ensure(self, name: str) -> Repository:
        """The repository `name`, created if absent (a replica arriving from its primary)."""
        try:
            return self.create(name)
        except RepositoryExists:
            return self.get(name)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name[0] != ".")

    def sweep_temp_files(self, cutoff: float | None = None) -> int:
        """Remove upload and store temp files last changed before `cutoff` (epoch seconds);
        all of them at start-up (`cutoff=None`).

        A temp file is never visible under a real name (invariant 1), so deleting it only
        forgets an upload that was never acknowledged. Only folders that receive temp files are
        scanned: packs arrive by link from `.incoming/`, so the (huge) `packs/` tree is skipped.
        """
        removed = 0
        for name in self.names():
            root = self.root / name
            for folder in (root / INCOMING, root, root / "keys", root / "snapshots"):
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    for entry in os.scandir(folder):
                        if entry.name.startswith(TMP_PREFIX) and entry.is_file():
                            removed += _remove_if_old(Path(entry.path), cutoff)
        return removed


def _remove_if_old(path: Path, cutoff: float | None) -> int:
    with contextlib.suppress(FileNotFoundError):
        if cutoff is None or path.stat().st_mtime < cutoff:
            path.unlink()
            return 1
    return 0
