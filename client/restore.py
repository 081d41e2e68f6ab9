"""Restore: read a snapshot's catalogue and write its files back, bit-exact, with mode and mtime.

Chunks are fetched with bounded concurrency (several range reads in flight, decrypted in
threads); each file is written to a temp name and renamed into place, so an interrupted restore
never leaves a half-written file under the real name. Does not know where the repository lives.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.repository import Repository
from engine.catalogue import Entry, SnapshotBody, parse_lines
from engine.errors import UsageError
from engine.ids import ChunkId, SnapshotId

FETCH_CONCURRENCY = 4  # chunk reads in flight per file
FILES_IN_FLIGHT = 8  # files restored at once


@dataclass
class RestoreSummary:
    snapshot: str = ""
    files: int = 0
    dirs: int = 0
    bytes_written: int = 0
    duration_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


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


def safe_target(target: Path, rel: str) -> Path:
    if ".." in Path(rel).parts or Path(rel).is_absolute():
        raise UsageError(f"refusing to restore outside the target: {rel!r}")
    return target / rel


class Restorer:
    def __init__(
        self,
        repo: Repository,
        target: Path,
        *,
        includes: list[str] | None = None,
        select: Callable[[Entry], bool] | None = None,
        progress: Callable[[RestoreSummary, str], None] | None = None,
    ) -> None:
        self.repo, self.target = repo, target
        self.includes = [normalise_include(p) for p in includes or []]
        self.select = select or (lambda e: True)
        self.progress = progress or (lambda s, p: None)
        self.summary = RestoreSummary()
        self._writing: set[asyncio.Task[None]] = set()

    async def run(self, snapshot_id: SnapshotId) -> RestoreSummary:
        start = time.monotonic()
        _, body = await self.repo.load_snapshot(snapshot_id)
        self.summary.snapshot = snapshot_id.hex()
        dirs: list[Entry] = []
        try:
            async for entry in catalogue(self.repo, body):
                if not (matches(entry, self.includes) and self.select(entry)):
                    continue
                dest = safe_target(self.target, entry.path)
                if entry.type == "dir":
                    dest.mkdir(parents=True, exist_ok=True)
                    dirs.append(entry)
                    self.summary.dirs += 1
                elif entry.type == "symlink":
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if dest.is_symlink() or dest.exists():
                        dest.unlink()
                    os.symlink(entry.target or "", dest)
                else:
                    await self._start_file(entry, dest)
                self.progress(self.summary, entry.path)
            await self._finish_files()
        finally:
            for task in self._writing:  # a failure elsewhere: stop the files in flight
                task.cancel()
        for entry in reversed(dirs):  # after their contents, or writing would change the mtime
            dest = safe_target(self.target, entry.path)
            os.chmod(dest, entry.mode)
            os.utime(dest, ns=(entry.mtime_ns, entry.mtime_ns))
        self.summary.duration_s = round(time.monotonic() - start, 3)
        return self.summary

    async def _start_file(self, entry: Entry, dest: Path) -> None:
        """Restore files concurrently (most DICOM files are one or two chunks, so a window
        within one file would leave the decode threads idle); stop at the first failure."""
        while len(self._writing) >= FILES_IN_FLIGHT:
            done, self._writing = await asyncio.wait(
                self._writing, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                task.result()
        self._writing.add(asyncio.create_task(self._file(entry, dest)))

    async def _finish_files(self) -> None:
        await asyncio.gather(*self._writing)
        self._writing = set()

    async def _file(self, entry: Entry, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.dicomvault-restore")
        try:
            with open(tmp, "wb") as f:
                async for data in self.read_file(entry.chunks):
                    f.write(data)
                os.fchmod(f.fileno(), entry.mode)
            os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns))
            os.replace(tmp, dest)
        except BaseException:
            # A failed chunk must not leave a partial file behind, even under a temp name.
            tmp.unlink(missing_ok=True)
            raise
        self.summary.files += 1
        self.summary.bytes_written += entry.size

    async def read_file(self, chunks: list[tuple[ChunkId, int]]) -> AsyncIterator[bytes]:
        """Yield a file's chunks in order, with up to FETCH_CONCURRENCY reads in flight."""
        window: list[asyncio.Task[bytes]] = []
        todo = iter(chunks)
        try:
            for chunk_id, _ in todo:
                window.append(asyncio.create_task(self.repo.read_chunk(chunk_id)))
                if len(window) >= FETCH_CONCURRENCY:
                    yield await window.pop(0)
            while window:
                yield await window.pop(0)
        finally:
            for task in window:
                task.cancel()
