"""Tests for engine.dicom.segment against every local pydicom and pydicom-data test file."""

from __future__ import annotations

import mmap
import os
import random
import struct
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from engine.dicom import DicomLayout, PixelLayout, SegmentKind, Sparse, segment
from engine.dicom.segment import MANY_FRAMES, MAX_FRAGMENTS, PYDICOM_MAX_SIZE

os.environ.setdefault("PYDICOM_NO_DOWNLOAD", "1")  # never fetch remote test files

ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) as stored little endian
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) as stored little endian
LITTLE_ENDIAN = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
BIG_OR_DEFLATED = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
KNOWN_BROKEN = {"MR_truncated.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm"}
CATALOGUE_KEYS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "StudyInstanceUID",
    "StudyDate",
    "AccessionNumber",
    "StudyDescription",
    "Modality",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)


def _local_files() -> list[Path]:
    import data_store  # pydicom-data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = [Path(p) for p in get_testdata_files() + get_charset_files()]
    found += (Path(data_store.__file__).parent / "data").iterdir()
    return sorted({p.resolve() for p in found if p.is_file()})


FILES = _local_files()
FILE_IDS = [f"{p.parent.name}/{p.name}" for p in FILES]


def _read(path: Path, **kwargs: object) -> Dataset | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, **kwargs)  # type: ignore[arg-type]
    except Exception:
        return None


def _assert_covers(layout: DicomLayout, size: int) -> None:
    pos = 0
    for seg in layout.segments:
        assert seg.offset == pos and seg.length > 0
        pos += seg.length
    assert pos == size


def _frames(layout: DicomLayout, data: bytes, kind: SegmentKind) -> list[bytes]:
    return [data[s.offset : s.offset + s.length] for s in layout.segments if s.kind == kind]


def _item_values(blob: bytes) -> Iterator[bytes]:
    """The values of consecutive (FFFE,E000) items in an ENCAPSULATED_FRAME segment."""
    pos = 0
    while pos < len(blob):
        assert blob[pos : pos + 4] == ITEM_TAG
        (length,) = struct.unpack_from("<I", blob, pos + 4)
        yield blob[pos + 8 : pos + 8 + length]
        pos += 8 + length


def _dataset_bytes(ds: Dataset, ts: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(ts)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _image(rows: int, cols: int, bits: int, frames: int, samples: int = 1) -> Dataset:
    ds = Dataset()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "P1"
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.NumberOfFrames = frames
    return ds


# --- every real file -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_segments_cover_every_real_file_exactly(path: Path) -> None:
    data = path.read_bytes()
    layout = segment(data)
    _assert_covers(layout, len(data))
    if layout.reason is not None:
        assert [s.kind for s in layout.segments] == [SegmentKind.RAW]
    assert (layout.pixel is not None) == any(
        s.kind == SegmentKind.NATIVE_FRAME for s in layout.segments
    )


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_native_frames_equal_pydicom_pixel_data(path: Path) -> None:
    ds = _read(path)
    if ds is None or "PixelData" not in ds or path.name in KNOWN_BROKEN:
        pytest.skip("pydicom finds no pixel data")
    if ds.file_meta.get("TransferSyntaxUID") not in LITTLE_ENDIAN:
        pytest.skip("not a native little endian file")
    data = path.read_bytes()
    layout = segment(data)
    assert layout.reason is None
    frames = _frames(layout, data, SegmentKind.NATIVE_FRAME)
    try:
        count = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        count = 0
    if not count or any(k not in ds for k in ("Rows", "Columns", "SamplesPerPixel")):
        assert frames == [] and layout.pixel is None  # frames unknowable: one opaque value
        return
    assert len(frames) == count
    assert layout.pixel == PixelLayout(
        ds.Rows,
        ds.Columns,
        ds.SamplesPerPixel,
        ds.BitsAllocated,
        ds.get("BitsStored", ds.BitsAllocated),
        ds.get("PixelRepresentation", 0),
        ds.get("PlanarConfiguration", 0),
        True,
    )
    assert ds.PixelData.startswith(b"".join(frames))
    if count > 1:
        size = len(frames[0])
        assert frames == [ds.PixelData[i * size : (i + 1) * size] for i in range(count)]


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_encapsulated_frames_equal_pydicom_frames(path: Path) -> None:
    ds = _read(path)
    if ds is None or "PixelData" not in ds or path.name in KNOWN_BROKEN:
        pytest.skip("pydicom finds no pixel data")
    if not ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian).is_compressed:
        pytest.skip("not encapsulated")
    data = path.read_bytes()
    layout = segment(data)
    assert layout.reason is None and layout.pixel is None
    frames = [
        b"".join(_item_values(blob))
        for blob in _frames(layout, data, SegmentKind.ENCAPSULATED_FRAME)
    ]
    count = int(ds.get("NumberOfFrames") or 1)
    try:
        expected = list(generate_frames(ds.PixelData, number_of_frames=count))
    except Exception:
        expected = []  # pydicom cannot tell the frames apart either: compare all fragments
    if len(frames) == len(expected):
        assert frames == expected
    else:
        assert len(frames) == 1
        assert frames[0] == b"".join(_item_values(_fragments_of(ds.PixelData)))


def _fragments_of(pixel_data: bytes) -> bytes:
    """The item stream after the Basic Offset Table of an encapsulated Pixel Data value."""
    (bot_length,) = struct.unpack_from("<I", pixel_data, 4)
    return pixel_data[8 + bot_length :]


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_header_ends_right_after_pixel_data_element_header(path: Path) -> None:
    data = path.read_bytes()
    layout = segment(data)
    frames = [s for s in layout.segments if s.kind != SegmentKind.HEADER]
    if layout.reason is not None or not frames:
        pytest.skip("no pixel data segmented")
    header = layout.segments[0]
    assert header.kind == SegmentKind.HEADER
    tail = data[: header.length]
    tag = tail.rfind(PIXEL_DATA_TAG)
    if frames[0].kind == SegmentKind.ENCAPSULATED_FRAME:
        bot = tail.index(b"\xff\xff\xff\xff" + ITEM_TAG, tag) + 4  # implicit or explicit VR
        assert bot in (tag + 8, tag + 12)
        (bot_length,) = struct.unpack_from("<I", tail, bot + 4)
        assert bot + 8 + bot_length == len(tail)  # header ends after the Basic Offset Table
    else:
        assert tag in (len(tail) - 8, len(tail) - 12)  # implicit or explicit element header


# --- catalogue attributes ------------------------------------------------------------------------


ATTR_FILES = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "rtplan.dcm",
    "JPEG2000.dcm",
    "ExplVR_BigEnd.dcm",
    "image_dfl.dcm",
]


def _pydicom_attrs(ds: Dataset) -> dict[str, str]:
    attrs = {}
    for keyword in CATALOGUE_KEYS:
        value = ds.get(keyword)
        if value not in (None, ""):
            attrs[keyword] = str(value)
    attrs["TransferSyntaxUID"] = str(ds.file_meta.TransferSyntaxUID)
    if ds.get("NumberOfFrames") not in (None, ""):
        attrs["NumberOfFrames"] = str(ds.NumberOfFrames)
    return attrs


@pytest.mark.parametrize(
    "path",
    [Path(get_testdata_file(name)) for name in ATTR_FILES]  # type: ignore[arg-type]
    + [Path(p) for p in get_charset_files("chr*.dcm")],
    ids=lambda p: p.name,
)
def test_attrs_equal_pydicom_values(path: Path) -> None:
    ds = _read(path, stop_before_pixels=True)
    assert ds is not None
    layout = segment(path.read_bytes())
    assert layout.attrs == _pydicom_attrs(ds)
    assert layout.transfer_syntax == ds.file_meta.TransferSyntaxUID


def test_non_ascii_patient_name_is_decoded_with_the_file_charset() -> None:
    path = Path(get_charset_files("chrH32.dcm")[0])
    assert segment(path.read_bytes()).attrs["PatientName"] == "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"


def test_big_endian_and_deflated_files_stay_raw_with_attrs() -> None:
    for name in ("MR_small_bigendian.dcm", "image_dfl.dcm"):
        data = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
        layout = segment(data)
        assert [s.kind for s in layout.segments] == [SegmentKind.RAW]
        assert layout.transfer_syntax in BIG_OR_DEFLATED and layout.reason
        assert layout.attrs["TransferSyntaxUID"] == layout.transfer_syntax


# --- dedup property ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "SC_rgb_rle_2frame.dcm"])
def test_patient_name_edit_changes_header_only(name: str) -> None:
    ds = pydicom.dcmread(get_testdata_file(name))  # type: ignore[arg-type]
    before = _dataset_bytes(ds, ds.file_meta.TransferSyntaxUID)
    ds.PatientName = "Renamed^After^Reconciliation^With^A^Much^Longer^Name"
    after = _dataset_bytes(ds, ds.file_meta.TransferSyntaxUID)
    old, new = segment(before), segment(after)
    assert old.reason is None and new.reason is None
    assert _frames(old, before, SegmentKind.HEADER) != _frames(new, after, SegmentKind.HEADER)
    for kind in (SegmentKind.NATIVE_FRAME, SegmentKind.ENCAPSULATED_FRAME):
        assert _frames(old, before, kind) == _frames(new, after, kind)
    assert any(s.kind != SegmentKind.HEADER for s in old.segments)


# --- synthetic layouts ---------------------------------------------------------------------------


def test_native_padding_after_the_last_frame_goes_to_the_trailer() -> None:
    ds = _image(4, 4, 16, 3)
    ds.PixelData = bytes(range(96)) + b"\x00\x00\x00\x00"  # 3 frames of 32 B, 4 B of padding
    data = _dataset_bytes(ds, ExplicitVRLittleEndian)
    layout = segment(data)
    assert [s.kind for s in layout.segments] == [SegmentKind.HEADER] + [
        SegmentKind.NATIVE_FRAME
    ] * 3 + [SegmentKind.TRAILER]
    assert _frames(layout, data, SegmentKind.NATIVE_FRAME)[2] == bytes(range(64, 96))
    assert layout.segments[-1].length == 4


def test_one_bit_frames_are_cut_when_each_frame_is_whole_bytes() -> None:
    ds = _image(8, 8, 1, 2)
    ds.PixelData = bytes(16)  # 2 frames of 64 bits
    layout = segment(_dataset_bytes(ds, ImplicitVRLittleEndian))
    assert [s.length for s in layout.segments if s.kind == SegmentKind.NATIVE_FRAME] == [8, 8]
    assert layout.pixel is not None and layout.pixel.bits_allocated == 1


def test_frames_that_cannot_be_located_make_one_opaque_trailer_value() -> None:
    ds = _image(3, 3, 1, 2)
    ds.PixelData = bytes(4)  # 2 frames of 9 bits: no byte boundary between them
    data = _dataset_bytes(ds, ExplicitVRLittleEndian)
    layout = segment(data)
    assert layout.pixel is None and layout.reason is None
    assert [s.kind for s in layout.segments] == [SegmentKind.HEADER, SegmentKind.TRAILER]


def _encapsulated(frames: list[bytes], *, bot: bool, fragments: int, ext: bool = False) -> bytes:
    ds = _image(2, 2, 8, len(frames))
    if ext:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
            frames
        )
    else:
        ds.PixelData = encapsulate(frames, fragments_per_frame=fragments, has_bot=bot)
    ds["PixelData"].VR = "OB"
    return _dataset_bytes(ds, RLELossless if not ext else JPEGBaseline8Bit)


@pytest.mark.parametrize(
    ("bot", "fragments", "ext", "payload", "expected"),
    [
        (True, 2, False, b"x", 3),  # Basic Offset Table
        (False, 1, False, b"x", 3),  # one fragment per frame
        (False, 1, True, b"x", 3),  # Extended Offset Table
        (False, 2, False, b"\xff\xd8\xff\xe0", 3),  # JPEG SOI at each frame start
        (False, 2, False, b"x", 1),  # ambiguous: all fragments in one segment
    ],
)
def test_encapsulated_frame_mapping(
    bot: bool, fragments: int, ext: bool, payload: bytes, expected: int
) -> None:
    frames = [payload + bytes([i]) * 40 + b"\xff\xd9" for i in range(3)]
    data = _encapsulated(frames, bot=bot, fragments=fragments, ext=ext)
    layout = segment(data)
    got = [b"".join(_item_values(b)) for b in _frames(layout, data, SegmentKind.ENCAPSULATED_FRAME)]
    assert len(got) == expected
    assert b"".join(got).replace(b"\x00", b"") == b"".join(frames).replace(b"\x00", b"")
    if expected == 3:
        assert [g.rstrip(b"\x00") for g in got] == [f.rstrip(b"\x00") for f in frames]
    assert layout.segments[-1].kind == SegmentKind.TRAILER


# --- robustness ----------------------------------------------------------------------------------


def test_empty_input_has_no_segments() -> None:
    layout = segment(b"")
    assert layout.segments == () and layout.attrs == {} and layout.transfer_syntax is None


TRUNCATION_FILES = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle_2frame.dcm",
    "rtplan.dcm",
]


@pytest.mark.parametrize("name", TRUNCATION_FILES)
def test_truncated_files_fall_back_to_raw(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
    full = segment(data)
    header_end = full.segments[0].length
    pixel_end = max(
        (s.offset + s.length for s in full.segments if s.kind != SegmentKind.TRAILER), default=0
    )
    cuts = set(range(1, len(data), max(1, len(data) // 300))) | set(range(1, 200, 3))
    cuts |= {header_end - k for k in range(1, 9)} | {pixel_end - k for k in range(1, 9)}
    for cut in sorted(c for c in cuts if 0 < c < len(data)):
        layout = segment(memoryview(data)[:cut])
        _assert_covers(layout, cut)
        kinds = {s.kind for s in layout.segments}
        if header_end <= cut < pixel_end or cut == header_end - 1:
            assert kinds == {SegmentKind.RAW}, cut  # cut inside a frame or an element header
        else:
            assert kinds == {SegmentKind.RAW} or kinds <= {SegmentKind.HEADER}, cut


def test_random_bytes_are_raw() -> None:
    rng = random.Random(1234)
    for size in [1, 3, 8, 131, 132, 133, 200, 1000, 5000] * 20:
        data = rng.randbytes(size)
        for buf in (data, bytes(128) + b"DICM" + data, b"\x08\x00\x05\x00CS" + data):
            layout = segment(buf)
            _assert_covers(layout, len(buf))
            assert [s.kind for s in layout.segments] == [SegmentKind.RAW]


def test_corrupted_real_files_never_raise() -> None:
    rng = random.Random(99)
    for name in TRUNCATION_FILES:
        original = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
        for _ in range(150):
            data = bytearray(original)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(min(len(data), 4096))] = rng.randrange(256)
            _assert_covers(segment(bytes(data)), len(data))


def test_deeply_nested_sequences_fall_back_without_recursion_error() -> None:
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # item of undefined length
    element = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"  # (0008,1115) SQ, undefined length
    data = bytes(128) + b"DICM" + b"\x08\x00\x16\x00UI\x02\x001\x00" + (element + item) * 5000
    layout = segment(data)
    assert [s.kind for s in layout.segments] == [SegmentKind.RAW]


def test_non_contiguous_view_is_raw() -> None:
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()  # type: ignore[arg-type]
    layout = segment(memoryview(data)[::2])
    assert [s.kind for s in layout.segments] == [SegmentKind.RAW]
    assert layout.segments[0].length == (len(data) + 1) // 2


def test_mmap_backed_memoryview_is_accepted(tmp_path: Path) -> None:
    source = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    with source.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        try:
            assert segment(view) == segment(source.read_bytes())
        finally:
            view.release()


# --- sparse buffers (large files: only the start and the regions the walker asks for) ----------


def _sparse_copy(data: bytes, filled: int) -> tuple[bytearray, Sparse, list[tuple[int, int]]]:
    """A buffer of len(data) holding only data[:filled] until fetched; records the fetches."""
    buf, fetched = bytearray(len(data)), []
    buf[:filled] = data[:filled]

    def fetch(offset: int, length: int) -> None:
        fetched.append((offset, length))
        buf[offset : offset + length] = data[offset : offset + length]

    return buf, Sparse(filled, fetch), fetched


def _segmented_files() -> list[Path]:
    return [
        p
        for p in FILES
        if (layout := segment(p.read_bytes())).reason is None and len(layout.segments) > 2
    ]


@pytest.mark.parametrize("path", _segmented_files(), ids=lambda p: p.name)
def test_a_sparse_copy_holding_only_the_header_segments_like_the_whole_file(path: Path) -> None:
    data = path.read_bytes()
    whole = segment(data)
    header = whole.segments[0]
    assert header.kind == SegmentKind.HEADER
    buf, sparse, fetched = _sparse_copy(data, header.length)
    assert segment(buf, sparse) == whole
    assert sum(n for _, n in fetched) <= max(64 * 1024, len(data) // 4)  # item headers, trailer


def test_a_header_longer_than_the_filled_start_is_raw_without_pydicom() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # type: ignore[arg-type]
    buf, sparse, _ = _sparse_copy(data, 1024)  # the pixel data element lies beyond
    layout = segment(buf, sparse)
    assert [s.kind for s in layout.segments] == [SegmentKind.RAW]
    assert layout.reason is not None and "pydicom fallback" in layout.reason
    assert layout.attrs == {}


def test_a_sparse_copy_never_fetched_still_covers_the_input() -> None:
    for path in _segmented_files()[:20]:
        data = path.read_bytes()
        buf = bytearray(len(data))
        buf[:2048] = data[:2048]
        _assert_covers(segment(buf, Sparse(2048, lambda offset, length: None)), len(data))


def test_dicm_then_zeros_not_a_multiple_of_8_is_raw_without_pydicom() -> None:
    data = bytes(128) + b"DICM" + bytes(PYDICOM_MAX_SIZE + 5)
    layout = segment(data)
    assert [s.kind for s in layout.segments] == [SegmentKind.RAW]
    assert layout.reason is not None and "too large for the pydicom fallback" in layout.reason


def test_very_many_tiny_native_frames_are_one_opaque_value() -> None:
    """200,000 one-byte frames were 200,000 chunks: a 200 kB file took 34 s to back up."""
    ds = _image(1, 1, 8, 200_000)
    ds.PixelData = bytes(200_000)
    layout = segment(_dataset_bytes(ds, ExplicitVRLittleEndian))
    assert [s.kind for s in layout.segments] == [SegmentKind.HEADER, SegmentKind.TRAILER]


def test_very_many_tiny_encapsulated_frames_are_one_segment() -> None:
    frames = [bytes([i % 256]) * 2 for i in range(5000)]
    data = _encapsulated(frames, bot=True, fragments=1)
    layout = segment(data)
    kinds = [s.kind for s in layout.segments]
    assert kinds == [SegmentKind.HEADER, SegmentKind.ENCAPSULATED_FRAME, SegmentKind.TRAILER]


def test_many_frames_of_real_size_stay_one_segment_each() -> None:
    frames = [bytes([i % 256]) * (64 << 10) for i in range(MANY_FRAMES + 1)]
    layout = segment(_encapsulated(frames, bot=True, fragments=1))
    assert sum(s.kind == SegmentKind.ENCAPSULATED_FRAME for s in layout.segments) == len(frames)


def test_megabytes_of_empty_fragment_items_are_raw() -> None:
    data = bytearray(_encapsulated([b"ab"], bot=True, fragments=1))
    delimiter = data.rindex(b"\xfe\xff\xdd\xe0")
    empty_items = (ITEM_TAG + bytes(4)) * (MAX_FRAGMENTS + 10)
    data[delimiter:delimiter] = empty_items
    layout = segment(bytes(data))
    assert [s.kind for s in layout.segments] == [SegmentKind.RAW]
