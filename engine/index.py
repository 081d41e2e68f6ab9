"""The client's LMDB index: where each chunk lives, which packs are indexed, and the files cache.

A cache in the sense of invariant 3: every record can be rebuilt from the packs (chunk and pack
records) or simply dropped (files cache). Lookups touch only the keys asked for, so memory stays
bounded whatever the repository's size. Knows nothing of HTTP or of how packs are fetched.

    chunks  chunk id (32) → pack id (32) ‖ offset u32 ‖ length u32   (pack id all zero: held by
            the server, location not yet known here)
    packs   pack id (32) → size u64
    files   absolute path (UTF-8, surrogateescape) → files-cache record (JSON)
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import lmdb

from engine.errors import StoreError
from engine.ids import ChunkId, PackId
from engine.pack import ManifestEntry

_LOC = struct.Struct("<32sII")
_SIZE = struct.Struct("<Q")
MAP_SIZE = 1 << 40  # address space only: LMDB grows the file as it is used
UNKNOWN_PACK = PackId(bytes(32))


@dataclass(frozen=True, slots=True)
class Location:
    pack_id: PackId
    offset: int
    length: int

    @property
    def known(self) -> bool:
        return self.pack_id != UNKNOWN_PACK


class LocalIndex:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        try:
            self.env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=4, max_readers=256)
        except lmdb.Error as e:
            raise StoreError(f"cannot open index at {path}: {e}") from None
        self._chunks = self.env.open_db(b"chunks")
        self._packs = self.env.open_db(b"packs")
        self._files = self.env.open_db(b"files")

    def close(self) -> None:
        self.env.close()

    # chunks and packs

    def lookup(self, chunk_id: ChunkId) -> Location | None:
        with self.env.begin(db=self._chunks, buffers=False) as txn:
            raw = txn.get(chunk_id)
        if raw is None:
            return None
        pack, offset, length = _LOC.unpack(raw)
        return Location(PackId(pack), offset, length)

    def __contains__(self, chunk_id: ChunkId) -> bool:
        with self.env.begin(db=self._chunks) as txn:
            return txn.get(chunk_id) is not None

    def add_pack(self, pack_id: PackId, size: int, entries: Iterable[ManifestEntry]) -> None:
        """Index a durable pack's chunks in one transaction (after the pack is durable)."""
        with self.env.begin(write=True) as txn:
            for e in entries:
                txn.put(e.chunk_id, _LOC.pack(pack_id, e.offset, e.length), db=self._chunks)
            txn.put(pack_id, _SIZE.pack(size), db=self._packs)

    def add_remote(self, chunk_ids: Iterable[ChunkId]) -> None:
        """Record chunks the server holds in packs this client has not indexed yet."""
        with self.env.begin(write=True, db=self._chunks) as txn:
            for cid in chunk_ids:
                txn.put(cid, _LOC.pack(UNKNOWN_PACK, 0, 0), overwrite=False)

    def has_pack(self, pack_id: PackId) -> bool:
        with self.env.begin(db=self._packs) as txn:
            return txn.get(pack_id) is not None

    def pack_ids(self) -> Iterator[PackId]:
        with self.env.begin(db=self._packs) as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                yield PackId(bytes(key))

    def chunk_count(self) -> int:
        with self.env.begin(db=self._chunks) as txn:
            return int(txn.stat(self._chunks)["entries"])

    def clear(self) -> None:
        with self.env.begin(write=True) as txn:
            for db in (self._chunks, self._packs, self._files):
                txn.drop(db, delete=False)

    # files cache

    @staticmethod
    def _file_key(path: str) -> bytes:
        key = path.encode("utf-8", "surrogateescape")
        # LMDB keys are at most 511 bytes; long paths are keyed by their hash instead.
        return key if len(key) <= 480 else b"#" + blake3.blake3(key).digest()

    def get_file(self, path: str) -> dict[str, Any] | None:
        with self.env.begin(db=self._files) as txn:
            raw = txn.get(self._file_key(path))
        return json.loads(raw) if raw is not None else None

    def put_files(self, records: Iterable[tuple[str, dict[str, Any]]]) -> None:
        with self.env.begin(write=True, db=self._files) as txn:
            for path, record in records:
                txn.put(self._file_key(path), json.dumps(record, separators=(",", ":")).encode())
