"""The backup pipeline: walk → chunk → id → dedupe → seal → pack → catalogue → commit.

Reading runs in one thread, hashing and sealing on a pool sized to the cores, and the event loop
keeps order, dedupes, and writes packs. At most `MAX_IN_FLIGHT` chunks are in memory at once, so
memory is bounded whatever the file sizes. Files that cannot be read, change while being read, or
have a chunk that cannot be sealed are reported and left out of the snapshot without aborting it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from client.repository import Repository, now_rfc3339
from client.walk import Found, layout_of, pieces, walk
from engine import blob
from engine.blob import Codec, Content, Hint
from engine.catalogue import Entry, SnapshotBody, parse_lines
from engine.ids import ChunkId, SnapshotId

MAX_IN_FLIGHT = 16  # chunks being hashed and sealed at once...
MAX_IN_FLIGHT_BYTES = 12 * 1024 * 1024  # ...and their bytes (two 8 MiB bands fit): memory bounded
QUERY_BATCH_BYTES = 4 * 1024 * 1024  # ask the server about unknown chunks in batches this big
QUERY_BATCH_COUNT = 2000
FILES_CACHE_BATCH = 256  # files-cache records written per LMDB transaction


@dataclass
class Summary:
    snapshot: str = ""
    parent: str | None = None
    files: int = 0
    dirs: int = 0
    files_unchanged: int = 0
    bytes_read: int = 0
    bytes_total: int = 0
    chunks_total: int = 0
    chunks_new: int = 0
    bytes_new: int = 0
    bytes_stored: int = 0
    packs: int = 0
    bytes_uploaded: int = 0
    duration_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(slots=True)
class _Sealed:
    chunk_id: ChunkId
    raw_len: int
    content: int
    sealed: bytes | None  # None: already known, nothing to store (or failed: see `error`)
    error: str | None = None


class FileChanged(Exception):
    pass


@dataclass(slots=True)
class _Pending:
    """A catalogue entry waiting for its chunks; written once none is outstanding."""

    path: str
    entry: Entry
    st: os.stat_result | None = None  # set for files read now: the files-cache signature
    outstanding: int = 0  # chunks submitted and not yet back from the seal pool
    error: str | None = None


class Backup:
    def __init__(
        self,
        repo: Repository,
        *,
        image_codec: Codec | None = None,
        progress: Callable[[Summary, str], None] | None = None,
        host: str | None = None,
        workers: int | None = None,
        files_cache: bool = True,
        find_parent: bool = True,
    ) -> None:
        """`image_codec` None picks one per frame (`engine.blob.frame_codec`); a codec forces it.
        `files_cache=False` neither reads nor fills the files cache, and `find_parent=False`
        skips the parent search (which reads every snapshot): the agent backs up each arrived
        file once, under a name it never reuses, and tracks what it has committed itself."""
        self.repo = repo
        self.files_cache, self.find_parent = files_cache, find_parent
        self.image_codec = image_codec
        self.progress = progress or (lambda s, p: None)
        self.host = host or socket.gethostname()
        self.summary = Summary()
        self.refs: dict[ChunkId, None] = {}
        self._pool = ThreadPoolExecutor(workers or os.cpu_count() or 2, "seal")
        self._reader = ThreadPoolExecutor(1, "read")
        self._query: list[_Sealed] = []
        self._query_bytes = 0
        self._queried: set[ChunkId] = set()  # ids in `_query`, for dedupe within the batch
        # Chunks in flight across files, each with the slot of its file's chunk list it fills;
        # completions are taken in any order, so one large frame never idles the other worker.
        self._inflight: dict[asyncio.Future[_Sealed], tuple[list[Any], int, _Pending | None]] = {}
        self._inflight_bytes = 0
        self._ready: deque[_Pending] = deque()
        self._catalogue: Any = None
        self._cache_updates: list[tuple[str, dict[str, Any]]] = []

    async def run(
        self, paths: list[str], tags: list[str] | None = None, sources: list[str] | None = None
    ) -> Summary:
        """Back up `paths` into one snapshot; `sources` names where they came from (agent)."""
        start = time.monotonic()
        await self.repo.reconcile()  # a prune since the last backup: reuse nothing it removed
        if not self.repo.backend.knows_chunks:
            await self.repo.sync_index()  # packs left by a crashed run become known again
        sent_before = self.repo.backend.bytes_uploaded
        parent = await self._parent(paths) if self.find_parent else None
        uploading = self._start_uploader()
        try:
            with tempfile.TemporaryFile() as catalogue:
                await self._walk(paths, catalogue)
                tree = await self._store_catalogue(catalogue)
                await self._flush_query()
                await self.repo.packer.flush()
                await self._finish_uploads(uploading)
                body = SnapshotBody(
                    now_rfc3339(),
                    self.host,
                    sorted(os.path.abspath(p) for p in paths),
                    tree,
                    self._stats(),
                    tags or [],
                    sources or [],
                )
                # Every chunk, read back from the local catalogue, if a prune asks for them.
                every = partial(_every_chunk, catalogue, tree)
                sid = await self.repo.commit(body, parent, self.refs, self.host, every)
        finally:
            if uploading is not None:
                uploading.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._reader.shutdown(wait=False, cancel_futures=True)
        s = self.summary
        s.snapshot, s.parent = sid.hex(), parent.hex() if parent else None
        s.packs, s.bytes_stored = self.repo.packer.packs_written, self.repo.packer.bytes_written
        s.bytes_uploaded = self.repo.backend.bytes_uploaded - sent_before
        s.duration_s = round(time.monotonic() - start, 3)
        return s

    def _start_uploader(self) -> asyncio.Task[None] | None:
        """Upload sealed packs while the backup goes on (leftovers of a killed run first)."""
        if self.repo.uploader is None:
            return None
        return asyncio.create_task(self.repo.uploader.run(), name="uploader")

    async def _finish_uploads(self, uploading: asyncio.Task[None] | None) -> None:
        """Commit only once the server holds every pack (invariant 1)."""
        if uploading is None or self.repo.uploader is None:
            return
        self.repo.uploader.stop()
        await uploading  # raises the uploader's error, if it stopped on one

    def _stats(self) -> dict[str, Any]:
        s = self.summary
        return {"files": s.files, "dirs": s.dirs, "bytes": s.bytes_total}

    async def _parent(self, paths: list[str]) -> SnapshotId | None:
        want = sorted(os.path.abspath(p) for p in paths)
        for sid, _, body in reversed(await self.repo.snapshots()):
            if body.host == self.host and body.paths == want:
                return sid
        return None

    # walking

    async def _walk(self, paths: list[str], catalogue: Any) -> None:
        """Chunks of many files are in flight at once; entries reach the catalogue in order."""
        self._catalogue = catalogue
        found_iter = walk(paths, self.summary.errors)
        while (found := await self._next(found_iter)) is not None:
            pending = await self._entry(found)
            if pending is not None:
                self._ready.append(pending)
                self._emit_ready()
        await self._drain()
        self._write_files_cache()
        catalogue.seek(0)

    def _write_files_cache(self) -> None:
        """One LMDB transaction (one fsync) per batch of files, not per file: losing a batch
        in a crash only means those files are read again next time."""
        self.repo.index.put_files(self._cache_updates)
        self._cache_updates = []

    def _emit_ready(self) -> None:
        """Write every finished entry at the head of the queue to the catalogue."""
        while self._ready and self._ready[0].outstanding == 0:
            p = self._ready.popleft()
            if p.error is not None:
                self.summary.errors.append(f"{p.path}: {p.error}")
                continue
            entry = p.entry
            if entry.type == "file":
                self.summary.files += 1
                self.summary.bytes_total += entry.size
                if p.st is not None and self.files_cache:
                    self._cache_updates.append((p.path, _cache_record(p.st, entry)))
                    if len(self._cache_updates) >= FILES_CACHE_BATCH:
                        self._write_files_cache()
            self._catalogue.write(entry.encode())
            self.progress(self.summary, p.path)

    async def _next(self, it: Iterator[Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._reader, next, it, None)

    async def _entry(self, found: Found) -> _Pending | None:
        st, path = found.st, found.path
        rel = path.lstrip("/")
        if stat.S_ISDIR(st.st_mode):
            self.summary.dirs += 1
            return _Pending(path, Entry(rel, "dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns))
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            return _Pending(path, Entry(rel, "symlink", 0o777, st.st_mtime_ns, target=target))
        if not stat.S_ISREG(st.st_mode):
            return None  # sockets, fifos, devices: nothing to restore
        entry = Entry(rel, "file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size)
        cached = self._cached(path, st)
        if cached is not None:
            self.summary.files_unchanged += 1
            entry.chunks, entry.dicom = cached["chunks"], cached.get("dicom")
            return _Pending(path, entry)
        pending = _Pending(path, entry, st)
        try:
            await self._read_file(pending)
        except (OSError, FileChanged) as e:
            pending.error = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            pending.st = None
        return pending

    # files

    def _cached(self, path: str, st: os.stat_result) -> dict[str, Any] | None:
        if not self.files_cache:
            return None
        rec = self.repo.index.get_file(path)
        if rec is None or rec["sig"] != _signature(st):
            return None
        chunks = [(ChunkId.parse(c), n) for c, n in rec["chunks"]]
        # The cache is trusted only while the index still knows every chunk it names.
        if not all(c in self.repo.index for c, _ in chunks):
            return None
        return {"chunks": chunks, "dicom": rec.get("dicom")}

    async def _read_file(self, p: _Pending) -> None:
        """Read and chunk one file, submitting its chunks; they finish sealing later."""
        loop = asyncio.get_running_loop()
        with open(p.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            layout, source = await loop.run_in_executor(self._reader, layout_of, f, size)
            it = pieces(self.repo.chunker, source, layout, size, self.image_codec)
            while (item := await self._next(it)) is not None:
                await self._submit(item[0].data, item[1], p.entry.chunks, p)
        assert p.st is not None
        # ctime and inode too: a file rewritten in place with its mtime put back, or replaced
        # by a rename, keeps size and mtime but would be stored torn (issue 11 item 7).
        if _signature(os.lstat(p.path)) != _signature(p.st):
            raise FileChanged("changed while being read; skipped")
        self.summary.bytes_read += size
        p.entry.dicom = (layout.attrs or None) if layout else None

    async def _submit(
        self, data: bytes, hint: Hint, into: list[Any], owner: _Pending | None = None
    ) -> None:
        """Queue one chunk for hashing and sealing; its (id, length) fills the next slot of
        `into`. Waits while the pool has enough work (by count and by bytes)."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, self._seal, data, hint)
        self._inflight[future] = (into, len(into), owner)
        into.append(None)
        self._inflight_bytes += len(data)
        if owner is not None:
            owner.outstanding += 1
        while len(self._inflight) >= MAX_IN_FLIGHT or self._inflight_bytes >= MAX_IN_FLIGHT_BYTES:
            await self._collect()

    async def _collect(self) -> None:
        """Take whatever the pool has finished, then write the entries that are complete."""
        done, _ = await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
        for future in done:
            into, slot, owner = self._inflight.pop(future)
            sealed = future.result()
            into[slot] = (sealed.chunk_id, sealed.raw_len)
            self._inflight_bytes -= sealed.raw_len
            if owner is not None:
                owner.outstanding -= 1
            if sealed.error is None:
                await self._accept(sealed)
            elif owner is not None:  # invariant 6: the file is skipped, the snapshot goes on
                owner.error = owner.error or sealed.error
            else:
                raise RuntimeError(f"cannot seal a catalogue chunk: {sealed.error}")
        self._emit_ready()

    async def _drain(self) -> None:
        while self._inflight:
            await self._collect()

    def _seal(self, data: bytes, hint: Hint) -> _Sealed:
        """Worker thread: name the chunk, and seal it only if the index does not know it.

        Never raises: `blob.seal` already leaves a failing codec for the plain path, and a
        chunk that cannot be sealed even so comes back with `error` set (invariant 6)."""
        cid = self.repo.key.chunk_id(data)
        if cid in self.repo.index:
            return _Sealed(cid, len(data), hint.content, None)
        try:
            sealed = blob.seal(self.repo.key, cid, data, hint)
        except Exception as e:
            return _Sealed(cid, len(data), hint.content, None, f"cannot seal: {e!r}; skipped")
        return _Sealed(cid, len(data), hint.content, sealed)

    async def _accept(self, s: _Sealed) -> None:
        self.summary.chunks_total += 1
        if s.sealed is None or s.chunk_id in self._queried or s.chunk_id in self.repo.packer:
            return
        if s.chunk_id in self.repo.index:  # stored since this worker looked
            return
        self.refs[s.chunk_id] = None
        if not self.repo.backend.knows_chunks:
            await self._store(s)
            return
        self._query.append(s)
        self._queried.add(s.chunk_id)
        self._query_bytes += len(s.sealed)
        if self._query_bytes >= QUERY_BATCH_BYTES or len(self._query) >= QUERY_BATCH_COUNT:
            await self._flush_query()

    async def _flush_query(self) -> None:
        """Ask the server which of the chunks unknown here it lacks; store only those."""
        batch, self._query, self._query_bytes = self._query, [], 0
        self._queried = set()
        if not batch:
            return
        missing = await self.repo.backend.missing([s.chunk_id for s in batch])
        self.repo.index.add_remote(s.chunk_id for s in batch if s.chunk_id not in missing)
        for s in batch:
            if s.chunk_id in missing:
                await self._store(s)

    async def _store(self, s: _Sealed) -> None:
        assert s.sealed is not None
        self.repo.packer.add(s.chunk_id, s.sealed, s.raw_len, s.content)
        self.summary.chunks_new += 1
        self.summary.bytes_new += s.raw_len
        if self.repo.packer.full:
            await self.repo.packer.flush()

    # catalogue

    async def _store_catalogue(self, catalogue: Any) -> list[tuple[ChunkId, int]]:
        size = os.fstat(catalogue.fileno()).st_size
        tree: list[tuple[ChunkId, int]] = []
        before = self.summary.chunks_total
        for piece in self.repo.chunker.cut_stream(catalogue, size, 0, 0):
            await self._submit(piece.data, Hint(Content.TREE), tree)
        await self._drain()
        self.summary.chunks_total = before
        for cid, _ in tree:
            self.refs[cid] = None  # the server must hold every catalogue chunk
        return tree


def _every_chunk(catalogue: Any, tree: list[tuple[ChunkId, int]]) -> list[ChunkId]:
    """The catalogue's chunks, then every chunk its entries name, each once."""
    out: dict[ChunkId, None] = dict.fromkeys(cid for cid, _ in tree)
    catalogue.seek(0)
    for entry in parse_lines(iter(catalogue)):
        out.update(dict.fromkeys(cid for cid, _ in entry.chunks))
    return list(out)


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _cache_record(st: os.stat_result, entry: Entry) -> dict[str, Any]:
    rec: dict[str, Any] = {"sig": _signature(st), "chunks": [[c.hex(), n] for c, n in entry.chunks]}
    if entry.dicom:
        rec["dicom"] = entry.dicom
    return rec
