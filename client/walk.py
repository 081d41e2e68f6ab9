"""Walking the paths to back up, and reading one file as hinted chunks.

Owns the mapping from a file's structure (DICOM segments from `engine.dicom`, or plain bytes) to
chunk pieces with encoder hints. Does not hash, seal, or talk to the repository.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from engine.blob import Content, Hint
from engine.chunker import Chunker, Piece, band_layout
from engine.dicom import DicomLayout, SegmentKind, segment

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


def layout_of(f: BinaryIO, size: int) -> DicomLayout | None:
    """Segment a file by its DICOM structure, mapping it rather than reading it all."""
    if size == 0:
        return None
    with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            return segment(view)
        finally:
            view.release()


def pieces(
    chunker: Chunker, f: BinaryIO, layout: DicomLayout | None, size: int, image_codec: int
) -> Iterator[tuple[Piece, Hint]]:
    """Chunk an open file: forced cuts at segment boundaries, FastCDC or row bands inside."""
    if layout is None or not layout.segments:
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
                yield p, Hint(content, layout_p, image_codec)  # type: ignore[arg-type]
        else:
            for p in chunker.cut_stream(f, seg.length, seg.offset, i):
                yield p, Hint(content)
