"""Local-filesystem `Store`: one file per object under a root folder.

Durability order for `put` (DESIGN invariant 1): write a temp file, fsync it, hard-link it to its
final name (which fails rather than overwrites, so objects stay write-once), fsync the folder.
A crash leaves at most a stray `.tmp-*` file, never a partial object under a real name; `sweep`
removes those. `LocalRoot` hands out one `LocalStore` per sub-folder (the server's repositories).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import functools
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from engine.errors import ObjectNotFound, StoreError
from engine.store.base import ObjectStat, Staged, Store, StoreRoot, Verify, validate_name

T = TypeVar("T")
TMP_PREFIX = ".tmp-"
INCOMING = ".incoming"  # where `put_stream` stages objects; a dot-folder, so never listed


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_durably(tmp: Path, final: Path) -> bool:
    """Publish an fsynced temp file under `final`; return False if it already existed.

    A hard link fails rather than overwrites, so objects stay write-once; the folder is fsynced
    (and its parent, when the folder is new) before returning, so an acknowledged object survives
    a crash and a partial one never appears under a real name. The temp name is always removed.
    """
    if not final.parent.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        fsync_dir(final.parent.parent)
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(final.parent)
    return True


def write_durably(path: Path, data: bytes | memoryview, mtime: float | None = None) -> bool:
    """Atomically create `path` with `data` (and `mtime`, if given, set before it is visible);
    return False if it already existed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{secrets.token_hex(8)}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if mtime is not None:
            os.utime(f.fileno(), (mtime, mtime))
        os.fsync(f.fileno())
    return link_durably(tmp, path)


def read_range(path: Path, offset: int, length: int) -> bytes:
    """At most `length` bytes of `path` from `offset`; fewer past the end."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def store_error(e: OSError, name: str) -> StoreError:
    """The default meaning of an `OSError` while touching object `name`."""
    if e.errno == errno.ENOSPC:
        return StoreError(f"storage full while writing {name}")
    return StoreError(f"{name}: {e.strerror or e}")


class _StagedFile(Staged):
    """A temp file in the staging folder; its name is removed by publishing or discarding."""

    def __init__(self, folder: Path) -> None:
        # mkdir: a folder copied in from elsewhere may have no staging folder yet.
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        self.file = open(self.path, "xb")  # noqa: SIM115 - closed in seal/discard
        self.size = 0

    def seal(self, mtime: float | None) -> None:
        self.file.flush()
        if mtime is not None:
            os.utime(self.file.fileno(), (mtime, mtime))
        os.fsync(self.file.fileno())
        self.size = os.fstat(self.file.fileno()).st_size
        self.file.close()

    async def read_range(self, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(read_range, self.path, offset, length)

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class LocalStore(Store):
    """`errors` turns an `OSError` into the `StoreError` to raise; the server passes its own
    (full disk 507, out of descriptors 503)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        errors: Callable[[OSError, str], StoreError] = store_error,
    ) -> None:
        self.root = Path(root)
        self.errors = errors

    def _path(self, name: str) -> Path:
        return self.root / validate_name(name)

    async def _run(self, name: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except FileNotFoundError:
            raise ObjectNotFound(f"object not found: {name}") from None
        except OSError as e:
            raise self.errors(e, name) from None

    async def put(self, name: str, data: bytes | memoryview, *, mtime: float | None = None) -> bool:
        path = self._path(name)
        return await self._run(name, lambda: write_durably(path, data, mtime))

    async def put_stream(
        self,
        name: str,
        pieces: AsyncIterable[bytes],
        verify: Verify | None = None,
        *,
        mtime: float | None = None,
    ) -> bool:
        """Stage in `.incoming/` (write, fsync), verify, then link into place like `put`.

        A piece is written in a worker thread while the next one is awaited, so receiving and
        writing overlap; one write is in flight at a time, so at most two pieces are held.
        """
        final = self._path(name)
        staged = await self._run(name, lambda: _StagedFile(self.root / INCOMING))
        writing: asyncio.Future[int] | None = None
        try:
            async for piece in pieces:
                if writing is not None:
                    await writing
                write = functools.partial(staged.file.write, piece)
                writing = asyncio.ensure_future(self._run(name, write))
            if writing is not None:
                await writing
            await self._run(name, lambda: staged.seal(mtime))
            if verify is not None:
                await verify(staged)
            return await self._run(name, lambda: link_durably(staged.path, final))
        finally:
            await _settled(writing)
            await asyncio.to_thread(staged.discard)

    async def get(self, name: str) -> bytes:
        return await self._run(name, self._path(name).read_bytes)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        return await self._run(
            name, functools.partial(read_range, self._path(name), offset, length)
        )

    async def stat(self, name: str) -> ObjectStat:
        path = self._path(name)

        def stat() -> ObjectStat:
            st = path.stat()
            return ObjectStat(st.st_size, st.st_mtime)

        return await self._run(name, stat)

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[str]:
        # Validated like a name, so a prefix such as ".." cannot list outside the root.
        base = self.root / validate_name(prefix) if prefix else self.root
        names = await asyncio.to_thread(self._walk, base)
        for name in sorted(names):
            if start_after is None or name > start_after:
                yield name

    def _walk(self, base: Path) -> builtins.list[str]:  # `list` here is the method
        out: builtins.list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root)
            for f in filenames:
                if not f.startswith("."):
                    out.append(str(rel / f) if str(rel) != "." else f)
        return out

    async def delete(self, name: str) -> None:
        path = self._path(name)

        def unlink() -> None:
            path.unlink()
            fsync_dir(path.parent)

        await self._run(name, unlink)

    async def move(
        self, name: str, dest: Store, dest_name: str, *, mtime: float | None = None
    ) -> bool:
        """Between two local stores on one filesystem: a hard link, then an unlink."""
        if not isinstance(dest, LocalStore):
            return await super().move(name, dest, dest_name, mtime=mtime)
        src, final = self._path(name), dest._path(dest_name)
        moved = await self._run(name, lambda: _relink(src, final, mtime))
        if moved is None:
            return await super().move(name, dest, dest_name, mtime=mtime)
        return moved

    async def sweep(self, cutoff: float | None = None) -> int:
        """Remove `.tmp-*` files in `.incoming/`, the root and its first-level folders.

        Deeper folders are skipped: `put` stages beside the final name, and the only deep
        objects (packs) arrive by `put_stream`, staged in `.incoming/`.
        """
        return await asyncio.to_thread(self._sweep, cutoff)

    def _sweep(self, cutoff: float | None) -> int:
        folders = [self.root / INCOMING, self.root]
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            folders += [Path(e.path) for e in os.scandir(self.root) if _is_plain_dir(e)]
        return sum(_remove_old_temp_files(folder, cutoff) for folder in folders)


async def _settled(task: asyncio.Future[T] | None) -> None:
    """Wait for `task` to end without raising: the staged file is closed only after its last
    write, and an error already on its way out is not replaced by the write's."""
    if task is not None:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as lost


def _relink(src: Path, final: Path, mtime: float | None) -> bool | None:
    """Link `src` to `final` and unlink it; None when they lie on different filesystems. The
    new time is set before the link (one inode), so `final` never shows the old one."""
    if not final.parent.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        fsync_dir(final.parent.parent)
    if mtime is not None and not final.exists():
        os.utime(src, (mtime, mtime))
    try:
        os.link(src, final)
    except FileExistsError:
        if not src.exists():
            raise FileNotFoundError(src) from None
        return False
    except OSError as e:
        if e.errno == errno.EXDEV:
            return None
        raise
    fsync_dir(final.parent)
    src.unlink()
    fsync_dir(src.parent)
    return True


def _is_plain_dir(entry: os.DirEntry[str]) -> bool:
    return entry.is_dir() and not entry.name.startswith(".")


def _remove_old_temp_files(folder: Path, cutoff: float | None) -> int:
    removed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder):
            if entry.name.startswith(TMP_PREFIX) and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    if cutoff is None or entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
    return removed


class LocalRoot(StoreRoot):
    """Folders under `root`, each a `LocalStore` with its own `.incoming/` staging folder."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        errors: Callable[[OSError, str], StoreError] = store_error,
    ) -> None:
        self.root = Path(root)
        self.errors = errors

    def path(self, prefix: str) -> Path:
        return self.root / validate_name(prefix)

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self.path(prefix), self.errors)

    def folders(self, prefix: str) -> builtins.list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and p.name[0] != ".")

    def make_folder(self, prefix: str) -> bool:
        path = self.path(prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            return False
        (path / INCOMING).mkdir()
        fsync_dir(path.parent)
        return True

    def has_folder(self, prefix: str) -> bool:
        return self.path(prefix).is_dir()

    def describe(self) -> str:
        return str(self.root)
