"""An open repository as the client sees it: backend, master key, local index and pack writer.

Owns the write order of invariant 1 on the client side (pack durable at the backend → index →
commit) and the index's reconciliation with the packs the backend holds. Knows nothing of
command-line arguments or what is being backed up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from client.ratelimit import RateLimiter
from client.spool import Spool, Uploader
from engine import blob
from engine.backend import Backend
from engine.catalogue import PACK_HEADER_AD, SnapshotBody
from engine.chunker import Chunker
from engine.commit import CommitRecord, verify_commit
from engine.errors import (
    FormatError,
    IntegrityError,
    NotFound,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    WrongPassphrase,
)
from engine.ids import ChunkId, PackId, SnapshotId
from engine.index import LocalIndex, Location
from engine.keys import KdfParams, MasterKey, key_name, unwrap, wrap
from engine.pack import (
    ENTRY_SIZE,
    TARGET_SIZE,
    TRAILER_SIZE,
    ManifestEntry,
    PackBuilder,
    parse_manifest,
    parse_trailer,
)

CONFIG_VERSION = 1
_HEADER_ENTRY = struct.Struct("<IB")  # raw length u32, content kind u8: 5 bytes per chunk
INDEX_SYNC_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class RepoConfig:
    version: int
    repo_id: str

    def encode(self) -> bytes:
        return json.dumps({"version": self.version, "id": self.repo_id}).encode()

    @classmethod
    def decode(cls, data: bytes) -> RepoConfig:
        try:
            doc = json.loads(data)
            if doc["version"] != CONFIG_VERSION:
                raise FormatError(f"unsupported repository version {doc['version']}")
            return cls(doc["version"], str(doc["id"]))
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"malformed repository config: {e}") from None


async def init_repository(backend: Backend, passphrase: bytes, kdf: KdfParams) -> RepoConfig:
    try:
        await backend.get_config()
    except (RepositoryNotFound, ObjectNotFound):
        pass
    else:
        raise RepositoryExists(f"a repository already exists at {backend.location}")
    config = RepoConfig(CONFIG_VERSION, secrets.token_hex(16))
    key_object = wrap(MasterKey.generate(), passphrase, kdf)
    # Key before config: a config without a key would be a repository nobody can open.
    await backend.put_key(key_name(key_object), key_object)
    await backend.put_config(config.encode())
    return config


async def _unlock(backend: Backend, passphrase: bytes, warnings: list[str]) -> MasterKey:
    """Try each key object in turn; a malformed one (or one asking for a KDF cost out of
    bounds, `engine.keyobject`) is skipped with a warning before any KDF work is spent on it."""
    for name in await backend.list_keys():
        try:
            return await asyncio.to_thread(unwrap, await backend.get_key(name), passphrase)
        except WrongPassphrase:
            continue
        except (FormatError, ObjectNotFound) as e:  # not found: quarantined since listed
            warnings.append(f"skipped key object {name}: {e}")
    if warnings:
        raise WrongPassphrase(f"{WrongPassphrase.__doc__} ({'; '.join(warnings)})")
    raise WrongPassphrase()


class Repository:
    def __init__(
        self,
        backend: Backend,
        config: RepoConfig,
        key: MasterKey,
        index: LocalIndex,
        uploader: Uploader | None = None,
        warnings: list[str] | None = None,
    ) -> None:
        self.backend, self.config, self.key, self.index = backend, config, key, index
        # Objects skipped because they fail to parse or authenticate, each once (a long-running
        # agent meets the same planted record at every backup); the CLI prints them.
        self.warnings: list[str] = []
        for message in warnings or []:
            self.warn(message)
        self.uploader = uploader
        self.chunker = Chunker(key.chunker_seed)
        self.packer = Packer(self)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    @classmethod
    async def open(
        cls,
        backend: Backend,
        passphrase: bytes,
        cache_root: Path,
        *,
        limiter: RateLimiter | None = None,
        spool_dir: Path | None = None,
    ) -> Repository:
        """Unlock a repository; a chunk-server repository gets a pack spool and an uploader."""
        config = RepoConfig.decode(await backend.get_config())
        warnings: list[str] = []
        key = await _unlock(backend, passphrase, warnings)
        index = LocalIndex(cache_root / config.repo_id / "index", files_key=key.cache_key)
        uploader = None
        if backend.knows_chunks:
            spool = Spool(spool_dir or cache_root / config.repo_id / "spool")
            uploader = Uploader(backend, spool, limiter)
        return cls(backend, config, key, index, uploader, warnings)

    async def close(self) -> None:
        self.index.close()
        await self.backend.close()

    # index reconciliation (invariant 3: the index is a cache of what the packs say)

    async def sync_index(self) -> int:
        """Index every pack the backend holds that the index lacks; return how many."""
        todo = [p async for p in self.backend.list_packs() if not self.index.has_pack(p)]
        sem = asyncio.Semaphore(INDEX_SYNC_CONCURRENCY)

        async def one(pack_id: PackId) -> None:
            async with sem:
                size, entries = await self.read_manifest(pack_id)
                self.index.add_pack(pack_id, size, entries)

        await asyncio.gather(*(one(p) for p in todo))
        return len(todo)

    async def read_manifest(self, pack_id: PackId) -> tuple[int, list[ManifestEntry]]:
        """Fetch a pack's trailer and manifest with two range reads (never the whole pack)."""
        size, trailer = await self.backend.get_pack_tail(pack_id, TRAILER_SIZE)
        count, header_len, blob_len = _parse_trailer_for(pack_id, trailer, size)
        manifest = await self.backend.get_pack_range(
            pack_id, blob_len + header_len, count * ENTRY_SIZE
        )
        try:
            return size, list(parse_manifest(manifest, blob_len))
        except FormatError as e:
            raise FormatError(f"pack {pack_id.hex()}: {e}") from None

    # reading

    async def locate(self, chunk_id: ChunkId) -> Location:
        loc = self.index.lookup(chunk_id)
        if loc is None or not loc.known:
            await self.sync_index()
            loc = self.index.lookup(chunk_id)
        if loc is None or not loc.known:
            raise IntegrityError(
                f"chunk {chunk_id.hex()} is referenced but in no pack (a damaged pack manifest "
                "or a removed pack: `dicomvault check` names the pack)"
            )
        return loc

    async def read_chunk(self, chunk_id: ChunkId) -> bytes:
        """Fetch, decrypt and verify a chunk. If its copy fails authentication (or its pack is
        gone), every other pack known to hold the chunk is tried, and the first that works
        becomes its location: a pack planted with reused chunk ids cannot stop a restore or
        poison the index (docs/design.md §3.9). All failing: `IntegrityError` names each pack."""
        first = await self.locate(chunk_id)
        failed: list[Location] = []
        errors: list[str] = []
        for loc in [first, *self.index.others(chunk_id)]:
            try:
                data = await self._read_at(chunk_id, loc)
            except (IntegrityError, ObjectNotFound) as e:
                failed.append(loc)
                errors.append(_named(loc.pack_id, str(e)))
                continue
            if failed:
                for message in errors:
                    self.warn(message)
                self.index.prefer(chunk_id, loc, failed)
            return data
        raise IntegrityError("; ".join(errors))

    async def _read_at(self, chunk_id: ChunkId, loc: Location) -> bytes:
        sealed = await self.backend.get_pack_range(loc.pack_id, loc.offset, loc.length)
        try:
            if len(sealed) != loc.length:
                raise IntegrityError("pack is truncated")
            return await asyncio.to_thread(blob.open_blob, self.key, chunk_id, sealed)
        except IntegrityError as e:
            raise IntegrityError(_named(loc.pack_id, str(e))) from None

    # snapshots

    async def commit(
        self, body: SnapshotBody, parent: SnapshotId | None, refs: Iterable[ChunkId], agent: str
    ) -> SnapshotId:
        unsealed = CommitRecord(body.time, agent, parent, tuple(dict.fromkeys(refs)), b"")
        # Version 2: the sealed body authenticates the record's readable fields (engine.commit).
        sealed = blob.seal_plaintext(self.key, unsealed.body_ad(), body.encode())
        record = dataclasses.replace(unsealed, sealed=sealed)
        return await self.backend.commit(record.encode())

    async def load_snapshot(self, snapshot_id: SnapshotId) -> tuple[CommitRecord, SnapshotBody]:
        """Fetch, and authenticate, a snapshot: the record must hash to `snapshot_id` and its
        sealed body must open under the record's fields; `IntegrityError` names the snapshot."""
        data = await self.backend.get_snapshot(snapshot_id)
        try:
            record = verify_commit(snapshot_id, data)
            plain = blob.open_plaintext(self.key, record.body_ad(), record.sealed)
            return record, SnapshotBody.decode(plain)
        except IntegrityError as e:
            message = str(e).removeprefix(f"snapshot {snapshot_id.hex()}: ")
            raise IntegrityError(f"snapshot {snapshot_id.hex()}: {message}") from None

    async def snapshots(self) -> list[tuple[SnapshotId, CommitRecord, SnapshotBody]]:
        """Every snapshot that authenticates, oldest first; the others are skipped and named in
        `warnings`, so one planted or damaged record never hides the good ones."""
        out = []
        for sid in await self.backend.list_snapshots():
            try:
                record, body = await self.load_snapshot(sid)
            except (IntegrityError, ObjectNotFound) as e:  # not found: quarantined since listed
                self.warn(f"skipped {e}")
                continue
            out.append((sid, record, body))
        return sorted(out, key=lambda s: (s[2].time, s[0].hex()))

    async def resolve(self, name: str) -> SnapshotId:
        """Snapshot by `latest`, full id or unique id prefix.

        A full id is taken as named, even one that fails to authenticate: loading it then says
        why, instead of "no such snapshot"."""
        try:
            full = SnapshotId.parse(name.lower())
        except ValueError:
            full = None
        if full is not None and full in await self.backend.list_snapshots():
            return full
        snaps = await self.snapshots()
        if name == "latest":
            if not snaps:
                raise NotFound("the repository has no snapshots")
            return snaps[-1][0]
        found = [s[0] for s in snaps if s[0].hex().startswith(name.lower())]
        if len(found) != 1:
            raise NotFound(f"no unique snapshot matches {name!r}")
        return found[0]


def _named(pack_id: PackId, message: str) -> str:
    return message if pack_id.hex() in message else f"pack {pack_id.hex()}: {message}"


def _parse_trailer_for(pack_id: PackId, trailer: bytes, size: int) -> tuple[int, int, int]:
    try:
        return parse_trailer(trailer, size)
    except FormatError as e:
        raise FormatError(f"pack {pack_id.hex()}: {e}") from None


def now_rfc3339() -> str:
    """UTC with microseconds: snapshots are ordered by time, and two can finish in one second."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Packer:
    """Collects sealed blobs into packs and writes each sealed pack durably, then indexes it."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.builder = PackBuilder()
        self.header: list[bytes] = []
        self.packs_written = 0
        self.bytes_written = 0

    def __contains__(self, chunk_id: ChunkId) -> bool:
        return chunk_id in self.builder

    def add(self, chunk_id: ChunkId, sealed: bytes, raw_len: int, content: int) -> None:
        self.builder.add(chunk_id, sealed)
        self.header.append(_HEADER_ENTRY.pack(raw_len, content))

    @property
    def full(self) -> bool:
        return self.builder.blob_bytes >= TARGET_SIZE

    async def flush(self) -> None:
        if not len(self.builder):
            return
        builder, header = self.builder, b"".join(self.header)
        self.builder, self.header = PackBuilder(), []
        sealed_header = blob.seal_plaintext(self.repo.key, PACK_HEADER_AD, header)
        pack_id, data = await asyncio.to_thread(builder.finish, sealed_header)
        uploader = self.repo.uploader
        # Invariant 1: the pack is durable (at the backend, or in the spool) before the index.
        if uploader is None:
            await self.repo.backend.put_pack(pack_id, data)
        else:
            await asyncio.to_thread(uploader.spool.put, pack_id, data)
        self.repo.index.add_pack(pack_id, len(data), builder.entries)
        if uploader is not None:
            uploader.notify()
        self.packs_written += 1
        self.bytes_written += len(data)
