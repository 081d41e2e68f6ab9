"""Content-defined chunking: FastCDC (pyfastcdc) with a keyed gear table and forced cut points.

The caller supplies segments (whole file, or DICOM structure from `engine.dicom`); chunks never
cross a segment boundary, and FastCDC cuts inside each segment. Native DICOM frames are cut at
whole rows instead, so an image codec can take each chunk. Reads the file in bounded pieces:
memory stays O(max chunk size) whatever the file size. Does not hash, encode or store.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

from pyfastcdc import FastCDC

MIN_SIZE = 256 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 8 * 1024 * 1024
MAX_FRAME_CHUNK = 8 * 1024 * 1024  # native frames up to this size stay one chunk
BUFFERED_MAX = 16 * 1024 * 1024  # segments up to this size are read whole, then cut in memory


@dataclass(frozen=True, slots=True)
class Piece:
    """One chunk's bytes and where they came from."""

    offset: int
    data: bytes
    segment: int  # index of the segment this piece belongs to
    rows: int = 0  # for row bands of a native frame: rows in this band, else 0


class _Window(io.RawIOBase):
    """A read-only view of `length` bytes of `f` from its current position."""

    def __init__(self, f: BinaryIO, length: int) -> None:
        self._f, self._left = f, length

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        n = self._f.readinto(memoryview(b)[: min(len(b), self._left)])  # type: ignore[attr-defined]
        self._left -= n or 0
        return n or 0


class Chunker:
    def __init__(self, seed: int) -> None:
        # pyfastcdc takes a 64-bit seed; the keyed seed hides boundaries' link to content.
        self._cdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, seed=seed)

    def cut_stream(self, f: BinaryIO, length: int, offset: int, segment: int) -> Iterator[Piece]:
        """FastCDC over `length` bytes of `f`, which is positioned at `offset`."""
        if length <= MIN_SIZE:  # one chunk whatever the content: skip the chunker entirely
            if length:
                yield Piece(offset, _read_exact(f, length), segment)
            return
        if length <= BUFFERED_MAX:
            # pyfastcdc's stream mode costs milliseconds per call to set up; a buffer is cheap.
            data = _read_exact(f, length)
            for c in self._cdc.cut_buf(data):
                yield Piece(offset + c.offset, data[c.offset : c.offset + c.length], segment)
            return
        for c in self._cdc.cut_stream(_Window(f, length)):
            yield Piece(offset + c.offset, bytes(c.data), segment)

    @staticmethod
    def cut_rows(
        f: BinaryIO, length: int, offset: int, segment: int, row_bytes: int
    ) -> Iterator[Piece]:
        """Cut a native frame into bands of whole rows, each ≤ MAX_FRAME_CHUNK."""
        if length <= MAX_FRAME_CHUNK or row_bytes <= 0 or length % row_bytes:
            rows = length // row_bytes if row_bytes and length % row_bytes == 0 else 0
            yield Piece(offset, _read_exact(f, length), segment, rows)
            return
        band = max(1, MAX_FRAME_CHUNK // row_bytes) * row_bytes
        done = 0
        while done < length:
            n = min(band, length - done)
            yield Piece(offset + done, _read_exact(f, n), segment, n // row_bytes)
            done += n


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise OSError(f"file shrank while reading (wanted {n} bytes, got {len(data)})")
    return data


def band_layout(layout: object, rows: int) -> object:
    """The pixel layout of a band of `rows` rows of a frame with `layout`."""
    return replace(layout, rows=rows)  # type: ignore[type-var]
