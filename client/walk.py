"""Walking the paths to back up, and reading one file as hinted chunks.

Owns the mapping from a file's structure (DICOM segments from `engine.dicom`, or plain bytes) to
chunk pieces with encoder hints. Does not hash, seal, or talk to the repository.
"""

from __future__ import annotations

import io
import mmap
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from engine.blob import Codec, Content, Hint
from engine.chunker import Chunker, Piece, band_layout
from engine.dicom import DicomLayout, SegmentKind, Sparse, segment

LAYOUT_READ = 16 * 1024 * 1024  # files up to this size are read whole; of larger ones, the start
# A private anonymous map: pages never written cost no memory; no swap is reserved for the rest.
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux's value; Python 3.11 lacks it
_SPARSE_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE

_SEGMENT_CONTENT = {
    SegmentKind.RAW: Content.DATA,
    SegmentKind.HEADER: Content.DICOM_HEADER,
    SegmentKind.NATIVE_FRAME: Content.NATIVE_FRAME,
    SegmentKind.ENCAPSULATED_FRAME: Content.COMPRESSED_FRAME,
    SegmentKind.TRAILER: Content.DATA,
}


@dataclass(frozen=True, slots=True)
class Found:
    path: str  # absolute
    st: os.stat_result


def walk(paths: list[str], errors: list[str]) -> Iterator[Found]:
    """Yield every path under `paths` (not following symlinks), sorted, parents first."""
    yield from _walk_paths(sorted(os.path.abspath(p) for p in paths), errors)


def _walk_paths(paths: list[str], errors: list[str]) -> Iterator[Found]:
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError as e:
            errors.append(f"{path}: {e.strerror}")
            continue
        yield Found(path, st)
        if stat.S_ISDIR(st.st_mode):
            try:
                names = sorted(os.listdir(path))
            except OSError as e:
                errors.append(f"{path}: {e.strerror}")
                continue
            yield from _walk_paths([os.path.join(path, n) for n in names], errors)


def layout_of(f: BinaryIO, size: int) -> tuple[DicomLayout | None, BinaryIO]:
    """Segment a file by its DICOM structure; return the layout and the stream to chunk from.

    Plain reads only: a memory map of a file that shrinks while it is read kills the process with
    SIGBUS (issue 11 item 6). A file up to LAYOUT_READ bytes is read whole and chunked from
    memory; of a larger one only the first LAYOUT_READ bytes and the regions the walker asks for
    are read, into a sparse anonymous map (memory stays bounded, invariant 5). A file that
    shrinks raises OSError; one that changes otherwise is caught by the caller's stat check.
    """
    if size == 0:
        return None, f
    if size <= LAYOUT_READ:
        data = f.read(size)
        if len(data) != size:
            raise OSError(f"file shrank while reading (wanted {size} bytes, got {len(data)})")
        return segment(data), io.BytesIO(data)
    return _sparse_layout(f, size), f


def _sparse_layout(f: BinaryIO, size: int) -> DicomLayout | None:
    try:
        sparse_map = mmap.mmap(-1, size, flags=_SPARSE_FLAGS)
    except (OSError, ValueError, OverflowError):
        return None  # no address space for the map: the file is chunked as plain bytes
    with sparse_map as mm:
        view = memoryview(mm)
        try:
            with view[:LAYOUT_READ] as head:
                filled = f.readinto(head)  # type: ignore[attr-defined]
            return segment(view, Sparse(filled, _fetcher(f.fileno(), mm, filled)))
        finally:
            view.release()


def _fetcher(fd: int, mm: mmap.mmap, filled: int) -> Callable[[int, int], None]:
    def fetch(offset: int, length: int) -> None:
        if offset + length > filled:  # short reads (a file that shrank) leave zeros
            data = os.pread(fd, length, offset)
            mm[offset : offset + len(data)] = data

    return fetch


def pieces(
    chunker: Chunker,
    f: BinaryIO,
    layout: DicomLayout | None,
    size: int,
    image_codec: Codec | None = None,
) -> Iterator[tuple[Piece, Hint]]:
    """Chunk an open file: forced cuts at segment boundaries, FastCDC or row bands inside."""
    if layout is None or not layout.segments:
        f.seek(0)
        for p in chunker.cut_stream(f, size, 0, 0):
            yield p, Hint()
        return
    pixel = layout.pixel
    for i, seg in enumerate(layout.segments):
        f.seek(seg.offset)
        content = _SEGMENT_CONTENT[seg.kind]
        if seg.kind == SegmentKind.NATIVE_FRAME and pixel is not None:
            row_bytes = pixel.columns * pixel.samples_per_pixel * (pixel.bits_allocated // 8)
            for p in chunker.cut_rows(f, seg.length, seg.offset, i, row_bytes):
                layout_p = band_layout(pixel, p.rows) if p.rows else None
                yield p, Hint(content, layout_p, image_codec)
        else:
            for p in chunker.cut_stream(f, seg.length, seg.offset, i):
                yield p, Hint(content)
