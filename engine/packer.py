"""Packs through a `Backend`: building and sealing them from blobs, reading their manifests back.

`Packer` owns the pack side of invariant 1 (docs/design.md §5): a finished pack is durable
(`put_pack` returned) before the index records it. Where the pack goes — the backend itself, or
a client's spool that uploads later — is the caller's `put_pack`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from engine import blob
from engine.backend import Backend
from engine.catalogue import PACK_HEADER_AD
from engine.errors import FormatError
from engine.ids import ChunkId, PackId
from engine.index import LocalIndex
from engine.keys import MasterKey
from engine.pack import (
    ENTRY_SIZE,
    TARGET_SIZE,
    TRAILER_SIZE,
    ManifestEntry,
    PackBuilder,
    header_entry,
    parse_manifest,
    parse_trailer,
)

PutPack = Callable[[PackId, bytes], Awaitable[None]]


class Packer:
    """Collects sealed blobs into packs and writes each sealed pack durably, then indexes it;
    `on_indexed` (a client's uploader, say) hears of each pack after that."""

    def __init__(
        self,
        key: MasterKey,
        index: LocalIndex,
        put_pack: PutPack,
        on_indexed: Callable[[], None] | None = None,
    ) -> None:
        self.key, self.index, self.put_pack, self.on_indexed = key, index, put_pack, on_indexed
        self.builder = PackBuilder()
        self.header: list[bytes] = []
        self.packs_written = 0
        self.bytes_written = 0

    def __contains__(self, chunk_id: ChunkId) -> bool:
        return chunk_id in self.builder

    def add(self, chunk_id: ChunkId, sealed: bytes, raw_len: int, content: int) -> None:
        self.builder.add(chunk_id, sealed)
        self.header.append(header_entry(raw_len, content))

    @property
    def full(self) -> bool:
        return self.builder.blob_bytes >= TARGET_SIZE

    async def flush(self) -> None:
        if not len(self.builder):
            return
        builder, header = self.builder, b"".join(self.header)
        self.builder, self.header = PackBuilder(), []
        sealed_header = blob.seal_plaintext(self.key, PACK_HEADER_AD, header)
        pack_id, data = await asyncio.to_thread(builder.finish, sealed_header)
        await self.put_pack(pack_id, data)  # invariant 1: durable before the index
        self.index.add_pack(pack_id, len(data), builder.entries)
        if self.on_indexed is not None:
            self.on_indexed()
        self.packs_written += 1
        self.bytes_written += len(data)


async def read_manifest(backend: Backend, pack_id: PackId) -> tuple[int, list[ManifestEntry]]:
    """A pack's size and manifest, with two range reads (never the whole pack)."""
    size, trailer = await backend.get_pack_tail(pack_id, TRAILER_SIZE)
    try:
        count, header_len, blob_len = parse_trailer(trailer, size)
    except FormatError as e:
        raise _in_pack(pack_id, e) from None
    manifest = await backend.get_pack_range(pack_id, blob_len + header_len, count * ENTRY_SIZE)
    try:
        return size, list(parse_manifest(manifest, blob_len))
    except FormatError as e:
        raise _in_pack(pack_id, e) from None


def _in_pack(pack_id: PackId, e: FormatError) -> FormatError:
    return FormatError(f"pack {pack_id.hex()}: {e}")
