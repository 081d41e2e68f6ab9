"""An open repository as the client sees it: backend, master key, local index, spool and packer.

Owns where the client's packs go (the backend, or the spool a chunk server's uploader drains),
the index's reconciliation with the packs the backend holds, reading chunks and snapshots with
fallback to other copies, and skipped objects as warnings. The formats and the pack writer are
the engine's (`engine.repoconfig`, `engine.packer`). Knows nothing of command-line arguments or
what is being backed up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from client.ratelimit import RateLimiter
from client.spool import Spool, Uploader
from engine import blob
from engine.backend import Backend, Pruning
from engine.catalogue import SnapshotBody
from engine.chunker import Chunker
from engine.commit import CommitRecord, verify_commit
from engine.errors import IntegrityError, NotFound, ObjectNotFound
from engine.ids import ChunkId, PackId, SnapshotId
from engine.index import LocalIndex, Location
from engine.keys import MasterKey
from engine.packer import BackendSink, Packer, read_manifest
from engine.protocol.errors import FullRefsRequired
from engine.repoconfig import RepoConfig, unlock

INDEX_SYNC_CONCURRENCY = 8

# Blobs opened (decrypted, decoded, hashed) at once: the codecs, zstd and BLAKE3 release the GIL,
# so one thread per core keeps every core busy, and more would only hold more decoded frames.
OPEN_THREADS = os.cpu_count() or 2
# One pool for the process, shared by every open repository (a drill opens a second one on the
# same key): its threads start on first use and no repository has to remember to stop them.
_OPENING = ThreadPoolExecutor(OPEN_THREADS, "open")


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
        if uploader is None:
            self.packer = Packer(key, index, BackendSink(backend.put_pack))
        else:  # packs are built in the spool and uploaded from it (docs/design.md §2.1)
            self.packer = Packer(key, index, uploader.spool, uploader.notify)

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
        spare_keys: Sequence[bytes] = (),
    ) -> Repository:
        """Unlock a repository; a chunk-server repository gets a pack spool and an uploader.
        `spare_keys` (a recovery kit's key object) are tried after the repository's own."""
        config = RepoConfig.decode(await backend.get_config())
        warnings: list[str] = []
        key = await unlock(backend, passphrase, warnings, spare_keys)
        index = LocalIndex(cache_root / config.repo_id / "index", files_key=key.cache_key)
        uploader = None
        if backend.knows_chunks:
            spool = Spool(spool_dir or cache_root / config.repo_id / "spool")
            uploader = Uploader(backend, spool, limiter, forget=index.drop_packs)
        return cls(backend, config, key, index, uploader, warnings)

    async def close(self) -> None:
        self.packer.discard()
        self.index.close()
        await self.backend.close()

    # index reconciliation (invariant 3: the index is a cache of what the packs say)

    async def sync_index(self, lost: list[PackId] | None = None) -> int:
        """Index every pack the backend holds that the index lacks; return how many. With
        `lost`, a listed pack no site can read (`ObjectNotFound`) goes there, not raised."""
        todo = [p async for p in self.backend.list_packs() if not self.index.has_pack(p)]
        sem = asyncio.Semaphore(INDEX_SYNC_CONCURRENCY)

        async def one(pack_id: PackId) -> None:
            async with sem:
                try:
                    size, entries = await read_manifest(self.backend, pack_id)
                except ObjectNotFound:
                    if lost is None:
                        raise
                    lost.append(pack_id)
                    return
                self.index.add_pack(pack_id, size, entries)

        await asyncio.gather(*(one(p) for p in todo))
        return len(todo)

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

    async def read_chunk(self, chunk_id: ChunkId) -> bytes | bytearray:
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
                errors.append(pack_named(loc.pack_id, str(e)))
                continue
            if failed:
                for message in errors:
                    self.warn(message)
                self.index.prefer(chunk_id, loc, failed)
            return data
        raise IntegrityError("; ".join(errors))

    async def _read_at(self, chunk_id: ChunkId, loc: Location) -> bytes | bytearray:
        """The chunk at `loc`; a copy that fails authentication at one site of several is read
        at the next (`Backend.read_checked`)."""

        async def opened(sealed: bytes) -> bytes | bytearray:
            box = [sealed]  # handed over whole: the opening thread lets it go once decrypted
            del sealed
            try:
                if len(box[0]) != loc.length:
                    raise IntegrityError("pack is truncated")
                return await asyncio.get_running_loop().run_in_executor(
                    _OPENING, _open_handed_over, self.key, chunk_id, box
                )
            except IntegrityError as e:
                raise IntegrityError(pack_named(loc.pack_id, str(e))) from None

        return await self.backend.read_checked(
            f"pack {loc.pack_id.short()}",
            lambda b: b.get_pack_range(loc.pack_id, loc.offset, loc.length),
            opened,
        )

    # snapshots

    async def commit(
        self,
        body: SnapshotBody,
        parent: SnapshotId | None,
        refs: Iterable[ChunkId],
        agent: str,
        every: Callable[[], list[ChunkId]] | None = None,
    ) -> SnapshotId:
        """Commit listing `refs` (what changed). Against a pruning backend, at the generation
        this index was reconciled at; if a prune ran or runs meanwhile the server asks for
        every chunk the snapshot references, and gets them (docs/design.md §14)."""
        record = self._record(body, parent, refs, agent)
        if not isinstance(self.backend, Pruning):
            return await self.backend.commit(record)
        generation = self.index.generation or 0
        try:
            return await self.backend.commit_at(record, generation, False)
        except FullRefsRequired:
            listed = await asyncio.to_thread(every) if every else await self.chunks_of(body)
            return await self.backend.commit_at(
                self._record(body, parent, listed, agent), generation, True
            )

    def _record(
        self, body: SnapshotBody, parent: SnapshotId | None, refs: Iterable[ChunkId], agent: str
    ) -> bytes:
        unsealed = CommitRecord(body.time, agent, parent, tuple(dict.fromkeys(refs)), b"")
        # Version 2: the sealed body authenticates the record's readable fields (engine.commit).
        sealed = blob.seal_plaintext(self.key, unsealed.body_ad(), body.encode())
        return dataclasses.replace(unsealed, sealed=sealed).encode()

    async def chunks_of(self, body: SnapshotBody) -> list[ChunkId]:
        """Every chunk a snapshot references, catalogue chunks first, each once."""
        from client.restore import catalogue  # the one catalogue reader; it imports this module

        out: dict[ChunkId, None] = dict.fromkeys(cid for cid, _ in body.tree)
        async for entry in catalogue(self, body):
            out.update(dict.fromkeys(cid for cid, _ in entry.chunks))
        return list(out)

    async def reconcile(self) -> bool:
        """Before a backup: if a prune ran since this index was last reconciled, forget the
        packs the backend no longer lists and every "the server holds it" record, so nothing
        it removed is reused (docs/design.md §14). True if the index changed."""
        if not isinstance(self.backend, Pruning):
            return False
        try:
            generation = await self.backend.generation()
        except ObjectNotFound:  # a server from before pruning: nothing was ever removed
            return False
        if self.index.generation == generation:
            return False
        listed = {p async for p in self.backend.list_packs()}
        if self.uploader is not None:  # spooled, not yet sent: the spool still holds them
            listed.update(self.uploader.spool.pending())
        self.forget_packs(self.index.indexed_packs() - listed)
        self.index.drop_unknown()
        self.index.generation = generation
        return True

    def forget_packs(self, gone: set[PackId]) -> None:
        """Drop packs the backend no longer holds from the index (their chunks fall back to
        other copies): one pass over the index, in bounded slices (`LocalIndex.drop_packs`)."""
        self.index.drop_packs(gone)

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
        """Every snapshot that authenticates, oldest first (`each_snapshot`, all held)."""
        out = [s async for s in self.each_snapshot()]
        return sorted(out, key=lambda s: (s[2].time, s[0].hex()))

    async def each_snapshot(self) -> AsyncIterator[tuple[SnapshotId, CommitRecord, SnapshotBody]]:
        """Every snapshot that authenticates, one at a time in listing order; the others are
        skipped and named in `warnings`, so one planted or damaged record never hides the good
        ones. Records come without their `refs` and sealed body (checked, then dropped): a
        first backup's refs name every chunk it stored, so the records of every snapshot would
        hold the repository's chunk ids (docs/design.md §14, "Memory")."""
        for sid in await self.backend.list_snapshots():
            try:
                record, body = await self.load_snapshot(sid)
            except (IntegrityError, ObjectNotFound) as e:  # not found: quarantined since listed
                self.warn(f"skipped {e}")
                continue
            yield sid, dataclasses.replace(record, refs=(), sealed=b""), body

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


def pack_named(pack_id: PackId, message: str) -> str:
    """`message`, prefixed with the pack it concerns unless it names it already."""
    return message if pack_id.hex() in message else f"pack {pack_id.hex()}: {message}"


def now_rfc3339() -> str:
    """UTC with microseconds: snapshots are ordered by time, and two can finish in one second."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _open_handed_over(key: MasterKey, chunk_id: ChunkId, sealed: list[bytes]) -> bytes | bytearray:
    """`blob.open_blob` on the one blob in `sealed`, taken out of the list: nothing else holds
    it, so it is freed once decrypted instead of staying beside the decoding frame (an encoded
    copy per decoding thread at a restore's peak, docs/design.md §2.2)."""
    return blob.open_blob(key, chunk_id, sealed.pop())
