"""Pack intake: stream an upload into the repository's Store, verify it, then index it.

Owns the order of invariant 1 on the server: the Store stages the body durably, intake's
`verify` checks its hash and manifest before the Store publishes it, and only then is it
indexed, so a killed server never exposes a partial pack and the index never names a pack that
is not durable. Each intake is journalled in the index first, so a server killed between storing
and indexing finishes the job when it starts again (`complete_intakes`). Holds no keys: it
checks only the pack's BLAKE3 name and its plaintext manifest. Must not know HTTP status codes
or tokens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
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
WRITE_BATCH = 1024 * 1024  # hand the disk and hasher 1 MiB at a time: few thread hops per pack


@dataclass(frozen=True, slots=True)
class IntakeResult:
    pack_id: PackId
    size: int
    chunks: int
    created: bool  # False: the pack was already stored (idempotent upload)


class _Upload:
    """The body in batches of `WRITE_BATCH`, counted against the limit and hashed as it passes
    (blocking work in a worker thread), then checked against the pack's name and manifest."""

    def __init__(self, pack_id: PackId, body: AsyncIterator[bytes], max_size: int) -> None:
        self.pack_id, self.body, self.max_size = pack_id, body, max_size
        self.hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
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
                yield await self._hashed(b"".join(buf))
                buf, pending = [], 0
        if buf:
            yield await self._hashed(b"".join(buf))

    async def _hashed(self, batch: bytes) -> bytes:
        await asyncio.to_thread(self.hasher.update, batch)
        self.size += len(batch)
        return batch

    async def verify(self, staged: Staged) -> None:
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
    durably; then index it (invariant 1)."""
    upload = _Upload(pack_id, body, max_size)
    name = pack_name(pack_id)
    async with journalled(repo, index, name):
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
    await asyncio.to_thread(index.begin_intake, repo.name, name)
    try:
        yield
    except Exception:
        with suppress(Exception):  # keep the first error; start-up finishes what is left
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
