"""The pack spool and its uploader: sealed packs wait on local disk until the server has them.

A pack is built straight into a spool file under a temp name (`Spool` is the packer's
`PackSink`: blobs written and hashed as they come, never assembled in memory) and enters the
spool durably (fsync, link to its id, folder fsync) before the index records its chunks; it
leaves only after the server acknowledged it, so a crash, a dropped link or a server restart
costs at most the re-sending of packs that were not acknowledged, and a crash mid-build leaves a
temp file that the next start removes. The uploader sends each pack from its mapped file in
pieces through the rate limiter (never the whole pack in memory) and retries transient failures
with capped exponential backoff. A spooled pack the server refuses because its file no longer
matches its name (the disk under the spool rotted) is set aside in `.damaged/` and its chunks
leave the index, so the backup fails naming it and the next one reads and sends them again: one
bad file must not stop every backup after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import mmap
import os
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from client.ratelimit import RateLimiter
from engine.backend import Backend
from engine.errors import IntegrityError, TransientError
from engine.ids import PackId
from engine.pack import SealedPack, pack_id_of
from engine.store.local import TMP_PREFIX, link_durably, write_durably

log = logging.getLogger(__name__)
SEND_PIECE = 64 * 1024  # bytes handed to the socket per rate-limiter grant (a page multiple)
BACKOFF_START = 0.5
BACKOFF_MAX = 60.0
DAMAGED = ".damaged"  # spooled packs whose file no longer matches its name, kept for a look


class Spool:
    """Sealed packs waiting for upload, one file each named by pack id; `.tmp-*` files are packs
    being built (`PackSink`: `new_file`, `publish`, `discard`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for stray in folder.glob(f"{TMP_PREFIX}*"):  # from a crash mid-write; never a pack
            _remove_unless_locked(stray)

    def _path(self, pack_id: PackId) -> Path:
        return self.folder / pack_id.hex()

    def put(self, pack_id: PackId, data: bytes) -> None:
        write_durably(self._path(pack_id), data)

    def new_file(self) -> IO[bytes]:
        file = open(self.folder / f"{TMP_PREFIX}{secrets.token_hex(8)}", "xb")  # noqa: SIM115
        # Locked until published or discarded: another repository opened on this spool (a
        # `snapshots` while a backup runs) must not sweep a pack that is being built.
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        return file

    async def publish(self, pack: SealedPack) -> None:
        await asyncio.to_thread(self._publish, pack)

    def _publish(self, pack: SealedPack) -> None:
        """fsync the pack's file, then link it under its id (the temp name always goes)."""
        staged = Path(pack.file.name)
        with pack.file as f:  # closed (unlocked) only once its temp name is gone
            try:
                os.fsync(f.fileno())  # `seal` flushed it
                link_durably(staged, self._path(pack.pack_id))  # False: spooled, same bytes
            finally:
                staged.unlink(missing_ok=True)

    def discard(self, file: IO[bytes]) -> None:
        with file:
            Path(file.name).unlink(missing_ok=True)

    @contextlib.contextmanager
    def mapped(self, pack_id: PackId) -> Iterator[mmap.mmap]:
        """A spooled pack mapped read-only: its pages are the page cache's, not the heap's."""
        with open(self._path(pack_id), "rb") as f:
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield mapping
        finally:
            with contextlib.suppress(BufferError):  # a view still held: unmapped when it goes
                mapping.close()

    def remove(self, pack_id: PackId) -> None:
        self._path(pack_id).unlink(missing_ok=True)

    def set_aside(self, pack_id: PackId) -> Path:
        """Move a damaged pack out of the queue into `.damaged/`; return where it went."""
        aside = self.folder / DAMAGED / pack_id.hex()
        aside.parent.mkdir(exist_ok=True)
        os.replace(self._path(pack_id), aside)
        return aside

    def pending(self) -> list[PackId]:
        """Packs waiting, oldest first (the order they were sealed in)."""
        entries = []
        for p in self.folder.iterdir():
            with contextlib.suppress(ValueError, FileNotFoundError):
                entries.append((p.stat().st_mtime_ns, PackId.parse(p.name)))
        return [pid for _, pid in sorted(entries)]

    def bytes_pending(self) -> int:
        total = 0
        for p in self.folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if not p.name.startswith("."):
                    total += p.stat().st_size
        return total


def _whole(pack_id: PackId, mapping: mmap.mmap) -> bool:
    with memoryview(mapping) as view:
        return pack_id_of(view) == pack_id


def _remove_unless_locked(stray: Path) -> None:
    """Remove a temp file unless a live process holds its lock (a pack it is building)."""
    with contextlib.suppress(FileNotFoundError), open(stray, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        stray.unlink(missing_ok=True)


@dataclass
class UploadStats:
    packs: int = 0
    bytes: int = 0
    retries: int = 0
    failures_in_row: int = 0  # failed attempts since the last acknowledged pack
    last_error: str | None = None


async def _pieces(mapping: mmap.mmap, limiter: RateLimiter) -> AsyncIterator[bytes]:
    """The mapped pack in `SEND_PIECE` copies; each piece's pages leave this process once
    sent, so an upload holds one piece, not the pack (docs/design.md §2.2)."""
    for start in range(0, len(mapping), SEND_PIECE):
        piece = mapping[start : start + SEND_PIECE]
        await limiter.acquire(len(piece))
        yield piece
        mapping.madvise(mmap.MADV_DONTNEED, start, len(piece))


class Uploader:
    """Moves packs from the spool to the backend, oldest first, one at a time."""

    def __init__(
        self,
        backend: Backend,
        spool: Spool,
        limiter: RateLimiter | None = None,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        max_attempts: int | None = None,
        forget: Callable[[set[PackId]], None] = lambda packs: None,
    ) -> None:
        """`forget` drops packs from the index (a damaged pack's chunks are sent again)."""
        self.backend, self.spool = backend, spool
        self._forget = forget
        self.limiter = limiter or RateLimiter()
        self.stats = UploadStats()
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._wake = asyncio.Event()
        self._leftovers = set(spool.pending())  # packs a previous process left unacknowledged
        self._stopping = False

    def notify(self) -> None:
        """A new pack is in the spool."""
        self._wake.set()

    async def drain(self) -> None:
        """Upload everything in the spool now; return when it is empty."""
        while pending := self.spool.pending():
            for pack_id in pending:
                await self._upload(pack_id)

    async def run(self) -> None:
        """Upload packs as they arrive, until `stop` — then finish what is spooled and return."""
        while True:
            self._wake.clear()
            await self.drain()
            if self._stopping:
                self._stopping = False  # one stop per run: the next backup runs it again
                return
            await self._wake.wait()

    def stop(self) -> None:
        """Ask `run` to return once the spool is empty (never abandoning a pack midway)."""
        self._stopping = True
        self._wake.set()

    async def _upload(self, pack_id: PackId) -> None:
        if pack_id in self._leftovers:
            # Spooled by a run that died: the server may have taken the whole body without the
            # acknowledgement reaching us. Ask first rather than send 16 MiB again.
            self._leftovers.discard(pack_id)
            if await self.backend.has_pack(pack_id):
                self.spool.remove(pack_id)
                return
        with self.spool.mapped(pack_id) as mapping:
            refused: IntegrityError | None = None
            try:
                await self._send(pack_id, mapping)
            except IntegrityError as e:
                if await asyncio.to_thread(_whole, pack_id, mapping):
                    raise  # the spooled copy is whole: the server's refusal is for an operator
                refused = e
            size = len(mapping)
        if refused is not None:
            raise self._set_aside(pack_id, refused)
        self.spool.remove(pack_id)
        self.stats.packs += 1
        self.stats.bytes += size
        self.stats.failures_in_row = 0
        self.stats.last_error = None

    def _set_aside(self, pack_id: PackId, refused: IntegrityError) -> IntegrityError:
        """Move a damaged pack aside and forget its chunks; the error that says so."""
        aside = self.spool.set_aside(pack_id)
        self._forget({pack_id})
        return IntegrityError(
            f"spooled pack {pack_id.hex()} was damaged on this disk after it was sealed (its "
            f"bytes no longer match its name; the server said: {refused}): set aside in "
            f"{aside}; the next backup reads its chunks again and sends them"
        )

    async def _send(self, pack_id: PackId, mapping: mmap.mmap) -> None:
        delay, attempt = BACKOFF_START, 0
        while True:
            attempt += 1
            view = memoryview(mapping)  # `data`: its size, and a failover's unpaced re-send
            try:
                await self.backend.put_pack(pack_id, view, body=_pieces(mapping, self.limiter))
                return
            except TransientError as e:
                self.stats.retries += 1
                self.stats.failures_in_row += 1
                self.stats.last_error = str(e)
                if self._max_attempts and attempt >= self._max_attempts:
                    raise
                log.warning(
                    "upload of pack %s failed (%s); retrying in %.1f s", pack_id.short(), e, delay
                )
                await self._sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, BACKOFF_MAX)
            finally:
                with contextlib.suppress(BufferError):  # a socket buffer may still hold it
                    view.release()
