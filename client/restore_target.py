"""The restore target on disk: every folder, file and symlink a restore makes under it.

Each path is reached one component at a time, each folder opened relative to its parent's file
descriptor with O_NOFOLLOW, so no symlink (restored or found there) is ever followed out of the
target, and no catalogue path with `..` or a leading `/` is written at all. Knows nothing of
snapshots, chunks or the repository.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import blake3

from engine.errors import DicomvaultError, UsageError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_PREFIX = ".dvr-"  # + 12 hex digits: short, so any name the file system allows restores


class UnsafePath(DicomvaultError):
    """Refusing to restore outside the target."""


class Overwrite(enum.StrEnum):
    """What restore does with a file or symlink already at a path it restores (restic 0.17's
    `--overwrite`; its default, ALWAYS, makes the target hold exactly the snapshot's bytes)."""

    ALWAYS = "always"
    IF_CHANGED = "if-changed"  # keep one whose size and mtime match the snapshot's
    IF_NEWER = "if-newer"  # replace only with a newer file from the snapshot
    NEVER = "never"

    def allows(self, existing: os.stat_result | None, size: int, mtime_ns: int) -> bool:
        if existing is None or self is Overwrite.ALWAYS:
            return True
        if self is Overwrite.IF_NEWER:
            return mtime_ns > existing.st_mtime_ns
        if self is Overwrite.IF_CHANGED:
            same = existing.st_size == size and existing.st_mtime_ns == mtime_ns
            return not (stat.S_ISREG(existing.st_mode) and same)
        return False


def check_target(root: Path) -> None:
    """The target is a folder, or can be made one: a clear usage error before any work."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"--target {root} is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the --target folder {root}: {e.strerror}") from None


def path_parts(path: str) -> list[str]:
    """A catalogue path's components; a tampered catalogue's `..` or absolute path is refused."""
    if path.startswith("/"):
        raise UnsafePath(f"refusing an absolute path: {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(f"refusing a path with '..': {path!r}")
    return parts


class Target:
    """The folder a restore writes into. The folder itself may be a symlink (the user named it);
    nothing beneath it is ever reached through one."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextlib.contextmanager
    def folder(self, parts: list[str]) -> Iterator[int]:
        """A descriptor of the folder at `parts`, made (with its parents) if missing."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in parts:
                child = _enter(fd, name)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def make_folder(self, parts: list[str]) -> None:
        with self.folder(parts):
            pass

    @contextlib.contextmanager
    def new_file(self, parts: list[str]) -> Iterator[BinaryIO]:
        """Write a file under a short temp name in its folder and rename it into place on a
        clean exit, so an interrupted restore never leaves a half-written file under the name."""
        name = _leaf(parts)
        with self.folder(parts[:-1]) as dir_fd:
            tmp = temp_name(name)
            with contextlib.suppress(FileNotFoundError):  # left by a killed restore
                os.unlink(tmp, dir_fd=dir_fd)
            fd = os.open(tmp, _NEW_FILE, 0o600, dir_fd=dir_fd)
            try:
                with os.fdopen(fd, "wb") as f:
                    yield f
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise

    def existing(self, parts: list[str]) -> os.stat_result | None:
        """What is at `parts` now, not following a symlink there; None if nothing."""
        with self.folder(parts[:-1]) as dir_fd:
            try:
                return os.stat(_leaf(parts), dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None

    def remove_except(self, keep: set[str], under: list[str]) -> list[str]:
        """Remove everything beneath the folder `under` whose path (relative to the target, '/'
        joined) is not in `keep`; folders are removed whole, links never followed. Returns the
        removed paths."""
        removed: list[str] = []
        with self.folder(under) as fd:
            _remove_except(fd, "".join(p + "/" for p in under), keep, removed)
        return removed

    def symlink(self, parts: list[str], target: str) -> None:
        """Make a symlink, replacing a file or symlink there (never a folder)."""
        name = _leaf(parts)
        with self.folder(parts[:-1]) as dir_fd:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
            os.symlink(target, name, dir_fd=dir_fd)

    def set_folder_meta(self, parts: list[str], mode: int, mtime_ns: int) -> None:
        with self.folder(parts) as fd:
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))


def finish_file(f: BinaryIO, mode: int, mtime_ns: int) -> None:
    """Mode and mtime of a file written through `Target.new_file`, after its last byte."""
    f.flush()
    os.fchmod(f.fileno(), mode)
    os.utime(f.fileno(), ns=(mtime_ns, mtime_ns))


def temp_name(name: str) -> str:
    """The temp name a file is written under before its rename: short whatever the name, and
    the same for the same name, so a temp file left by a restore killed mid-file is removed by
    the next restore of that file instead of staying as a stray (it is unlinked, never opened:
    a link planted under that name is not followed)."""
    digest = blake3.blake3(name.encode("utf-8", "surrogateescape")).hexdigest()
    return TEMP_PREFIX + digest[:12]


def _leaf(parts: list[str]) -> str:
    if not parts:
        raise UnsafePath("refusing a file or symlink at the target folder itself")
    return parts[-1]


def _remove_except(dir_fd: int, prefix: str, keep: set[str], removed: list[str]) -> None:
    with os.scandir(dir_fd) as listing:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in listing]
    for name, is_dir in entries:
        path = prefix + name
        if path not in keep:
            if is_dir:
                shutil.rmtree(name, dir_fd=dir_fd)  # fd-based: never follows a link out
            else:
                os.unlink(name, dir_fd=dir_fd)
            removed.append(path)
        elif is_dir:
            child = _enter(dir_fd, name)
            try:
                _remove_except(child, path + "/", keep, removed)
            finally:
                os.close(child)


def _enter(fd: int, name: str) -> int:
    """Open (or make) the folder `name` in `fd`, refusing a symlink or a non-folder there."""
    try:
        try:
            return os.open(name, _DIR, dir_fd=fd)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=fd)
            return os.open(name, _DIR, dir_fd=fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(
                f"refusing to write beneath {name!r}: a symlink or not a folder"
            ) from None
        raise
