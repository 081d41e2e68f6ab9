"""Per-repository storage on the server: one `Store` per repository, handed out by a `StoreRoot`.

Owns the repository namespace (`repos/NAME/` holding `config`, `keys/*`, `packs/xx/<id>`,
`snapshots/<id>`, the same layout as `engine.backend.LocalBackend`, so a local server repository
folder is also a valid local repository; `quarantine/NAME/` beside it) and the start-up sweep of
uploads that were never published, which each store does itself. Every read and write of a
stored object goes through `Repository.store` or `Repository.quarantine`; nothing here knows
whether the root is a folder or a bucket. Must not hold keys or decide who may do what.
"""

from __future__ import annotations

from engine.clock import SYSTEM, Clock
from engine.errors import RepositoryExists, RepositoryNotFound
from engine.store.base import Store, StoreRoot
from engine.store.local import LocalRoot
from engine.store.s3 import S3Root
from server.auth import validate_repo_name
from server.config import ServerConfig
from server.errors import from_os_error

REPOS = "repos"
QUARANTINE = "quarantine"
SITE = "site"


class Repository:
    def __init__(self, name: str, store: Store, quarantine: Store, shared: bool = False) -> None:
        self.name = name
        self.store = store
        self.quarantine = quarantine  # taken-out objects and their log (server.quarantine)
        self.shared = shared  # other nodes write this store too (server.catchup)


class Repositories:
    def __init__(self, root: StoreRoot) -> None:
        self.root = root
        # Repositories are never removed, so a name seen once stays valid: requests skip the
        # folder check (a HEAD on an object store) after the first.
        self._known: set[str] = set()
        self.site = root.child(SITE)  # server-wide objects: token hashes (server.catchup)

    def _open(self, name: str) -> Repository:
        store, quarantine = (self.root.child(f"{top}/{name}") for top in (REPOS, QUARANTINE))
        return Repository(name, store, quarantine, self.root.shared)

    def get(self, name: str) -> Repository:
        if name not in self._known:
            if not self.root.has_folder(f"{REPOS}/{validate_repo_name(name)}"):
                raise RepositoryNotFound(f"no repository {name!r}")
            self._known.add(name)
        return self._open(name)

    def create(self, name: str) -> Repository:
        if not self.root.make_folder(f"{REPOS}/{validate_repo_name(name)}"):
            raise RepositoryExists(f"repository {name!r} already exists")
        self._known.add(name)
        return self._open(name)

    def ensure(self, name: str) -> Repository:
        """The repository `name`, created if absent (a replica arriving from its primary)."""
        try:
            return self.create(name)
        except RepositoryExists:
            return self.get(name)

    def names(self) -> list[str]:
        return self.root.folders(REPOS)

    async def sweep(self, cutoff: float | None = None) -> int:
        """Forget never-published uploads older than `cutoff` in every repository (all of
        them at start-up); a staged upload is never visible under a real name (invariant 1)."""
        return sum([await self._open(name).store.sweep(cutoff) for name in self.names()])


def open_repositories(config: ServerConfig, clock: Clock = SYSTEM) -> Repositories:
    """The repositories of this server: folders under DATA (the default), or prefixes in an S3
    bucket, checked once here (`StoreError`, exit 14, naming what is wrong: also a bucket
    without the Object Lock that `[object_lock]` asks for)."""
    if config.store is None:
        return Repositories(LocalRoot(config.data_dir, from_os_error))
    from server.objectlock import retention_for  # it imports this module

    root = S3Root(config.store, retention=retention_for(config, clock))
    root.check()
    return Repositories(root)
