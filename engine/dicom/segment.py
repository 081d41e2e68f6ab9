"""DICOM byte layout: where the header, each pixel frame and the trailer of a Part 10 file lie.

Owns the fast tag walker (explicit/implicit VR little endian) that cuts a file into segments for
the chunker and collects the catalogue attributes' raw values (decoded by `engine.dicom.attrs`,
which also reads odd files through pydicom).
It never raises, never copies the whole buffer, never decodes pixels and never rewrites bytes:
segments always cover the input exactly, so restore stays bit-exact whatever the layout says.
It does not read files: a caller with a large file passes a sparse copy (`Sparse`) and the walker
asks it for the few regions it needs beyond the start, so its cost and memory stay bounded.
"""

from __future__ import annotations

import enum
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass

from engine.dicom.attrs import (
    CATALOGUE,
    TAG_CHARSET,
    TAG_NUMBER_OF_FRAMES,
    TAG_TRANSFER_SYNTAX,
    ascii_value,
    decode_attrs,
    pydicom_attrs,
)

# --- Part 10 framing -----------------------------------------------------------------------------
PREAMBLE_SIZE = 128  # bytes of free-form preamble before the magic
MAGIC = b"DICM"  # 4 bytes at offset 128
META_START = PREAMBLE_SIZE + len(MAGIC)  # 132: first file meta element
META_GROUP = 0x0002  # file meta elements; always explicit VR little endian

# --- element headers (PS3.5 7.1) -----------------------------------------------------------------
SHORT_HEADER = 8  # tag 4 + VR 2 + length 2 (explicit), or tag 4 + length 4 (implicit, items)
LONG_HEADER = 12  # tag 4 + VR 2 + reserved 2 + length 4 (explicit VR with a 32-bit length)
UNDEFINED_LENGTH = 0xFFFFFFFF
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
     b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)  # fmt: skip
BARE_FIRST_GROUPS = (META_GROUP, 0x0008)  # groups a dataset without preamble may open with
MAX_NESTING = 64  # sequence depth beyond which a file is called malformed (real files use < 10)

# --- tags, as (group << 16) | element ------------------------------------------------------------
TAG_ITEM = 0xFFFEE000
TAG_ITEM_DELIMITER = 0xFFFEE00D
TAG_SEQUENCE_DELIMITER = 0xFFFEE0DD
ITEM_GROUP = 0xFFFE
TAG_SAMPLES_PER_PIXEL = 0x00280002
TAG_PLANAR_CONFIGURATION = 0x00280006
TAG_ROWS = 0x00280010
TAG_COLUMNS = 0x00280011
TAG_BITS_ALLOCATED = 0x00280100
TAG_BITS_STORED = 0x00280101
TAG_PIXEL_REPRESENTATION = 0x00280103
TAG_EXTENDED_OFFSET_TABLE = 0x7FE00001
TAG_PIXEL_DATA = 0x7FE00010

# --- transfer syntaxes ---------------------------------------------------------------------------
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"  # retired; left to pydicom
DEFLATED_LE = "1.2.840.10008.1.2.1.99"  # zlib over the dataset; left to pydicom

PIXEL_TAGS = frozenset(
    {TAG_SAMPLES_PER_PIXEL, TAG_PLANAR_CONFIGURATION, TAG_ROWS, TAG_COLUMNS, TAG_BITS_ALLOCATED,
     TAG_BITS_STORED, TAG_PIXEL_REPRESENTATION, TAG_EXTENDED_OFFSET_TABLE, TAG_CHARSET}
)  # fmt: skip
COLLECTED = frozenset(CATALOGUE) | PIXEL_TAGS
# Tags the walker stops at, keyed as read by one little endian uint32: element << 16 | group.
_NOTICED_LE = {((t & 0xFFFF) << 16) | (t >> 16): t for t in COLLECTED | {TAG_PIXEL_DATA}}
MAX_COLLECTED_VALUE = 1 << 20  # bytes; a larger catalogue value is ignored, not copied
MAX_TRAILER_WALK = 1 << 20  # bytes; a longer trailer is kept as opaque bytes, not walked
MAX_OFFSET_TABLE = 1 << 20  # bytes; a larger Basic Offset Table (> 256k frames) is not read
# The pydicom fallback reads an odd file at ~2.6 MiB/s when its bytes parse as endless tiny
# elements (e.g. DICM then zeros): larger files are plain bytes without it (issue 11 item 10).
PYDICOM_MAX_SIZE = 8 << 20
# Frames become segments (and so chunks) one by one unless there are very many very small ones:
# 200,000 one-byte frames made 200,000 chunks of a 200 kB file and took 34 s to back up.
MANY_FRAMES = 1024
MAX_FRAGMENTS = 1 << 18  # items listed at most (a few MB); more, and the file is RAW
SMALL_FRAME = 64 << 10  # bytes, on average over the frames

# Frame starts recognised inside fragments when no offset table says where frames begin.
FRAME_START_MARKERS = (b"\xff\xd8", b"\xff\x4f\xff\x51")  # JPEG SOI (2 B), JPEG 2000 SOC+SIZ (4 B)
MARKER_BYTES = max(len(m) for m in FRAME_START_MARKERS)

_TAG_VR_LEN = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_KEY_VR_LEN = struct.Struct("<I2sH")  # tag as one uint32 (see _NOTICED_LE), VR, 16-bit length
_KEY_LEN = struct.Struct("<II")  # tag as one uint32, 32-bit length (implicit VR, items)
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class SegmentKind(enum.IntEnum):
    """What a segment holds; the chunker cuts at every boundary and picks codecs by kind."""

    RAW = 0  # not DICOM, or not understood: chunk with plain CDC
    HEADER = 1  # preamble+meta+dataset through the Pixel Data element header (+ Basic Offset Table)
    NATIVE_FRAME = 2  # exact bytes of one uncompressed frame
    ENCAPSULATED_FRAME = 3  # item headers + fragments of one compressed frame
    TRAILER = 4  # after the pixel data: delimiter, trailing elements, padding


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """One native frame's geometry and sample format, for image codecs."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    planar_configuration: int
    little_endian: bool


@dataclass(frozen=True, slots=True)
class Segment:
    """A byte range of the input: `buf[offset : offset + length]`."""

    kind: SegmentKind
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class DicomLayout:
    """How one buffer splits into segments, plus what the catalogue needs to know about it.

    `segments` are contiguous, in order, non-empty and cover the input exactly. `pixel` is set
    only when the frames are NATIVE_FRAME segments. `reason` says why the layout fell back to a
    single RAW segment, and is None otherwise.
    """

    segments: tuple[Segment, ...]
    transfer_syntax: str | None
    pixel: PixelLayout | None
    attrs: dict[str, str]
    reason: str | None


@dataclass(frozen=True, slots=True)
class Sparse:
    """A buffer that holds only part of a file: its first `filled` bytes, and whatever
    `fetch(offset, length)` has brought in since; the rest reads as zeros. The walker reads
    element headers only within `filled`, and fetches trailers, offset tables and item headers."""

    filled: int
    fetch: Callable[[int, int], None]


def _whole(size: int) -> Sparse:
    return Sparse(size, lambda offset, length: None)


class _Malformed(Exception):
    """The fast walker will not guess about these bytes; the message says where."""


# --- public entry point --------------------------------------------------------------------------


def segment(buf: bytes | memoryview, sparse: Sparse | None = None) -> DicomLayout:
    """Cut `buf` into header, frame and trailer segments; a single RAW segment when unsure.

    Never raises. The walker reads only element headers and a few small values, so the cost is
    independent of the pixel data size. `sparse` says which part of `buf` holds the file (all
    of it when None).
    """
    try:
        view = memoryview(buf).cast("B")
    except (TypeError, ValueError):  # e.g. a non-contiguous view: not worth a copy to understand
        return _raw(memoryview(buf).nbytes, "not a contiguous buffer", None, {})
    if len(view) == 0:
        return DicomLayout((), None, None, {}, "empty")
    try:
        return _fast_layout(view, sparse or _whole(len(view)))
    except (_Malformed, struct.error) as exc:
        reason = str(exc) if isinstance(exc, _Malformed) else "truncated element header"
        if not _looks_like_dicom(view):
            return _raw(len(view), "not DICOM", None, {})
        if len(view) > PYDICOM_MAX_SIZE or (sparse is not None and sparse.filled < len(view)):
            return _raw(len(view), f"{reason}; too large for the pydicom fallback", None, {})
        return _pydicom_layout(view, reason)
    except Exception as exc:  # a walker bug must not stop a backup: fall back to plain CDC
        return _raw(len(view), f"walker error: {type(exc).__name__}", None, {})


def _raw(size: int, reason: str, ts: str | None, attrs: dict[str, str]) -> DicomLayout:
    segments = (Segment(SegmentKind.RAW, 0, size),) if size else ()
    return DicomLayout(segments, ts, None, attrs, reason)


def _looks_like_dicom(view: memoryview) -> bool:
    if len(view) >= META_START and view[PREAMBLE_SIZE:META_START] == MAGIC:
        return True
    return _peek_encoding(view, 0, bare=True) is not None


# --- fast path -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pixel:
    """Where the top-level Pixel Data element's value lies (length may be undefined)."""

    value_offset: int
    length: int


def _fast_layout(view: memoryview, sparse: Sparse) -> DicomLayout:
    collected: dict[int, bytes] = {}
    pos = _dataset_start(view, collected)
    ts = ascii_value(collected[TAG_TRANSFER_SYNTAX]) if TAG_TRANSFER_SYNTAX in collected else None
    if ts in (EXPLICIT_VR_BE, DEFLATED_LE):
        raise _Malformed(f"transfer syntax {ts} is left to pydicom")
    bare = pos == 0 or view[PREAMBLE_SIZE:META_START] != MAGIC
    encoding = _peek_encoding(view, pos, bare) if pos < len(view) else "explicit"
    if encoding is None:
        raise _Malformed(f"no little endian element at 0x{pos:x}")
    if encoding == "big":
        raise _Malformed("big endian dataset is left to pydicom")
    implicit = encoding == "implicit"
    pixel = _walk_header(view, pos, implicit, collected, sparse.filled)
    attrs = decode_attrs(collected)
    if not ts:  # no file meta: name the encoding the dataset was found in
        ts = IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE
    if pixel is None:
        return DicomLayout((Segment(SegmentKind.HEADER, 0, len(view)),), ts, None, attrs, None)
    if pixel.length == UNDEFINED_LENGTH:
        segments = _encapsulated_segments(view, pixel, implicit, collected, sparse)
        return DicomLayout(segments, ts, None, attrs, None)
    return _native_layout(view, pixel, implicit, collected, ts, attrs, sparse)


def _dataset_start(view: memoryview, collected: dict[int, bytes]) -> int:
    """Skip preamble and file meta; return the offset of the first dataset element."""
    if len(view) >= META_START and view[PREAMBLE_SIZE:META_START] == MAGIC:
        pos = META_START
    elif _peek_encoding(view, 0, bare=True) is not None:
        pos = 0  # no preamble: a bare dataset, possibly opening with a meta group
    else:
        raise _Malformed("not DICOM")
    while pos + SHORT_HEADER <= len(view) and _U16.unpack_from(view, pos)[0] == META_GROUP:
        tag, value_offset, length = _element_header(view, pos, implicit=False)
        if length == UNDEFINED_LENGTH:
            raise _Malformed(f"undefined length in file meta at 0x{pos:x}")
        pos = _value_end(view, value_offset, length)
        if tag in COLLECTED:
            collected[tag] = bytes(view[value_offset:pos])
    return pos


def _peek_encoding(view: memoryview, pos: int, bare: bool) -> str | None:
    """Guess a dataset's encoding from its first element: explicit, implicit, big or None.

    A `bare` dataset (no preamble) must also open with a group real datasets open with, since
    nothing else tells it from arbitrary bytes.
    """
    if pos + SHORT_HEADER > len(view):
        return None
    group_le, group_be = _U16.unpack_from(view, pos)[0], struct.unpack_from(">H", view, pos)[0]
    explicit = bytes(view[pos + 4 : pos + 6]) in LONG_VRS | SHORT_VRS
    if not bare or group_le in BARE_FIRST_GROUPS:
        return "explicit" if explicit else "implicit"
    if group_be in BARE_FIRST_GROUPS and explicit:
        return "big"
    return None


def _element_header(view: memoryview, pos: int, implicit: bool) -> tuple[int, int, int]:
    """Return (tag, value offset, value length) of the element whose header starts at `pos`."""
    if pos + SHORT_HEADER > len(view):
        raise _Malformed(f"truncated at 0x{pos:x}")
    group, element, vr, short_length = _TAG_VR_LEN.unpack_from(view, pos)
    tag = (group << 16) | element
    if implicit or group == ITEM_GROUP:
        return tag, pos + SHORT_HEADER, _U32.unpack_from(view, pos + 4)[0]
    if vr in SHORT_VRS:
        return tag, pos + SHORT_HEADER, short_length
    if vr not in LONG_VRS:
        raise _Malformed(f"unknown VR {vr!r} at 0x{pos:x}")
    if pos + LONG_HEADER > len(view):
        raise _Malformed(f"truncated at 0x{pos:x}")
    return tag, pos + LONG_HEADER, _U32.unpack_from(view, pos + 8)[0]


def _value_end(view: memoryview, value_offset: int, length: int) -> int:
    end = value_offset + length
    if end > len(view):
        raise _Malformed(f"truncated at 0x{len(view):x}")
    return end


def _is_un(view: memoryview, pos: int, implicit: bool) -> bool:
    return not implicit and view[pos + 4 : pos + 6] == b"UN"


def _walk_header(
    view: memoryview, pos: int, implicit: bool, collected: dict[int, bytes], filled: int
) -> _Pixel | None:
    """Walk top-level elements from `pos`, collecting small values we need, up to (7FE0,0010):
    return where it is, or None when the buffer ends first, exactly at an element boundary.

    Only elements starting within the first `filled` bytes are read, which bounds the walk
    (a file of zeros parses as endless 8-byte elements). A header cut short raises struct.error,
    which `segment` reports as truncation.
    """
    walk = _walk_implicit if implicit else _walk_explicit
    pixel, pos = walk(view, pos, collected, True, filled)
    if pixel is None and pos > len(view):
        raise _Malformed(f"truncated at 0x{len(view):x}")
    if pixel is None and pos < len(view):
        raise _Malformed(f"no pixel data in the first {filled} bytes")
    return pixel


def _walk_trailer(view: memoryview, pos: int, implicit: bool, sparse: Sparse) -> None:
    """Check that the elements after the pixel data end exactly at the end of the buffer.

    A trailer over MAX_TRAILER_WALK bytes is left unchecked: it is kept as opaque bytes, which
    restores bit-exact whatever it holds.
    """
    if len(view) - pos > MAX_TRAILER_WALK:
        return
    sparse.fetch(pos, len(view) - pos)
    walk = _walk_implicit if implicit else _walk_explicit
    _, pos = walk(view, pos, {}, False, len(view))
    if pos != len(view):
        raise _Malformed(f"truncated at 0x{len(view):x}")


# The two walkers below are the hot loop (a CT header has ~250 elements, ~0.3 µs each), so they
# decode headers inline, match tags as the little endian uint32 they read (`_NOTICED_LE`), and
# leave rare shapes (long VRs, undefined lengths) to the helpers.


def _walk_explicit(
    view: memoryview, pos: int, collected: dict[int, bytes], stop_at_pixels: bool, end: int
) -> tuple[_Pixel | None, int]:
    unpack = _KEY_VR_LEN.unpack_from
    while pos < end:
        key, vr, length = unpack(view, pos)
        if vr in SHORT_VRS:
            value = pos + SHORT_HEADER
        else:
            _, value, length = _element_header(view, pos, implicit=False)
        if key in _NOTICED_LE:
            tag = _NOTICED_LE[key]
            if tag == TAG_PIXEL_DATA and stop_at_pixels:
                return _Pixel(value, length), pos
            if length <= MAX_COLLECTED_VALUE:
                collected[tag] = bytes(view[value : value + length])
        if length == UNDEFINED_LENGTH:
            pos = _skip_undefined_sequence(view, value, vr == b"UN", 1)
        else:
            pos = value + length
    return None, pos


def _walk_implicit(
    view: memoryview, pos: int, collected: dict[int, bytes], stop_at_pixels: bool, end: int
) -> tuple[_Pixel | None, int]:
    unpack = _KEY_LEN.unpack_from
    while pos < end:
        key, length = unpack(view, pos)
        value = pos + SHORT_HEADER
        if key in _NOTICED_LE:
            tag = _NOTICED_LE[key]
            if tag == TAG_PIXEL_DATA and stop_at_pixels:
                return _Pixel(value, length), pos
            if length <= MAX_COLLECTED_VALUE:
                collected[tag] = bytes(view[value : value + length])
        if length == UNDEFINED_LENGTH:
            pos = _skip_undefined_sequence(view, value, True, 1)
        else:
            pos = value + length
    return None, pos


def _skip_undefined_sequence(view: memoryview, pos: int, implicit: bool, depth: int) -> int:
    """Skip items up to and including the sequence delimiter; return the offset after it."""
    if depth > MAX_NESTING:
        raise _Malformed(f"sequences nested too deep at 0x{pos:x}")
    while True:
        tag, value_offset, length = _element_header(view, pos, implicit=True)
        if tag == TAG_SEQUENCE_DELIMITER:
            return value_offset
        if tag != TAG_ITEM:
            raise _Malformed(f"expected an item at 0x{pos:x}")
        if length == UNDEFINED_LENGTH:
            pos = _skip_undefined_item(view, value_offset, implicit, depth + 1)
        else:
            pos = _value_end(view, value_offset, length)


def _skip_undefined_item(view: memoryview, pos: int, implicit: bool, depth: int) -> int:
    """Skip a nested dataset up to and including its item delimiter."""
    while True:
        tag, value_offset, length = _element_header(view, pos, implicit)
        if tag == TAG_ITEM_DELIMITER:
            return value_offset
        if length == UNDEFINED_LENGTH:
            nested_implicit = implicit or _is_un(view, pos, implicit)
            pos = _skip_undefined_sequence(view, value_offset, nested_implicit, depth)
        else:
            pos = _value_end(view, value_offset, length)


# --- native pixel data ---------------------------------------------------------------------------


def _native_layout(
    view: memoryview,
    pixel: _Pixel,
    implicit: bool,
    collected: dict[int, bytes],
    ts: str | None,
    attrs: dict[str, str],
    sparse: Sparse,
) -> DicomLayout:
    value_end = _value_end(view, pixel.value_offset, pixel.length)
    _walk_trailer(view, value_end, implicit, sparse)
    layout = _pixel_layout(collected)
    frame_sizes = _native_frame_sizes(layout, _number_of_frames(collected), pixel.length)
    header = Segment(SegmentKind.HEADER, 0, pixel.value_offset)
    if frame_sizes is None:
        # Frames cannot be told apart: keep the value apart from the header, but as opaque bytes.
        value = Segment(SegmentKind.TRAILER, pixel.value_offset, pixel.length)
        rest = Segment(SegmentKind.TRAILER, value_end, len(view) - value_end)
        return DicomLayout(_non_empty(header, value, rest), ts, None, attrs, None)
    frames, pos = [], pixel.value_offset
    for size in frame_sizes:
        frames.append(Segment(SegmentKind.NATIVE_FRAME, pos, size))
        pos += size
    trailer = Segment(SegmentKind.TRAILER, pos, len(view) - pos)
    return DicomLayout(_non_empty(header, *frames, trailer), ts, layout, attrs, None)


def _native_frame_sizes(
    layout: PixelLayout | None, frames: int | None, length: int
) -> list[int] | None:
    """Byte size of each frame, or None when frames cannot be located in a value of `length`."""
    if layout is None or frames is None or frames < 1 or length == 0:
        return None
    frame_bits = layout.rows * layout.columns * layout.samples_per_pixel * layout.bits_allocated
    if _too_fine(frames, length):
        return None
    if frame_bits > 0 and frame_bits % 8 == 0 and frames * (frame_bits // 8) <= length:
        return [frame_bits // 8] * frames
    return [length] if frames == 1 else None


def _too_fine(frames: int, length: int) -> bool:
    """Whether `frames` frames in `length` bytes are too many and too small to be segments."""
    return frames > MANY_FRAMES and length < frames * SMALL_FRAME


def _pixel_layout(collected: dict[int, bytes]) -> PixelLayout | None:
    values = [
        _us(collected, tag)
        for tag in (TAG_ROWS, TAG_COLUMNS, TAG_SAMPLES_PER_PIXEL, TAG_BITS_ALLOCATED)
    ]
    rows, columns, samples, bits_allocated = values
    if rows is None or columns is None or samples is None or bits_allocated is None:
        return None
    return PixelLayout(
        rows=rows,
        columns=columns,
        samples_per_pixel=samples,
        bits_allocated=bits_allocated,
        bits_stored=_us(collected, TAG_BITS_STORED) or bits_allocated,
        pixel_representation=_us(collected, TAG_PIXEL_REPRESENTATION) or 0,
        planar_configuration=_us(collected, TAG_PLANAR_CONFIGURATION) or 0,
        little_endian=True,
    )


def _us(collected: dict[int, bytes], tag: int) -> int | None:
    raw = collected.get(tag)
    return _U16.unpack(raw)[0] if raw is not None and len(raw) == 2 else None


def _number_of_frames(collected: dict[int, bytes]) -> int | None:
    raw = collected.get(TAG_NUMBER_OF_FRAMES)
    if raw is None or not raw.strip(b"\x00 "):
        return 1
    try:
        return int(ascii_value(raw).strip())
    except ValueError:
        return None


def _non_empty(*segments: Segment) -> tuple[Segment, ...]:
    return tuple(s for s in segments if s.length > 0)


# --- encapsulated pixel data ---------------------------------------------------------------------


def _encapsulated_segments(
    view: memoryview, pixel: _Pixel, implicit: bool, collected: dict[int, bytes], sparse: Sparse
) -> tuple[Segment, ...]:
    items, delimiter = _fragment_items(view, pixel.value_offset, sparse)
    _walk_trailer(view, delimiter + SHORT_HEADER, implicit, sparse)
    if not items:
        raise _Malformed(f"no Basic Offset Table item at 0x{pixel.value_offset:x}")
    bot_offset, bot_length = items[0]
    header = Segment(SegmentKind.HEADER, 0, bot_offset + SHORT_HEADER + bot_length)
    fragments = [offset for offset, _ in items[1:]]
    starts = _frame_starts(view, items, collected, sparse)
    if _too_fine(len(starts), delimiter - bot_offset):
        starts = starts[:1]
    bounds = [fragments[i] for i in starts] + [delimiter]
    frames = [
        Segment(SegmentKind.ENCAPSULATED_FRAME, a, b - a) for a, b in itertools.pairwise(bounds)
    ]
    trailer = Segment(SegmentKind.TRAILER, delimiter, len(view) - delimiter)
    return _non_empty(header, *frames, trailer)


def _fragment_items(
    view: memoryview, pos: int, sparse: Sparse
) -> tuple[list[tuple[int, int]], int]:
    """List (item offset, value length) of every item, and the sequence delimiter's offset."""
    items: list[tuple[int, int]] = []
    while True:
        sparse.fetch(pos, SHORT_HEADER)
        tag, value_offset, length = _element_header(view, pos, implicit=True)
        if tag == TAG_SEQUENCE_DELIMITER:
            return items, pos
        if tag != TAG_ITEM or length == UNDEFINED_LENGTH:
            raise _Malformed(f"expected a fragment item at 0x{pos:x}")
        if len(items) > MAX_FRAGMENTS:  # e.g. megabytes of empty items: memory stays bounded
            raise _Malformed(f"more than {MAX_FRAGMENTS} fragments")
        items.append((pos, length))
        pos = _value_end(view, value_offset, length)


def _frame_starts(
    view: memoryview, items: list[tuple[int, int]], collected: dict[int, bytes], sparse: Sparse
) -> list[int]:
    """Index (among fragments) of each frame's first fragment; [0] when unsure.

    Tries, in order: Basic Offset Table, Extended Offset Table, one fragment per frame, a single
    frame, and frame-start markers; an ambiguous mapping yields one segment for all fragments.
    """
    fragments = [offset for offset, _ in items[1:]]
    if not fragments:
        return []
    bot_offset, bot_length = items[0]
    bot = _offset_table(view, bot_offset + SHORT_HEADER, bot_length, sparse)
    tables = (_offsets(bot, "<I"), _offsets(collected.get(TAG_EXTENDED_OFFSET_TABLE, b""), "<Q"))
    for offsets in tables:
        starts = _starts_from_offsets(offsets, fragments)
        if starts:
            return starts
    frames = _number_of_frames(collected)
    if frames == len(fragments):
        return list(range(len(fragments)))
    if frames == 1:
        return [0]
    marked = [i for i, f in enumerate(fragments) if _starts_frame(view, f + SHORT_HEADER, sparse)]
    if frames is not None and len(marked) == frames and marked[0] == 0:
        return marked
    return [0]


def _offset_table(view: memoryview, pos: int, length: int, sparse: Sparse) -> bytes:
    if length > MAX_OFFSET_TABLE:
        return b""
    sparse.fetch(pos, length)
    return bytes(view[pos : pos + length])


def _offsets(table: bytes, fmt: str) -> list[int]:
    size = struct.calcsize(fmt)
    if not table or len(table) % size:
        return []
    return [value for (value,) in struct.iter_unpack(fmt, table)]


def _starts_from_offsets(offsets: list[int], fragments: list[int]) -> list[int]:
    """Map offsets (relative to the first fragment item) to fragment indices; [] if any misses."""
    index = {offset - fragments[0]: i for i, offset in enumerate(fragments)}
    starts = [index.get(offset, -1) for offset in offsets]
    if not starts or starts[0] != 0 or any(b <= a for a, b in itertools.pairwise(starts)):
        return []
    return starts


def _starts_frame(view: memoryview, pos: int, sparse: Sparse) -> bool:
    sparse.fetch(pos, MARKER_BYTES)
    return any(view[pos : pos + len(m)] == m for m in FRAME_START_MARKERS)


# --- pydicom fallback ----------------------------------------------------------------------------


def _pydicom_layout(view: memoryview, reason: str) -> DicomLayout:
    """Catalogue attributes through pydicom for files the walker left alone; bytes stay RAW."""
    ts, attrs = pydicom_attrs(view)
    return _raw(len(view), reason, ts, attrs)
