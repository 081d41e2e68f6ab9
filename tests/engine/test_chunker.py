"""The chunker on its own: cut points tile the input, depend on the keyed seed, stay within
the size bounds, and native frames are cut at whole rows."""

from __future__ import annotations

import io
import random

import pytest

from engine.chunker import MAX_FRAME_CHUNK, MAX_SIZE, MIN_SIZE, Chunker

MiB = 1024 * 1024


def data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def cut(chunker: Chunker, blob: bytes, offset: int = 0) -> list[tuple[int, int]]:
    f = io.BytesIO(blob)
    return [(p.offset, len(p.data)) for p in chunker.cut_stream(f, len(blob), offset, 0)]


@pytest.mark.parametrize("size", [0, 1, MIN_SIZE, MIN_SIZE + 1, 5 * MiB, 20 * MiB])
def test_pieces_tile_the_segment_exactly_within_the_size_bounds(size: int) -> None:
    blob = data(size)
    pieces = list(Chunker(seed=7).cut_stream(io.BytesIO(blob), size, 100, 3))
    assert b"".join(p.data for p in pieces) == blob
    assert [p.offset for p in pieces] == [
        100 + sum(len(q.data) for q in pieces[:i]) for i in range(len(pieces))
    ]
    assert all(p.segment == 3 for p in pieces)
    assert all(len(p.data) <= MAX_SIZE for p in pieces)
    assert all(len(p.data) >= MIN_SIZE for p in pieces[:-1])


def test_buffered_and_streamed_segments_cut_at_the_same_content_points() -> None:
    # Up to 16 MiB a segment is cut in memory, above it through pyfastcdc's stream mode:
    # the cut points inside a shared prefix must agree, or a file growing past 16 MiB re-sends.
    blob = data(20 * MiB, seed=1)
    small = cut(Chunker(seed=7), blob[: 12 * MiB])
    large = cut(Chunker(seed=7), blob)
    assert small[:-1] == large[: len(small) - 1]


def test_cut_points_follow_the_keyed_seed_and_shift_with_an_insertion() -> None:
    blob = data(8 * MiB, seed=2)
    a, b = cut(Chunker(seed=1), blob), cut(Chunker(seed=2), blob)
    assert a != b  # another repository's key gives other boundaries
    shifted = cut(Chunker(seed=1), b"x" * 1000 + blob)
    ends_a = {o + n for o, n in a}
    ends_shifted = {o + n - 1000 for o, n in shifted}
    assert len(ends_a & ends_shifted) >= len(ends_a) - 2  # content-defined: boundaries resync


def test_native_frames_are_cut_into_bands_of_whole_rows() -> None:
    row = 4096
    length = MAX_FRAME_CHUNK + 10 * row
    pieces = list(Chunker.cut_rows(io.BytesIO(bytes(length)), length, 0, 1, row))
    assert sum(len(p.data) for p in pieces) == length
    assert all(len(p.data) % row == 0 and len(p.data) <= MAX_FRAME_CHUNK for p in pieces)
    assert [p.rows for p in pieces] == [len(p.data) // row for p in pieces]


def test_a_frame_that_is_not_whole_rows_stays_one_piece_without_a_row_count() -> None:
    pieces = list(Chunker.cut_rows(io.BytesIO(bytes(1001)), 1001, 0, 0, 100))
    assert [(len(p.data), p.rows) for p in pieces] == [(1001, 0)]


def test_a_file_that_shrank_under_the_chunker_is_an_os_error() -> None:
    with pytest.raises(OSError, match="shrank"):
        list(Chunker(seed=1).cut_stream(io.BytesIO(bytes(10)), 100, 0, 0))
