"""Lossless image codecs for native DICOM frames, and the trained zstd dictionary for headers.

Owns the mapping between the raw bytes of one uncompressed frame and a JPEG-LS or JPEG-XL
bitstream, which must restore those bytes bit for bit, and loads the shipped header dictionary.
Pure functions over bytes: no storage, no keys and no DICOM parsing (callers supply the layout).
"""

from __future__ import annotations

import enum
import functools
import importlib.resources
from collections.abc import Callable
from typing import Any, Protocol, cast

import imagecodecs
import numpy as np
import numpy.typing as npt
import zstandard

from engine.dicom.segment import PixelLayout  # the concrete layout; re-exported for callers
from engine.errors import FormatError

__all__ = [
    "HEADER_DICT_ID",
    "HEADER_DICT_VERSION",
    "ImageCodec",
    "PixelLayout",
    "PixelLayoutLike",
    "decode_frame",
    "encode_frame",
    "header_dictionary",
]

# Bumped when the shipped dictionary changes; headers compressed with version N need asset vN.
HEADER_DICT_VERSION = 1
# Stored in every zstd frame made with the dictionary. 0x4456 is "DV"; the low half is the version.
# zstd reserves IDs below 32768 and from 2**31 up, so this sits in the private range.
HEADER_DICT_ID = 0x4456_0000 + HEADER_DICT_VERSION
_HEADER_DICT_ASSET = f"header-dict-v{HEADER_DICT_VERSION}.zstd"

# Effort 1 ("lightning") is the ~1 GB/s setting measured in DESIGN.md section 5.
_JPEGXL_EFFORT = 1

_Image = npt.NDArray[Any]


class ImageCodec(enum.IntEnum):
    """Codec identifiers; the values are stored in chunk metadata, so never renumber them."""

    JPEGLS = 1
    JPEGXL = 2


class PixelLayoutLike(Protocol):
    """The attributes of a native frame that the codecs need (DICOM group 0028 plus byte order)."""

    @property
    def rows(self) -> int: ...
    @property
    def columns(self) -> int: ...
    @property
    def samples_per_pixel(self) -> int: ...
    @property
    def bits_allocated(self) -> int: ...
    @property
    def bits_stored(self) -> int: ...
    @property
    def pixel_representation(self) -> int: ...
    @property
    def planar_configuration(self) -> int: ...
    @property
    def little_endian(self) -> bool: ...


def encode_frame(
    codec: ImageCodec, raw: bytes | memoryview, layout: PixelLayoutLike
) -> bytes | None:
    """Encode one native frame losslessly, or return None when the caller should use zstd.

    None means the layout is not one the codecs take (big endian, bits allocated other than 8 or
    16, samples other than 1 or 3, bits stored outside 1..bits allocated, a pixel representation
    or planar configuration other than 0 or 1, a length that does not match the layout) or the
    codec failed or did not restore `raw` exactly. Every returned bitstream has been decoded and
    compared.
    """
    view = memoryview(raw).cast("B")
    if not _encodable(layout) or view.nbytes != _frame_bytes(layout):
        return None
    try:
        encoded = _ENCODERS[codec](_to_codec_array(view, layout))
        if _decodes_in_place(layout):
            # One decoded copy, compared by one memcmp (bytearray == any buffer): the verify
            # step holds the raw frame, its bitstream and one frame more, and nothing else.
            return encoded if decode_frame(codec, encoded, layout, view.nbytes) == view else None
        restored = _decode_words(codec, encoded, layout, view.nbytes)
    except Exception:  # any codec failure, whatever its type, means "fall back to zstd"
        return None
    return encoded if _same_bytes(restored, view) else None


def decode_frame(
    codec: ImageCodec, encoded: bytes | memoryview, layout: PixelLayoutLike, raw_length: int
) -> bytes | bytearray:
    """Return the raw frame bytes that `encode_frame` encoded; raise FormatError if impossible.

    Where the codec's array is laid out as the raw frame (every layout but planar colour, on a
    little-endian machine) the codec decodes straight into the returned buffer, a `bytearray`,
    so the frame is in memory once instead of twice (an array, then its copy as bytes): with
    one decoding thread per core and 8 MiB frame bands, that copy was ~16 MiB of a restore's
    peak (docs/design.md §2.2)."""
    if not _supported(layout) or raw_length != _frame_bytes(layout):
        raise FormatError(f"image codec cannot restore this layout ({raw_length} bytes)")
    if not _decodes_in_place(layout):
        return _decode_words(codec, encoded, layout, raw_length).tobytes()
    out = bytearray(raw_length)
    words = np.frombuffer(out, dtype=_codec_dtype(layout)).reshape(_codec_shape(layout))
    try:
        _IN_PLACE[codec](_buffer(encoded), out=words)
    except Exception as exc:
        raise FormatError(f"{ImageCodec(codec).name} bitstream does not decode: {exc}") from exc
    flip = _sign_flip(layout)
    if flip:
        np.bitwise_xor(words, np.array(flip, dtype=words.dtype), out=words)
    return out


def _decodes_in_place(layout: PixelLayoutLike) -> bool:
    planar_colour = layout.samples_per_pixel == 3 and layout.planar_configuration == 1
    return not planar_colour and _codec_dtype(layout).isnative


def _codec_dtype(layout: PixelLayoutLike) -> np.dtype[Any]:
    return np.dtype(np.uint8) if layout.bits_allocated == 8 else np.dtype("<u2")


def _codec_shape(layout: PixelLayoutLike) -> tuple[int, ...]:
    shape: tuple[int, ...] = (layout.rows, layout.columns)
    return (*shape, 3) if layout.samples_per_pixel == 3 else shape


def _decode_words(
    codec: ImageCodec, encoded: bytes | memoryview, layout: PixelLayoutLike, raw_length: int
) -> _Image:
    """The decoded frame as a contiguous array whose bytes are the raw frame's (`decode_frame`
    without the final copy to bytes, which verifying an encoding does not need)."""
    decoder = _DECODERS.get(codec)
    if decoder is None:
        raise FormatError(f"unknown image codec {codec!r}")
    try:
        decoded = decoder(encoded)
    except Exception as exc:
        raise FormatError(f"{ImageCodec(codec).name} bitstream does not decode: {exc}") from exc
    words = _from_codec_array(decoded, layout)
    if words.nbytes != raw_length:
        raise FormatError(f"decoded frame is {words.nbytes} bytes, expected {raw_length}")
    return words


_COMPARE_SLICE = 1024 * 1024


def _same_bytes(words: _Image, raw: memoryview) -> bool:
    """Whether the array's bytes equal `raw`, compared a slice at a time: bytes == bytes is one
    memcmp (a memoryview compares element by element, ~10x slower), and whole-frame copies would
    cost two more frames of memory per worker."""
    got = words.data.cast("B")
    if got.nbytes != raw.nbytes:
        return False
    return all(
        got[i : i + _COMPARE_SLICE].tobytes() == raw[i : i + _COMPARE_SLICE].tobytes()
        for i in range(0, raw.nbytes, _COMPARE_SLICE)
    )


@functools.cache
def header_dictionary() -> zstandard.ZstdCompressionDict:
    """The shipped zstd dictionary for DICOM headers (see benchmarks/train_header_dict.py)."""
    asset = importlib.resources.files("engine") / "assets" / _HEADER_DICT_ASSET
    dictionary = zstandard.ZstdCompressionDict(
        asset.read_bytes(), dict_type=zstandard.DICT_TYPE_FULLDICT
    )
    if dictionary.dict_id() != HEADER_DICT_ID:
        raise FormatError(f"{_HEADER_DICT_ASSET} has dict_id {dictionary.dict_id()}")
    return dictionary


def _supported(layout: PixelLayoutLike) -> bool:
    return (
        layout.little_endian
        and layout.bits_allocated in (8, 16)
        and layout.samples_per_pixel in (1, 3)
        and layout.rows > 0
        and layout.columns > 0
    )


def _encodable(layout: PixelLayoutLike) -> bool:
    """Stricter than `_supported` (which decoding keeps, for blobs already written): a layout
    read from a damaged file can carry any value, and every field must fit its byte in the blob's
    layout prefix (invariant 6: bad values lead to zstd, never to an exception)."""
    return (
        _supported(layout)
        and 1 <= layout.bits_stored <= layout.bits_allocated
        and layout.pixel_representation in (0, 1)
        and layout.planar_configuration in (0, 1)
        and layout.rows < 1 << 32
        and layout.columns < 1 << 32
    )


def _frame_bytes(layout: PixelLayoutLike) -> int:
    bytes_per_sample = layout.bits_allocated // 8
    return layout.rows * layout.columns * layout.samples_per_pixel * bytes_per_sample


def _sign_flip(layout: PixelLayoutLike) -> int:
    """The XOR mask that maps two's complement words onto unsigned ones in the same order.

    The codecs take unsigned samples only. A plain reinterpretation would put -1 next to 65535 and
    break prediction around zero; flipping the top bit of the whole stored word keeps neighbours
    neighbours and is its own inverse, so any high bits above bits_stored survive untouched.
    """
    return 1 << (layout.bits_allocated - 1) if layout.pixel_representation == 1 else 0


def _to_codec_array(raw: bytes | memoryview, layout: PixelLayoutLike) -> _Image:
    """Raw little-endian frame bytes -> (rows, cols) or (rows, cols, 3) unsigned array."""
    dtype = np.uint8 if layout.bits_allocated == 8 else np.dtype("<u2")
    words = np.frombuffer(raw, dtype=dtype)
    flip = _sign_flip(layout)
    if flip:
        words = words ^ np.array(flip, dtype=words.dtype)
    if layout.samples_per_pixel == 1:
        return words.reshape(layout.rows, layout.columns)
    if layout.planar_configuration == 1:
        planes = words.reshape(3, layout.rows, layout.columns)
        return np.ascontiguousarray(planes.transpose(1, 2, 0))
    return words.reshape(layout.rows, layout.columns, 3)


def _from_codec_array(decoded: _Image, layout: PixelLayoutLike) -> _Image:
    """Inverse of `_to_codec_array`, as a contiguous little-endian array holding the raw frame's
    bytes; raise FormatError when the decoded image has another shape."""
    dtype = np.dtype(np.uint8) if layout.bits_allocated == 8 else np.dtype(np.uint16)
    shape = _codec_shape(layout)
    if decoded.dtype != dtype or decoded.shape != shape:
        raise FormatError(f"decoded image is {decoded.dtype}{decoded.shape}, expected {shape}")
    words = decoded
    flip = _sign_flip(layout)
    if flip:
        words = words ^ np.array(flip, dtype=dtype)
    if layout.samples_per_pixel == 3 and layout.planar_configuration == 1:
        words = words.transpose(2, 0, 1)
    return np.ascontiguousarray(words.astype("<" + dtype.str[1:], copy=False))


def _buffer(data: bytes | memoryview) -> bytes:
    """imagecodecs reads any buffer without a copy; its type stubs only name bytes."""
    return cast(bytes, data)


def _encode_jpegls(image: _Image) -> bytes:
    return bytes(imagecodecs.jpegls_encode(image))


def _encode_jpegxl(image: _Image) -> bytes:
    return bytes(imagecodecs.jpegxl_encode(image, lossless=True, effort=_JPEGXL_EFFORT))


def _decode_jpegls(encoded: bytes | memoryview) -> _Image:
    return np.asarray(imagecodecs.jpegls_decode(_buffer(encoded)))


def _decode_jpegxl(encoded: bytes | memoryview) -> _Image:
    return np.asarray(imagecodecs.jpegxl_decode(_buffer(encoded)))


_ENCODERS: dict[ImageCodec, Callable[[_Image], bytes]] = {
    ImageCodec.JPEGLS: _encode_jpegls,
    ImageCodec.JPEGXL: _encode_jpegxl,
}
_IN_PLACE: dict[ImageCodec, Callable[..., Any]] = {  # decode into `out`, an array of the frame
    ImageCodec.JPEGLS: imagecodecs.jpegls_decode,
    ImageCodec.JPEGXL: imagecodecs.jpegxl_decode,
}
_DECODERS: dict[ImageCodec, Callable[[bytes | memoryview], _Image]] = {
    ImageCodec.JPEGLS: _decode_jpegls,
    ImageCodec.JPEGXL: _decode_jpegxl,
}
