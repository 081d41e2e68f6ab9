"""Instances on demand: fetch one instance's chunks from the repository, keep recently read
instances in a bounded in-memory LRU cache, and hand them out as Part 10 bytes.

Owns the cache (plaintext, memory only, bounded in bytes: nothing decrypted is written to disk)
and the Part 10 framing: a file with a complete file meta group is served exactly as stored; a
bare dataset (or one with an incomplete meta group) gets a fresh meta group in front of its
unchanged dataset bytes. Never transcodes and never decodes pixel data.
"""

from __future__ import annotations

import asyncio
import io
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from client.dicomserve.index import InstanceRef
from client.repository import Repository
from engine.errors import IntegrityError
from engine.ids import ChunkId

FETCH_CONCURRENCY = 16  # chunk reads in flight, all instances together
DEFAULT_CACHE_BYTES = 512 << 20
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"


class InstanceCache:
    """LRU of instance bytes keyed by version digest, bounded by total bytes. Loop-thread only."""

    def __init__(self, limit: int = DEFAULT_CACHE_BYTES) -> None:
        self.limit = limit
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key: bytes) -> bytes | None:
        data = self._items.get(key)
        if data is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return data

    def put(self, key: bytes, data: bytes) -> None:
        if len(data) > self.limit or key in self._items:
            return
        self._items[key] = data
        self.bytes += len(data)
        while self.bytes > self.limit:
            _, old = self._items.popitem(last=False)
            self.bytes -= len(old)

    def __contains__(self, key: bytes) -> bool:
        return key in self._items


class Fetcher:
    """Reads instances through the repository (and so through whichever site answers)."""

    def __init__(self, repo: Repository, cache: InstanceCache) -> None:
        self.repo, self.cache = repo, cache
        self._inflight: dict[bytes, asyncio.Task[bytes]] = {}
        # One first-come, first-served limit for every read: the instance asked for first gets
        # the link first, and the ones read ahead fill the gaps.
        self._slots = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def read(self, ref: InstanceRef) -> bytes:
        """The instance's stored bytes, bit-exact; concurrent reads of one version share a fetch."""
        cached = self.cache.get(ref.digest)
        if cached is not None:
            return cached
        task = self._inflight.get(ref.digest)
        if task is None:
            task = self._inflight[ref.digest] = asyncio.ensure_future(self._fetch(ref))
            task.add_done_callback(lambda t: self._inflight.pop(ref.digest, None))
        return await asyncio.shield(task)

    async def _chunk(self, chunk_id: ChunkId) -> bytes | bytearray:
        async with self._slots:
            return await self.repo.read_chunk(chunk_id)

    async def _fetch(self, ref: InstanceRef) -> bytes:
        parts = await asyncio.gather(*(self._chunk(c) for c, _ in ref.chunks))
        data = b"".join(parts)
        if len(data) != ref.size:
            raise IntegrityError(f"{ref.sop}: read {len(data)} bytes, catalogue says {ref.size}")
        self.cache.put(ref.digest, data)
        return data

    async def head(self, ref: InstanceRef) -> bytes:
        """The first chunk only (preamble, meta group and the start of the dataset)."""
        cached = self.cache.get(ref.digest)
        if cached is not None or not ref.chunks:
            return cached or b""
        return bytes(await self._chunk(ref.chunks[0][0]))  # a header chunk: already bytes


@dataclass(frozen=True, slots=True)
class Part10:
    """An instance as a Part 10 file: `data[offset:]` is the dataset exactly as stored."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    data: bytes
    offset: int


def part10(data: bytes, hint_ts: str = "") -> Part10:
    """Frame stored bytes as Part 10; raises ValueError for a file that is no storable instance."""
    meta, offset, preamble = _file_meta(data)
    ids = (meta.get("MediaStorageSOPClassUID"), meta.get("MediaStorageSOPInstanceUID"),
           meta.get("TransferSyntaxUID"))  # fmt: skip
    if preamble and all(ids):
        return Part10(str(ids[0]), str(ids[1]), str(ids[2]), data, offset)
    ds_class, ds_instance, ds_ts = dataset_ids(data[offset:])
    sop_class, sop_instance = str(ids[0] or ds_class), str(ids[1] or ds_instance)
    ts = str(ids[2] or hint_ts or ds_ts)
    if not sop_class or not sop_instance:
        raise ValueError("no SOP Class UID or SOP Instance UID: not a storable instance")
    head = _meta_bytes(sop_class, sop_instance, ts)
    return Part10(sop_class, sop_instance, ts, head + data[offset:], len(head))


def sop_class_of(head: bytes) -> str:
    """SOP Class UID from the start of a file (meta group, else the dataset); "" if not found."""
    try:
        meta, offset, _ = _file_meta(head)
        if meta.get("MediaStorageSOPClassUID"):
            return str(meta.MediaStorageSOPClassUID)
        return dataset_ids(head[offset:])[0]
    except Exception:  # a truncated head: the caller fetches the whole instance instead
        return ""


def _file_meta(data: bytes) -> tuple[Any, int, bool]:
    from pydicom.dataset import Dataset
    from pydicom.filereader import read_dataset

    fp = io.BytesIO(data)
    preamble = data[128:132] == b"DICM"
    fp.seek(132 if preamble else 0)
    try:
        meta = read_dataset(
            fp, is_implicit_VR=False, is_little_endian=True,
            stop_when=lambda tag, vr, length: tag.group != 2,
        )  # fmt: skip
    except Exception:  # an unreadable meta group: the file is a bare dataset
        fp.seek(132 if preamble else 0)
        meta = Dataset()
    return meta, fp.tell(), preamble


def dataset_ids(dataset: bytes) -> tuple[str, str, str]:
    """SOP class, SOP instance and the encoding pydicom finds a bare dataset in."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dataset), stop_before_pixels=True, force=True)
    implicit, little = ds.original_encoding
    ts = IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE if little else EXPLICIT_VR_BE
    return str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")), ts


def _meta_bytes(sop_class: str, sop_instance: str, ts: str) -> bytes:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(ts)
    out = DicomBytesIO()
    out.write(bytes(128) + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return bytes(out.getvalue())
