"""Pack intake: stream an upload to a temp file, verify it, publish it durably, then index it.

Owns the order of invariant 1 on the server (temp file, fsync, verify hash and manifest, link,
folder fsync, and only then the index), so a killed server never exposes a partial pack and the
index never names a pack that is not durable. Holds no keys: it checks only the pack's BLAKE3
name and its plaintext manifest. Must not know HTTP status codes or tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import blake3

from engine.errors import FormatError
from engine.ids import PackId
from engine.pack import (
    ENTRY_SIZE,
    TRAILER_SIZE,
    PackInfo,
    pack_name,
    parse_manifest,
    parse_trailer,
)
from engine.store.local import link_durably
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


def read_pack_info_file(path: Path) -> PackInfo:
    """Parse a stored pack's trailer and manifest without reading its blobs (bounded memory)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < TRAILER_SIZE:
            raise FormatError("pack too short for a trailer")
        f.seek(size - TRAILER_SIZE)
        count, header_len, blob_len = parse_trailer(f.read(TRAILER_SIZE), size)
        f.seek(blob_len + header_len)
        manifest = f.read(count * ENTRY_SIZE)
    entries = tuple(parse_manifest(manifest, blob_len))
    return PackInfo(entries, blob_len, header_len, size)


class _Sink:
    """Temp file plus running hash; all blocking work runs in a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self.size = 0
        self.file: BinaryIO = open(path, "xb")  # noqa: SIM115 - closed in finish/abort

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.hasher.update(data)
        self.size += len(data)

    def finish(self) -> bytes:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.hasher.digest()

    def abort(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def _receive(sink: _Sink, body: AsyncIterator[bytes], max_size: int) -> None:
    buf: list[bytes] = []
    pending = 0
    async for piece in body:
        pending += len(piece)
        if sink.size + pending > max_size:
            raise BodyTooLarge(f"pack larger than {max_size} bytes")
        buf.append(piece)
        if pending >= WRITE_BATCH:
            await asyncio.to_thread(sink.write, b"".join(buf))
            buf, pending = [], 0
    if buf:
        await asyncio.to_thread(sink.write, b"".join(buf))


def _publish(repo: Repository, index: ServerIndex, pack_id: PackId, sink: _Sink) -> IntakeResult:
    """Verify the fsynced temp file, link it into place, index it (in this order)."""
    digest = sink.finish()
    if digest != pack_id:
        raise HashMismatch(f"pack {pack_id.hex()}: body hashes to {digest.hex()}")
    try:
        info = read_pack_info_file(sink.path)
    except FormatError as e:
        raise FormatError(f"pack {pack_id.hex()}: {e}") from None
    final = repo.object_path(pack_name(pack_id))
    created = link_durably(sink.path, final)
    # Index even when the pack already existed: a crash between link and index leaves a
    # durable but unindexed pack, and a re-upload is how a client heals it.
    index.add_pack(repo.name, pack_id, info.size, final.stat().st_mtime, info.entries)
    return IntakeResult(pack_id, info.size, len(info.entries), created)


async def receive_pack(
    repo: Repository,
    index: ServerIndex,
    pack_id: PackId,
    body: AsyncIterator[bytes],
    max_size: int,
) -> IntakeResult:
    sink = await asyncio.to_thread(lambda: _Sink(repo.new_temp_path()))
    try:
        await _receive(sink, body, max_size)
        return await asyncio.to_thread(_publish, repo, index, pack_id, sink)
    finally:
        # After a successful publish the temp name is already gone; abort just closes.
        await asyncio.to_thread(sink.abort)
