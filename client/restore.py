"""Restore: read a snapshot's catalogue and write its files back, bit-exact, with mode and mtime.

Chunks are fetched with bounded concurrency (several range reads in flight, decrypted in
threads); writing under the target, safely, is `client.restore_target`'s. One entry that cannot be
restored is reported and never stops the others. Does not know where the repository lives.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from client.repository import Repository
from client.restore_target import Overwrite, Target, UnsafePath, finish_file, path_parts
from engine.catalogue import Entry, SnapshotBody, parse_lines
from engine.errors import DicomvaultError
from engine.ids import ChunkId, SnapshotId

FETCH_CONCURRENCY = 4  # chunk reads in flight per file
FILES_IN_FLIGHT = 8  # files restored at once
WINDOW_BYTES = 16 * 1024 * 1024  # decoded bytes fetched, decoding or waiting to be written


@dataclass
class RestoreSummary:
    snapshot: str = ""
    files: int = 0
    dirs: int = 0
    bytes_written: int = 0
    overwritten: int = 0  # files and symlinks that replaced one already in the target
    kept: int = 0  # existing ones left as they were (--overwrite)
    deleted: int = 0  # files and folders removed as not in the snapshot (--delete)
    duration_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def add(self, other: RestoreSummary) -> None:
        """Count `other`'s work into this one (an as-of restore runs one restore per snapshot)."""
        for f in fields(self):
            if f.name != "snapshot":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


async def catalogue(repo: Repository, body: SnapshotBody) -> AsyncIterator[Entry]:
    """Stream a snapshot's catalogue entries, one tree chunk in memory at a time."""
    carry = b""
    for chunk_id, _ in body.tree:
        data = carry + await repo.read_chunk(chunk_id)
        lines = data.split(b"\n")
        carry = lines.pop()
        for entry in parse_lines(iter(lines)):
            yield entry
    for entry in parse_lines(iter([carry])):
        yield entry


def matches(entry: Entry, includes: list[str]) -> bool:
    if not includes:
        return True
    return any(entry.path == p or entry.path.startswith(p + "/") for p in includes)


def normalise_include(path: str) -> str:
    return os.path.normpath(os.path.abspath(path) if path.startswith("/") else "/" + path)[1:]


class ByteWindow:
    """A budget of decoded bytes shared by every file being restored: a chunk is fetched only
    once its length fits, and its bytes are given back once written. A chunk larger than the
    whole window takes all of it, alone. Peak memory is this window plus the decoders' working
    copies, whatever the number of files or the size of their chunks."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self.peak = limit, 0, 0
        self._freed = asyncio.Event()

    def try_take(self, n: int) -> int | None:
        """Take `n` bytes (at most the whole window) if they fit now; return what was taken."""
        n = min(n, self.limit)
        if self.used + n > self.limit:
            return None
        self.used += n
        self.peak = max(self.peak, self.used)
        return n

    async def take(self, n: int) -> int:
        while (taken := self.try_take(n)) is None:
            self._freed.clear()
            await self._freed.wait()
        return taken

    def give(self, n: int) -> None:
        self.used -= n
        self._freed.set()


class RestoreIncomplete(DicomvaultError):
    """Restore completed, but some files were not restored."""

    exit_code = 20


class Restorer:
    """Restore a snapshot's entries under `target`. An entry that cannot be restored (a missing
    chunk, a name in the way, a path that would leave the target) is reported in
    `summary.errors` and the rest are restored; symlinks are made last, and nothing beneath a
    symlink of the snapshot is restored (the guarantee tar and restic give)."""

    def __init__(
        self,
        repo: Repository,
        target: Path,
        *,
        includes: list[str] | None = None,
        select: Callable[[Entry], bool] | None = None,
        progress: Callable[[RestoreSummary, str], None] | None = None,
        overwrite: Overwrite = Overwrite.ALWAYS,
        delete: bool = False,
    ) -> None:
        self.repo, self.target = repo, Target(target)
        self.includes = [normalise_include(p) for p in includes or []]
        self.select = select or (lambda e: True)
        self.partial = bool(self.includes) or select is not None  # not the whole snapshot
        self.progress = progress or (lambda s, p: None)
        self.summary = RestoreSummary()
        self._writing: set[asyncio.Task[None]] = set()
        self._dirs: list[Entry] = []
        self._links: list[Entry] = []
        self._link_paths: set[tuple[str, ...]] = set()
        self.overwrite = overwrite
        self._keep: set[str] | None = set() if delete else None  # paths the snapshot holds
        self.window = ByteWindow(WINDOW_BYTES)

    async def run(self, snapshot_id: SnapshotId) -> RestoreSummary:
        start = time.monotonic()
        _, body = await self.repo.load_snapshot(snapshot_id)
        self.summary.snapshot = snapshot_id.hex()
        try:
            async for entry in catalogue(self.repo, body):
                if self._wanted(entry):
                    await self._entry(entry)
                    self.progress(self.summary, entry.path)
            await asyncio.gather(*self._writing)
        finally:
            await self._stop_files()
        for entry in self._links:  # last, so no file is ever written through one
            self._guarded(entry, self._symlink)
        if self._keep is not None:
            self._delete_extra(self._keep)
        for entry in reversed(self._dirs):  # after their contents, or writing changes the mtime
            self._guarded(entry, self._folder_meta)
        self.summary.duration_s = round(time.monotonic() - start, 3)
        return self.summary

    async def planned(self, snapshot_id: SnapshotId) -> tuple[int, int]:
        """The files and bytes this restore selects (before `overwrite` keeps any), by one pass
        over the catalogue: the totals a progress display needs for a partial restore."""
        _, body = await self.repo.load_snapshot(snapshot_id)
        files = size = 0
        async for entry in catalogue(self.repo, body):
            if entry.type == "file" and self._wanted(entry):
                files, size = files + 1, size + entry.size
        return files, size

    def _wanted(self, entry: Entry) -> bool:
        return matches(entry, self.includes) and self.select(entry)

    async def _entry(self, entry: Entry) -> None:
        try:
            parts = path_parts(entry.path)
            self._refuse_beneath_link(parts)
        except UnsafePath as e:
            self._failed(entry, e)
            return
        if self._keep is not None:  # with its parents: a snapshot of /srv/pacs holds no /srv
            self._keep.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
        if entry.type == "dir":
            if self._guarded(entry, lambda e: self.target.make_folder(parts)):
                self._dirs.append(entry)
                self.summary.dirs += 1
        elif entry.type == "symlink":
            self._links.append(entry)
            self._link_paths.add(tuple(parts))
        else:
            await self._start_file(entry, parts)

    def _refuse_beneath_link(self, parts: list[str]) -> None:
        for depth in range(1, len(parts)):
            if tuple(parts[:depth]) in self._link_paths:
                link = "/".join(parts[:depth])
                raise UnsafePath(f"refusing to restore beneath the symlink /{link}")

    def _symlink(self, entry: Entry) -> None:
        parts = path_parts(entry.path)
        if self._may_replace(parts, entry):
            self.target.symlink(parts, entry.target or "")

    def _may_replace(self, parts: list[str], entry: Entry) -> bool:
        """Whether to write `entry` over what is there now; counts what it replaces or keeps."""
        existing = self.target.existing(parts)
        if not self.overwrite.allows(existing, entry.size, entry.mtime_ns):
            self.summary.kept += 1
            return False
        self.summary.overwritten += existing is not None
        return True

    def _delete_extra(self, keep: set[str]) -> None:
        for root in self.includes or [""]:
            parts = path_parts(root)
            if parts and not _is_folder(self.target.existing(parts)):
                continue  # an included file, or nothing there: nothing beneath it to remove
            try:
                self.summary.deleted += len(self.target.remove_except(keep, parts))
            except (OSError, DicomvaultError) as e:
                self.summary.errors.append(f"/{root}: not cleaned (--delete): {describe(e)}")

    def _folder_meta(self, entry: Entry) -> None:
        self.target.set_folder_meta(path_parts(entry.path), entry.mode, entry.mtime_ns)

    def _guarded(self, entry: Entry, step: Callable[[Entry], object]) -> bool:
        try:
            step(entry)
        except (OSError, DicomvaultError) as e:
            self._failed(entry, e)
            return False
        return True

    def _failed(self, entry: Entry, error: BaseException) -> None:
        self.summary.errors.append(f"/{entry.path.lstrip('/')}: {describe(error)}")

    async def _start_file(self, entry: Entry, parts: list[str]) -> None:
        """Restore files concurrently (most DICOM files are one or two chunks, so a window
        within one file would leave the decode threads idle)."""
        while len(self._writing) >= FILES_IN_FLIGHT:
            done, self._writing = await asyncio.wait(
                self._writing, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                task.result()  # only a cancellation: `_file` reports its own failures
        self._writing.add(asyncio.create_task(self._file(entry, parts)))

    async def _stop_files(self) -> None:
        """On a failure elsewhere, cancel the files in flight and collect every outcome."""
        for task in self._writing:
            task.cancel()
        await asyncio.gather(*self._writing, return_exceptions=True)
        self._writing = set()

    async def _file(self, entry: Entry, parts: list[str]) -> None:
        try:
            if not self._may_replace(parts, entry):
                return
            with self.target.new_file(parts) as f:
                async for data in self.read_file(entry.chunks):
                    f.write(data)
                    del data  # outside the window once the next chunk is asked for
                finish_file(f, entry.mode, entry.mtime_ns)
        except Exception as e:  # one file fails alone; the others are still restored
            self._failed(entry, e)
            return
        self.summary.files += 1
        self.summary.bytes_written += entry.size
        self.progress(self.summary, entry.path)

    async def read_file(
        self, chunks: list[tuple[ChunkId, int]]
    ) -> AsyncIterator[bytes | bytearray]:
        """Yield a file's chunks in order, with up to FETCH_CONCURRENCY reads in flight, each
        holding its length in the shared `window` until the caller comes back for the next.
        The caller must drop a chunk before asking for the next (`del data` in its loop): its
        bytes are given back to the window then, so a chunk still held would be outside it.

        Never waits for the window while holding a fetched chunk of its own: it hands that
        chunk on first, so files cannot hold the whole window between them and wait forever."""
        window: deque[tuple[asyncio.Task[bytes | bytearray], int]] = deque()
        held = 0  # window bytes of the chunk the caller is writing now
        try:
            for chunk_id, length in chunks:
                while (taken := self.window.try_take(length)) is None and window:
                    held = window[0][1]
                    yield await _first(window)
                    self.window.give(held)
                    held = 0
                if taken is None:
                    taken = await self.window.take(length)
                window.append((asyncio.create_task(self.repo.read_chunk(chunk_id)), taken))
                if len(window) >= FETCH_CONCURRENCY:
                    held = window[0][1]
                    yield await _first(window)
                    self.window.give(held)
                    held = 0
            while window:
                held = window[0][1]
                yield await _first(window)
                self.window.give(held)
                held = 0
        finally:
            self.window.give(held)
            for task, size in window:
                self.window.give(size)
                task.cancel()
                task.add_done_callback(_retrieve)


async def _first(window: deque[tuple[asyncio.Task[bytes | bytearray], int]]) -> bytes | bytearray:
    """The oldest read's chunk, with the read taken out of `window`: once handed on, the chunk
    is referenced only by whoever writes it (a finished task would keep its result alive)."""
    task, _ = window.popleft()
    return await task


def _is_folder(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISDIR(st.st_mode)


def _retrieve(task: asyncio.Task[bytes | bytearray]) -> None:
    """A read left behind may already have failed: take its error, as nobody awaits it."""
    if not task.cancelled():
        task.exception()


def describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, DicomvaultError):
        return str(error)
    return f"{type(error).__name__}: {error}"
