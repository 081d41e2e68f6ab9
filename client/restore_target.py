"""The restore target on disk: every folder, file and symlink a restore makes under it.

Each path is reached one component at a time, each folder opened relative to its parent's file
descriptor with O_NOFOLLOW, so no symlink (restored or found there) is ever followed out of the
target, and no catalogue path with `..` or a leading `/` is written at all. Knows nothing of
snapshots, chunks or the repository.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from engine.errors import DicomvaultError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_PREFIX = ".dvr-"  # + 12 hex digits: short, so any name the file system allows restores


class UnsafePath(DicomvaultError):
    """Refusing to restore outside the target."""


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
            tmp = TEMP_PREFIX + secrets.token_hex(6)
            fd = os.open(tmp, _NEW_FILE, 0o600, dir_fd=dir_fd)
            try:
                with os.fdopen(fd, "wb") as f:
                    yield f
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise

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


def _leaf(parts: list[str]) -> str:
    if not parts:
        raise UnsafePath("refusing a file or symlink at the target folder itself")
    return parts[-1]


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
