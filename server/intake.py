"""Pack intake: stream an upload into the repository's Store, verify it, then index it.

Owns the order of invariant 1 on the server: the Store stages the body durably, intake's
`verify` checks its hash and manifest before the Store publishes it, and only then is it
indexed, so a killed server never exposes a partial pack and the index never names a pack that
is not durable. Each intake is journalled in the index before the Store publishes it, so a
server killed between storing and indexing finishes the job when it starts again
(`complete_intakes`). Holds no keys: it checks only the pack's BLAKE3 name and its plaintext
manifest. Must not know HTTP status codes or tokens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial

import blake3

from engine.clock import SYSTEM, Clock
from engine.errors import DicomvaultError, FormatError
from engine.ids import PackId
from engine.pack import PackInfo, pack_name, read_pack_info_ranged
from engine.store.base import Staged
from server.catchup import log_pack
from server.errors import BodyTooLarge, HashMismatch
from server.index import ServerIndex
from server.reindex import index_snapshot
from server.repos import Repositories, Repository

log = logging.getLogger(__name__)
WRITE_BATCH = 1024 * 1024  # cache-sized: 4 MiB batches doubled the CPU per GB (benchmarks.ingest)


@dataclass(frozen=True, slots=True)
class IntakeResult:
    pack_id: PackId
    size: int
    chunks: int
    created: bool  # False: the pack was already stored (idempotent upload)


class _Upload:
    """The body in batches of `WRITE_BATCH`, counted against the limit and hashed as it passes,
    then checked against the pack's name and manifest once the journal row is durable.

    BLAKE3 runs on the event loop, one thread: ~0.1 ms per batch on this project's machine
    (9.6 GB/s; its multi-threaded mode was slower at this size), less than the two thread
    switches a worker would cost, which on a busy machine each wait for a free CPU slice."""

    def __init__(
        self, pack_id: PackId, body: AsyncIterator[bytes], max_size: int, journal: Awaitable[None]
    ) -> None:
        self.pack_id, self.body, self.max_size = pack_id, body, max_size
        self.journal = journal
        self.hasher = blake3.blake3()
        self.size = 0
        self.info: PackInfo | None = None

    async def pieces(self) -> AsyncIterator[bytes]:
        buf: list[bytes] = []
        pending = 0
        async for piece in self.body:
            pending += len(piece)
            if self.size + pending > self.max_size:
                raise BodyTooLarge(f"pack larger than {self.max_size} bytes")
            buf.append(piece)
            if pending >= WRITE_BATCH:
                yield self._hashed(b"".join(buf))
                buf, pending = [], 0
        if buf:
            yield self._hashed(b"".join(buf))

    def _hashed(self, batch: bytes) -> bytes:
        self.hasher.update(batch)
        self.size += len(batch)
        return batch

    async def verify(self, staged: Staged) -> None:
        """Runs before the Store publishes the pack: the journal row must be durable by then
        (invariant 1), so a crash after publishing finds the pack in `complete_intakes`."""
        await self.journal
        digest = self.hasher.digest()
        if digest != self.pack_id:
            raise HashMismatch(f"pack {self.pack_id.hex()}: body hashes to {digest.hex()}")
        try:
            self.info = await read_pack_info_ranged(staged.read_range, staged.size)
        except FormatError as e:
            raise FormatError(f"pack {self.pack_id.hex()}: {e}") from None


async def receive_pack(
    repo: Repository,
    index: ServerIndex,
    pack_id: PackId,
    body: AsyncIterator[bytes],
    max_size: int,
    clock: Clock = SYSTEM,
) -> IntakeResult:
    """Stream the body into the Store, which publishes it only after `verify` and only
    durably; then index it (invariant 1). The journal row is written while the body arrives."""
    name = pack_name(pack_id)
    async with journalling(repo, index, name) as journal:
        upload = _Upload(pack_id, body, max_size, journal)
        created = await repo.store.put_stream(name, upload.pieces(), upload.verify)
        info = upload.info
        assert info is not None  # put_stream awaits verify whenever the stream completes
        # Finish even when the pack already existed: a re-upload completes an intake that a
        # crash interrupted before the server restarted (`complete_intakes` at start).
        await _finish_pack(repo, index, pack_id, info, clock)
    return IntakeResult(pack_id, info.size, len(info.entries), created)


async def _finish_pack(
    repo: Repository, index: ServerIndex, pack_id: PackId, info: PackInfo, clock: Clock
) -> None:
    """A stored pack's log entry for other nodes, then its index rows, which end its intake."""
    mtime = (await repo.store.stat(pack_name(pack_id))).mtime
    await log_pack(repo, pack_id, info.size, mtime, info.entries, clock)
    await asyncio.to_thread(
        partial(index.add_pack, repo.name, pack_id, info.size, mtime, info.entries)
    )


@asynccontextmanager
async def journalled(repo: Repository, index: ServerIndex, name: str) -> AsyncIterator[None]:
    """Journal `name` before it is stored; indexing it ends the entry. A failed store (bad hash,
    too large, dropped body) ends it too; a kill leaves it for `complete_intakes` at start."""
    async with journalling(repo, index, name) as journal:
        await journal
        yield


@asynccontextmanager
async def journalling(
    repo: Repository, index: ServerIndex, name: str
) -> AsyncIterator[asyncio.Future[None]]:
    """`journalled`, with the row written in the background: the caller awaits the yielded
    write before the Store publishes `name` (a pack's `verify`), so LMDB's commit and fsync
    overlap with receiving the body instead of coming before it."""
    journal = asyncio.ensure_future(asyncio.to_thread(index.begin_intake, repo.name, name))
    try:
        yield journal
        await journal
    except Exception:
        with suppress(Exception):  # keep the first error; start-up finishes what is left
            await journal  # the row is written before it is ended, never after
            if not await repo.store.exists(name):
                await asyncio.to_thread(index.end_intake, repo.name, name)
        raise


async def complete_intakes(repos: Repositories, index: ServerIndex, clock: Clock = SYSTEM) -> int:
    """Finish what a crash interrupted: every journalled object that is stored is logged and
    indexed, the rest (never published) forgotten. Run at start, before serving; return how
    many were finished."""
    done = 0
    for repo_name, name in await asyncio.to_thread(index.intakes):
        try:
            repo = repos.get(repo_name)
            if await repo.store.exists(name):
                await _finish(repo, index, name, clock)
                done += 1
                continue
        except (ValueError, DicomvaultError) as e:
            log.warning("%s: cannot finish the intake of %s: %s", repo_name, name, e)
        await asyncio.to_thread(index.end_intake, repo_name, name)
    return done


async def _finish(repo: Repository, index: ServerIndex, name: str, clock: Clock) -> None:
    if not name.startswith("packs/"):
        await index_snapshot(repo, index, name)
        return
    pack_id = PackId.parse(name.rsplit("/", 1)[-1])
    size = (await repo.store.stat(name)).size
    info = await read_pack_info_ranged(partial(repo.store.get_range, name), size)
    await _finish_pack(repo, index, pack_id, info, clock)
