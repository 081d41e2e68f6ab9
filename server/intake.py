"""Pack intake: stream an upload into the repository's Store, verify it, then index it.

Owns the order of invariant 1 on the server: the Store stages the body durably, intake's
`verify` checks its hash and manifest before the Store publishes it, and only then is it
indexed, so a killed server never exposes a partial pack and the index never names a pack that
is not durable. Holds no keys: it checks only the pack's BLAKE3
name and its plaintext manifest. Must not know HTTP status codes or tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import blake3

from engine.clock import SYSTEM, Clock
from engine.errors import FormatError
from engine.ids import PackId
from engine.pack import PackInfo, pack_name, read_pack_info_ranged
from engine.store.base import Staged
from server.catchup import log_pack
from server.errors import BodyTooLarge, HashMismatch
from server.index import ServerIndex
from server.repos import Repository

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
    created = await repo.store.put_stream(name, upload.pieces(), upload.verify)
    info = upload.info
    assert info is not None  # put_stream awaits verify whenever the stream completes
    # Index even when the pack already existed: a crash between publish and index leaves a
    # durable but unindexed pack, and a re-upload is how a client heals it.
    mtime = (await repo.store.stat(name)).mtime
    await asyncio.to_thread(index.add_pack, repo.name, pack_id, info.size, mtime, info.entries)
    await log_pack(repo, pack_id, info.size, mtime, info.entries, clock)  # for other nodes
    return IntakeResult(pack_id, info.size, len(info.entries), created)
