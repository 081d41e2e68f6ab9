"""Pack byte layout, version 1: building, parsing and verifying packs without keys.

A pack is `blobs ‖ sealed header ‖ manifest ‖ trailer`. The blobs and the header are opaque here
(the client seals them); the manifest is plaintext so a keyless server can index and verify a
pack. Does not touch storage (a pack is built in a file its caller opens, not in memory) and
holds no keys.

    blob area      sum(entry.length) bytes, blobs back to back in manifest order
    header         header_len bytes, sealed by the client (opaque to the server); its plaintext
                   is entry_count × 5 bytes: raw length u32 LE ‖ content kind u8 (`header_entry`)
    manifest       entry_count × 40 bytes: chunk id (32) ‖ offset u32 LE ‖ length u32 LE
    trailer        24 bytes: magic "DVPK" ‖ version u8 ‖ 3 reserved zero bytes ‖
                   entry_count u32 LE ‖ header_len u32 LE ‖ blob_area_len u64 LE

Pack id = unkeyed BLAKE3-256 of all the pack's bytes, so anyone can verify a pack by its name.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import IO

import blake3

from engine.errors import FormatError, IntegrityError
from engine.ids import ID_SIZE, ChunkId, PackId

MAGIC = b"DVPK"
VERSION = 1
_TRAILER = struct.Struct("<4sB3xIIQ")  # 24 bytes
_ENTRY = struct.Struct(f"<{ID_SIZE}sII")  # 40 bytes
_HEADER_ENTRY = struct.Struct("<IB")  # 5 bytes
TRAILER_SIZE = _TRAILER.size
ENTRY_SIZE = _ENTRY.size
HEADER_ENTRY_SIZE = _HEADER_ENTRY.size
TARGET_SIZE = 16 * 1024 * 1024  # seal a pack once its blobs reach this many bytes
MAX_SIZE = 1 << 31  # offsets are u32; no pack may come near that


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    chunk_id: ChunkId
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class PackInfo:
    """What a keyless reader learns from a pack: its manifest and where the sealed header is."""

    entries: tuple[ManifestEntry, ...]
    header_offset: int
    header_len: int
    size: int


def pack_id_of(data: bytes | bytearray | memoryview) -> PackId:
    return PackId(blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest())


@dataclass(frozen=True, slots=True)
class SealedPack:
    """A finished pack in the file it was built in (flushed, not yet durable): whoever it is
    handed to makes it durable and closes the file."""

    pack_id: PackId
    size: int
    file: IO[bytes]

    def read(self) -> bytes:
        """The whole pack, for a caller that stores bytes (and the file closed)."""
        with self.file:
            self.file.seek(0)
            return self.file.read()


class PackBuilder:
    """Writes sealed blobs (≤ one pack, ~16 MiB) into a file, hashing them as they go, so a
    pack is never assembled in memory: `seal` appends the header, manifest and trailer and
    names the pack (docs/design.md §2.2). The file comes from `new_file`, called at the first
    write: an unlinked temporary file by default, a client's spool file (`client.spool`)."""

    def __init__(self, new_file: Callable[[], IO[bytes]] = tempfile.TemporaryFile) -> None:
        self._new_file = new_file
        self._file: IO[bytes] | None = None
        self._hash = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self._entries: list[ManifestEntry] = []
        self._ids: set[ChunkId] = set()
        self.blob_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._ids

    @property
    def entries(self) -> tuple[ManifestEntry, ...]:
        return tuple(self._entries)

    def add(self, chunk_id: ChunkId, blob: bytes) -> ManifestEntry:
        if chunk_id in self._ids:
            raise ValueError(f"{chunk_id!r} already in this pack")
        entry = ManifestEntry(chunk_id, self.blob_bytes, len(blob))
        self._write(blob)
        self._entries.append(entry)
        self._ids.add(chunk_id)
        self.blob_bytes += len(blob)
        return entry

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._file = self._new_file()
        self._file.write(data)
        self._hash.update(data)

    def seal(self, sealed_header: bytes) -> SealedPack:
        """Append header, manifest and trailer; the file is then the returned pack's. Once."""
        manifest = b"".join(_ENTRY.pack(e.chunk_id, e.offset, e.length) for e in self._entries)
        size = self.blob_bytes + len(sealed_header) + len(manifest) + TRAILER_SIZE
        if size >= MAX_SIZE:
            raise ValueError("pack too large")
        trailer = _TRAILER.pack(
            MAGIC, VERSION, len(self._entries), len(sealed_header), self.blob_bytes
        )
        for part in (sealed_header, manifest, trailer):
            self._write(part)
        file, self._file = self._file, None
        assert file is not None  # the trailer was written to it
        file.flush()
        return SealedPack(PackId(self._hash.digest()), size, file)

    def finish(self, sealed_header: bytes) -> tuple[PackId, bytes]:
        """`seal`, then the pack read back whole (callers that hold packs as bytes)."""
        pack = self.seal(sealed_header)
        return pack.pack_id, pack.read()

    def abandon(self) -> IO[bytes] | None:
        """Hand back the file of a pack that will not be sealed (None before the first blob),
        for its opener to close and remove."""
        file, self._file = self._file, None
        return file


def header_entry(raw_len: int, content: int) -> bytes:
    """One chunk's entry in a pack's header plaintext, in manifest order (sealed by the writer)."""
    return _HEADER_ENTRY.pack(raw_len, content)


def header_entries(plain: bytes) -> list[tuple[int, int]]:
    """(raw_len, content kind) of each chunk, from an opened pack header (prune's repack)."""
    if len(plain) % HEADER_ENTRY_SIZE:
        raise FormatError("pack header is not whole entries")
    return [e for e in _HEADER_ENTRY.iter_unpack(plain)]


def parse_trailer(tail: bytes, size: int) -> tuple[int, int, int]:
    """Return (entry_count, header_len, blob_area_len) from the last 24 bytes of a pack."""
    if size < TRAILER_SIZE or len(tail) < TRAILER_SIZE:
        raise FormatError("pack too short for a trailer")
    magic, version, count, header_len, blob_len = _TRAILER.unpack(tail[-TRAILER_SIZE:])
    if magic != MAGIC:
        raise FormatError("not a pack (bad magic)")
    if version != VERSION:
        raise FormatError(f"unsupported pack version {version}")
    if blob_len + header_len + count * ENTRY_SIZE + TRAILER_SIZE != size:
        raise FormatError("pack trailer lengths do not add up to the pack size")
    return count, header_len, blob_len


def parse_manifest(manifest: bytes | memoryview, blob_len: int) -> Iterator[ManifestEntry]:
    """Yield manifest entries, checking that they tile the blob area exactly, once per chunk."""
    expected, seen = 0, set()
    for raw_id, offset, length in _ENTRY.iter_unpack(manifest):
        if offset != expected or length == 0:
            raise FormatError(f"manifest entry at offset {offset} does not tile the blob area")
        if raw_id in seen:
            raise FormatError("manifest names a chunk twice")
        seen.add(raw_id)
        expected += length
        yield ManifestEntry(ChunkId(raw_id), offset, length)
    if expected != blob_len:
        raise FormatError("manifest does not cover the blob area")


def read_pack_info(data: bytes | bytearray | memoryview) -> PackInfo:
    """Parse and validate the keyless parts of a whole pack held in memory."""
    view = memoryview(data)
    count, header_len, blob_len = parse_trailer(bytes(view[-TRAILER_SIZE:]), len(view))
    manifest_at = blob_len + header_len
    manifest = view[manifest_at : manifest_at + count * ENTRY_SIZE]
    entries = tuple(parse_manifest(manifest, blob_len))
    return PackInfo(entries, blob_len, header_len, len(view))


async def read_pack_info_ranged(
    read_range: Callable[[int, int], Awaitable[bytes]], size: int
) -> PackInfo:
    """The keyless parts of a stored pack of `size` bytes from two ranged reads, the trailer and
    the manifest, so memory stays at the manifest's size whatever the pack's."""
    if size < TRAILER_SIZE:
        raise FormatError("pack too short for a trailer")
    count, header_len, blob_len = parse_trailer(
        await read_range(size - TRAILER_SIZE, TRAILER_SIZE), size
    )
    manifest = await read_range(blob_len + header_len, count * ENTRY_SIZE)
    return PackInfo(tuple(parse_manifest(manifest, blob_len)), blob_len, header_len, size)


def verify_pack(pack_id: PackId, data: bytes | bytearray | memoryview) -> PackInfo:
    """Check a pack against its name and its own structure; raise `IntegrityError` naming it."""
    if pack_id_of(data) != pack_id:
        raise IntegrityError(f"pack {pack_id.hex()}: content does not match its name")
    try:
        return read_pack_info(data)
    except FormatError as e:
        raise FormatError(f"pack {pack_id.hex()}: {e}") from None


def pack_name(pack_id: PackId) -> str:
    """Store name of a pack: two hex digits of fan-out keep folders small."""
    h = pack_id.hex()
    return f"packs/{h[:2]}/{h}"
