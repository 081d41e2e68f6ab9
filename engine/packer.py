"""Packs through a `Backend`: building and sealing them from blobs, reading their manifests back.

`Packer` owns the pack side of invariant 1 (docs/design.md §5): a finished pack is durable
(its sink's `publish` returned) before the index records it. Where a pack is built and where it
goes — a temporary file handed to the backend's `put_pack`, or a client's spool file that is
uploaded later — is the caller's `PackSink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import tempfile
from collections.abc import Awaitable, Callable
from typing import IO, Protocol

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
    SealedPack,
    header_entry,
    parse_manifest,
    parse_trailer,
)

PutPack = Callable[[PackId, bytes | memoryview], Awaitable[None]]


class PackSink(Protocol):
    """Where packs are built and made durable."""

    def new_file(self) -> IO[bytes]:
        """A file to build the next pack in (`PackBuilder` writes it, `publish` takes it)."""
        ...

    async def publish(self, pack: SealedPack) -> None:
        """Make a sealed pack durable under its id and close its file (invariant 1)."""
        ...

    def discard(self, file: IO[bytes]) -> None:
        """Close and remove the file of a pack that will not be sealed."""
        ...


class BackendSink:
    """Builds each pack in an unlinked temporary file and hands it to `put_pack` as a view of
    the file mapped read-only (a local repository's store, prune's repack and retention): the
    pack's pages are the page cache's, never a copy on the heap."""

    def __init__(self, put_pack: PutPack) -> None:
        self.put_pack = put_pack

    def new_file(self) -> IO[bytes]:
        return tempfile.TemporaryFile()

    async def publish(self, pack: SealedPack) -> None:
        with pack.file:
            mapping = mmap.mmap(pack.file.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                with memoryview(mapping) as view:
                    await self.put_pack(pack.pack_id, view)
            finally:
                with contextlib.suppress(BufferError):  # a view still held: unmapped with it
                    mapping.close()

    def discard(self, file: IO[bytes]) -> None:
        file.close()


class Packer:
    """Collects sealed blobs into packs and writes each sealed pack durably, then indexes it;
    `on_indexed` (a client's uploader, say) hears of each pack after that."""

    def __init__(
        self,
        key: MasterKey,
        index: LocalIndex,
        sink: PackSink,
        on_indexed: Callable[[], None] | None = None,
    ) -> None:
        self.key, self.index, self.on_indexed = key, index, on_indexed
        self.sink = sink
        self.builder = PackBuilder(self.sink.new_file)
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
        self.builder, self.header = PackBuilder(self.sink.new_file), []
        sealed_header = blob.seal_plaintext(self.key, PACK_HEADER_AD, header)
        try:
            pack = await asyncio.to_thread(builder.seal, sealed_header)
        except BaseException:
            self._abandon(builder)
            raise
        await self.sink.publish(pack)  # invariant 1: durable before the index
        self.index.add_pack(pack.pack_id, pack.size, builder.entries)
        if self.on_indexed is not None:
            self.on_indexed()
        self.packs_written += 1
        self.bytes_written += pack.size

    def discard(self) -> None:
        """Drop the pack being built (its chunks were never indexed): a repository closing."""
        self._abandon(self.builder)
        self.builder, self.header = PackBuilder(self.sink.new_file), []

    def _abandon(self, builder: PackBuilder) -> None:
        file = builder.abandon()
        if file is not None:
            self.sink.discard(file)


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
