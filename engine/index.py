"""The client's LMDB index: where each chunk lives, which packs are indexed, and the files cache.

A cache in the sense of invariant 3: every record can be rebuilt from the packs (chunk and pack
records) or simply dropped (files cache). Lookups touch only the keys asked for, so memory stays
bounded whatever the repository's size. Knows nothing of HTTP or of how packs are fetched.

    chunks  chunk id (32) → pack id (32) ‖ offset u32 ‖ length u32   (pack id all zero: held by
            the server, location not yet known here)
    others  chunk id (32) → further locations, 40 bytes each: other packs holding the same id
            (a retried upload, or a pack planted with reused ids); tried when the first fails
    packs   pack id (32) → size u64
    files2  keyed BLAKE3 of the absolute path (32) → nonce (12) ‖ AES-256-GCM(files-cache record
            JSON, associated data = the key): paths and DICOM attributes (patient names, UIDs)
            never sit in the cache in plaintext. The key is the master key's cache subkey.
    meta    "generation" → u64: the chunk server's prune generation this index was last
            reconciled at (docs/design.md §14); "adding/" ‖ pack id → empty: a pack whose rows
            are being written over several transactions (`add_pack`)

Every write transaction touches at most WRITE_BATCH rows: LMDB copies each page a write
transaction dirties into a buffer it keeps, for its next transactions, until the environment
closes, and random ids dirty about one leaf page each, so the largest transaction is what the
process keeps. Bounded transactions keep that flat whatever the number of chunks
(docs/design.md §14, "Memory"). Each commit flushes the data but not the meta page
(`metasync=False`): a system crash may undo the last transaction, never corrupt the file; for a
cache that is the safe loss (a pack's rows go after the pack is durable, the generation after
the reconcile), and it halves the syncs that bounded transactions multiply.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import lmdb
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.errors import StoreError
from engine.ids import ChunkId, PackId
from engine.pack import ManifestEntry

_LOC = struct.Struct("<32sII")
_SIZE = struct.Struct("<Q")
MAP_SIZE = 1 << 40  # address space only: LMDB grows the file as it is used
UNKNOWN_PACK = PackId(bytes(32))
_NONCE_SIZE = 12  # random per record: at most ~10⁸ records per cache, far below GCM's 2³² bound
WRITE_BATCH = 500  # rows per write transaction (module docstring): ≤ ~2 MiB of page buffers
SCAN_SLICE = 50_000  # rows one read transaction of a pass over the index looks at
_ADDING = b"adding/"


@dataclass(frozen=True, slots=True)
class Location:
    pack_id: PackId
    offset: int
    length: int

    @property
    def known(self) -> bool:
        return self.pack_id != UNKNOWN_PACK

    def encode(self) -> bytes:
        return _LOC.pack(self.pack_id, self.offset, self.length)


def _location(raw: bytes) -> Location:
    pack, offset, length = _LOC.unpack(raw)
    return Location(PackId(pack), offset, length)


def _split(raw: bytes | None) -> list[Location]:
    raw = bytes(raw or b"")
    return [_location(raw[i : i + _LOC.size]) for i in range(0, len(raw), _LOC.size)]


def _append_other(txn: lmdb.Transaction, db: Any, chunk_id: ChunkId, loc: bytes) -> None:
    raw = bytes(txn.get(chunk_id, db=db) or b"")
    if loc not in {raw[i : i + _LOC.size] for i in range(0, len(raw), _LOC.size)}:
        txn.put(chunk_id, raw + loc, db=db)


def _put_others(txn: lmdb.Transaction, db: Any, chunk_id: ChunkId, locs: list[Location]) -> None:
    if locs:
        txn.put(chunk_id, b"".join(o.encode() for o in locs), db=db)
    else:
        txn.delete(chunk_id, db=db)


def _path_key(key: bytes, path: str) -> bytes:
    # Keyed, so equal paths stay equal without the path being readable; 32 bytes, so no path is
    # too long for an LMDB key (at most 511 bytes).
    return blake3.blake3(path.encode("utf-8", "surrogateescape"), key=key).digest()


class LocalIndex:
    """`files_key` (32 bytes) seals the files cache; without one, no files cache is kept."""

    def __init__(self, path: str | os.PathLike[str], files_key: bytes | None = None) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        try:
            self.env = lmdb.open(
                str(path), map_size=MAP_SIZE, max_dbs=6, max_readers=256, metasync=False
            )
        except lmdb.Error as e:
            raise StoreError(f"cannot open index at {path}: {e}") from None
        self._chunks = self.env.open_db(b"chunks")
        self._others = self.env.open_db(b"others")
        self._packs = self.env.open_db(b"packs")
        self._files = self.env.open_db(b"files2")
        self._meta = self.env.open_db(b"meta")
        self._files_key = files_key
        self._drop_plaintext_files_cache()

    def _drop_plaintext_files_cache(self) -> None:
        """Caches written before files2 kept records in plaintext under `files`: drop them."""
        with self.env.begin(write=True) as txn:
            try:
                old = self.env.open_db(b"files", txn=txn, create=False)
            except lmdb.NotFoundError:
                return
            txn.drop(old, delete=True)

    def close(self) -> None:
        self.env.close()

    # chunks and packs

    def lookup(self, chunk_id: ChunkId) -> Location | None:
        with self.env.begin(db=self._chunks, buffers=False) as txn:
            raw = txn.get(chunk_id)
        return None if raw is None else _location(raw)

    def __contains__(self, chunk_id: ChunkId) -> bool:
        with self.env.begin(db=self._chunks) as txn:
            return txn.get(chunk_id) is not None

    def others(self, chunk_id: ChunkId) -> list[Location]:
        """Further packs holding `chunk_id`, beyond `lookup`'s."""
        with self.env.begin(db=self._others, buffers=False) as txn:
            return _split(txn.get(chunk_id))

    def add_pack(self, pack_id: PackId, size: int, entries: Iterable[ManifestEntry]) -> None:
        """Index a durable pack's chunks (after the pack is durable), WRITE_BATCH rows per
        transaction, in id order. A pack of more rows is marked `adding` in its first
        transaction and listed in its last: a crash midway leaves it unlisted (`has_pack` is
        false, so the next sync adds it again: adding is idempotent) but known to
        `indexed_packs` (so its rows are dropped with it if it is gone by then).

        A chunk already located in another pack keeps that location; this one is added to
        `others`, so a pack reusing ids never displaces a location that worked."""
        rows = sorted(entries, key=lambda e: e.chunk_id)
        slices = [rows[i : i + WRITE_BATCH] for i in range(0, len(rows), WRITE_BATCH)] or [[]]
        marker = _ADDING + pack_id
        for n, batch in enumerate(slices):
            with self.env.begin(write=True) as txn:
                if n == 0 and len(slices) > 1:
                    txn.put(marker, b"", db=self._meta)
                for e in batch:
                    self._add_row(txn, pack_id, e)
                if n == len(slices) - 1:
                    txn.put(pack_id, _SIZE.pack(size), db=self._packs)
                    txn.delete(marker, db=self._meta)

    def _add_row(self, txn: lmdb.Transaction, pack_id: PackId, e: ManifestEntry) -> None:
        loc = _LOC.pack(pack_id, e.offset, e.length)
        old = txn.get(e.chunk_id, db=self._chunks)
        if old is None or old[:32] == UNKNOWN_PACK or old[:32] == pack_id:
            txn.put(e.chunk_id, loc, db=self._chunks)
        else:
            _append_other(txn, self._others, e.chunk_id, loc)

    def prefer(self, chunk_id: ChunkId, good: Location, bad: Iterable[Location]) -> None:
        """Make `good` the chunk's location and forget `bad` ones (they failed to authenticate
        or their pack is gone) while another location works: a failed copy is never kept as
        the one to read."""
        with self.env.begin(write=True) as txn:
            self._prefer(txn, chunk_id, good, bad)

    def prefer_many(self, moves: Iterable[tuple[ChunkId, Location]]) -> None:
        """`prefer` for many chunks (a prune's repack), WRITE_BATCH per transaction."""
        rows = list(moves)
        for i in range(0, len(rows), WRITE_BATCH):
            with self.env.begin(write=True) as txn:
                for chunk_id, good in rows[i : i + WRITE_BATCH]:
                    self._prefer(txn, chunk_id, good, ())

    def _prefer(
        self, txn: lmdb.Transaction, chunk_id: ChunkId, good: Location, bad: Iterable[Location]
    ) -> None:
        drop = {*bad, good}
        current = txn.get(chunk_id, db=self._chunks)
        rest = _split(bytes(txn.get(chunk_id, db=self._others) or b""))
        if current is not None:
            rest.insert(0, _location(bytes(current)))
        txn.put(chunk_id, good.encode(), db=self._chunks)
        _put_others(txn, self._others, chunk_id, [o for o in rest if o not in drop])

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
            for db in (self._chunks, self._others, self._packs, self._files, self._meta):
                txn.drop(db, delete=False)

    # pruning (docs/design.md §14)

    def pack_sizes(self) -> Iterator[tuple[PackId, int]]:
        with self.env.begin(db=self._packs) as txn:
            for key, value in txn.cursor():
                yield PackId(bytes(key)), _SIZE.unpack(value)[0]

    def locations(self) -> Iterator[tuple[ChunkId, Location, list[Location]]]:
        """Every chunk with its location and other copies, in id order, one read transaction
        (LMDB streams it: memory stays flat)."""
        with self.env.begin() as txn:
            others = txn.cursor(self._others)
            for key, value in txn.cursor(self._chunks):
                raw = others.get(key)
                yield ChunkId(bytes(key)), _location(value), _split(raw)

    def indexed_packs(self) -> set[PackId]:
        """Every pack with rows here: the listed ones and any a crash left half added."""
        with self.env.begin() as txn:
            out = {PackId(bytes(k)) for k in txn.cursor(self._packs).iternext(values=False)}
            cur = txn.cursor(self._meta)
            if cur.set_range(_ADDING):
                for key in cur.iternext(values=False):
                    if not bytes(key).startswith(_ADDING):
                        break
                    out.add(PackId(bytes(key)[len(_ADDING) :]))
        return out

    def drop_packs(self, gone: Collection[PackId]) -> None:
        """Forget packs that are gone: each of their chunks falls back to another copy, or is
        forgotten when it has none. One pass in id order (`_rewrite`); the packs' own rows go
        last, so a crash midway leaves them to be dropped again."""
        doomed = set(gone)
        if not doomed:
            return

        def hit(txn: lmdb.Transaction, key: bytes, value: bytes) -> bool:
            if value[:32] in doomed:
                return True
            raw = txn.get(key, db=self._others)
            return raw is not None and any(o.pack_id in doomed for o in _split(bytes(raw)))

        self._rewrite(hit, lambda txn, key: self._drop_copies(txn, ChunkId(key), doomed))
        with self.env.begin(write=True) as txn:
            for pack_id in doomed:
                txn.delete(pack_id, db=self._packs)
                txn.delete(_ADDING + pack_id, db=self._meta)

    def _drop_copies(self, txn: lmdb.Transaction, chunk_id: ChunkId, doomed: set[PackId]) -> None:
        current = txn.get(chunk_id, db=self._chunks)
        raw = txn.get(chunk_id, db=self._others)
        rest = [o for o in _split(None if raw is None else bytes(raw)) if o.pack_id not in doomed]
        if current is not None and PackId(bytes(current[:32])) in doomed:
            if rest:
                txn.put(chunk_id, rest.pop(0).encode(), db=self._chunks)
            else:
                txn.delete(chunk_id, db=self._chunks)
        _put_others(txn, self._others, chunk_id, rest)

    def drop_unknown(self) -> int:
        """Forget every "the server holds it" record: after a prune they may be stale."""
        return self._rewrite(
            lambda txn, key, value: value[:32] == UNKNOWN_PACK,
            lambda txn, key: txn.delete(key, db=self._chunks),
        )

    def _rewrite(
        self,
        hit: Callable[[lmdb.Transaction, bytes, bytes], bool],
        change: Callable[[lmdb.Transaction, bytes], object],
    ) -> int:
        """Apply `change` to every chunk row `hit` selects, in id order, in slices: a read
        transaction looks at up to SCAN_SLICE rows and ends before the (at most WRITE_BATCH)
        rows it selected are changed in a write transaction (a write while a read lives could
        not reuse the pages it frees: the file would grow). Memory: one slice. Returns how
        many rows were changed."""
        after: bytes | None = b""
        changed = 0
        while after is not None:
            keys, after = self._select(hit, after)
            if keys:
                with self.env.begin(write=True) as txn:
                    for key in keys:
                        change(txn, key)
                changed += len(keys)
        return changed

    def _select(
        self, hit: Callable[[lmdb.Transaction, bytes, bytes], bool], after: bytes
    ) -> tuple[list[bytes], bytes | None]:
        """Up to WRITE_BATCH keys `hit` selects among SCAN_SLICE rows past `after`, and the
        key to go on after (None at the end)."""
        keys: list[bytes] = []
        with self.env.begin() as txn:
            cur = txn.cursor(self._chunks)
            ok = cur.set_range(after)
            if ok and after and bytes(cur.key()) == after:
                ok = cur.next()
            for _ in range(SCAN_SLICE):
                if not ok:
                    return keys, None
                key = bytes(cur.key())
                if hit(txn, key, bytes(cur.value())):
                    keys.append(key)
                    if len(keys) >= WRITE_BATCH:
                        return keys, key
                ok = cur.next()
            return keys, key

    @property
    def generation(self) -> int | None:
        with self.env.begin(db=self._meta) as txn:
            raw = txn.get(b"generation")
        return None if raw is None else int(_SIZE.unpack(raw)[0])

    @generation.setter
    def generation(self, value: int) -> None:
        with self.env.begin(write=True, db=self._meta) as txn:
            txn.put(b"generation", _SIZE.pack(value))

    # files cache

    def get_file(self, path: str) -> dict[str, Any] | None:
        """The files-cache record for `path`, or None (also if it fails to authenticate: the
        files cache is only ever a shortcut)."""
        if self._files_key is None:
            return None
        name = _path_key(self._files_key, path)
        with self.env.begin(db=self._files) as txn:
            raw = txn.get(name)
        if raw is None or len(raw) < _NONCE_SIZE:
            return None
        try:
            plain = AESGCM(self._files_key).decrypt(raw[:_NONCE_SIZE], raw[_NONCE_SIZE:], name)
        except InvalidTag:
            return None
        record: dict[str, Any] = json.loads(plain)
        return record

    def put_files(self, records: Iterable[tuple[str, dict[str, Any]]]) -> None:
        if self._files_key is None:
            return
        key, sealer = self._files_key, AESGCM(self._files_key)
        with self.env.begin(write=True, db=self._files) as txn:
            for path, record in records:
                name, nonce = _path_key(key, path), os.urandom(_NONCE_SIZE)
                plain = json.dumps(record, separators=(",", ":")).encode()
                txn.put(name, nonce + sealer.encrypt(nonce, plain, name))
