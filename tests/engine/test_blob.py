"""Blob sealing: every codec path round-trips bit-exact; tampering and misuse fail loudly."""

from __future__ import annotations

import os
from dataclasses import replace

import pydicom
import pytest

from engine import blob
from engine.blob import BLOB_OVERHEAD, Codec, Content, Hint, padme
from engine.dicom import PixelLayout
from engine.errors import IntegrityError
from engine.keys import MasterKey
from tests.engine.test_imagecodec import layout_of
from tests.helpers import ct_small

KEY = MasterKey(bytes(range(32)))


def frame_codec(sealed: bytes, chunk_id: bytes) -> int:
    return blob.open_plaintext(KEY, chunk_id, sealed)[0]


def round_trip(data: bytes, hint: Hint | None = None) -> tuple[int, bytes]:
    cid = KEY.chunk_id(data)
    sealed = blob.seal(KEY, cid, data, hint or Hint())
    assert blob.open_blob(KEY, cid, sealed) == data
    return frame_codec(sealed, cid), sealed


def ct_frame() -> tuple[bytes, PixelLayout]:
    ds = pydicom.dcmread(ct_small())
    return bytes(ds.PixelData), layout_of(ds)


def test_random_data_is_stored_as_is() -> None:
    codec, sealed = round_trip(os.urandom(100_000))
    assert codec == Codec.STORED
    assert len(sealed) >= 100_000 + BLOB_OVERHEAD


def test_compressible_data_uses_zstd_and_shrinks() -> None:
    data = b"compressible line of text\n" * 10_000
    codec, sealed = round_trip(data)
    assert codec == Codec.ZSTD
    assert len(sealed) < len(data) // 10


def test_tiny_and_empty_chunks_round_trip() -> None:
    assert round_trip(b"")[0] == Codec.STORED
    assert round_trip(b"x")[0] == Codec.STORED


def test_dicom_header_uses_the_header_dictionary() -> None:
    header = ct_small().read_bytes()[:2048]
    codec, _ = round_trip(header, Hint(Content.DICOM_HEADER))
    assert codec == Codec.ZSTD_HEADER_DICT


@pytest.mark.parametrize("image_codec", [Codec.JPEGLS, Codec.JPEGXL])
def test_native_ct_frame_uses_the_image_codec_and_restores_bit_exact(image_codec: Codec) -> None:
    pixels, layout = ct_frame()
    codec, sealed = round_trip(pixels, Hint(Content.NATIVE_FRAME, layout, image_codec))
    assert codec == image_codec
    assert len(sealed) < len(pixels) // 2


def us_rgb_frame() -> tuple[bytes, PixelLayout]:
    """A real 8-bit RGB ultrasound frame (pydicom's US1_UNCR), on which JPEG-LS loses to zstd."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("US1_UNCR.dcm"))
    layout = PixelLayout(ds.Rows, ds.Columns, 3, 8, 8, 0, int(ds.PlanarConfiguration), True)
    return bytes(ds.PixelData), layout


def test_the_default_policy_takes_jpegxl_for_8_bit_colour_and_beats_zstd_and_jpegls() -> None:
    pixels, layout = us_rgb_frame()
    codec, sealed = round_trip(pixels, Hint(Content.NATIVE_FRAME, layout))
    assert codec == Codec.JPEGXL
    _, zstd = round_trip(pixels, Hint(Content.NATIVE_FRAME, layout, Codec.ZSTD))
    assert len(sealed) < len(zstd) * 0.8
    # Forced to JPEG-LS, the frame ends up as zstd: JPEG-LS loses to it here.
    assert round_trip(pixels, Hint(Content.NATIVE_FRAME, layout, Codec.JPEGLS))[0] == Codec.ZSTD


def test_the_default_policy_keeps_jpegls_for_16_bit_grey() -> None:
    pixels, layout = ct_frame()
    assert round_trip(pixels, Hint(Content.NATIVE_FRAME, layout))[0] == Codec.JPEGLS
    assert blob.frame_codec(replace(layout, bits_allocated=8, bits_stored=8)) == Codec.JPEGLS


def test_native_frame_without_a_layout_falls_back_to_general_codecs() -> None:
    pixels, _ = ct_frame()
    codec, _ = round_trip(pixels, Hint(Content.NATIVE_FRAME, None))
    assert codec in (Codec.ZSTD, Codec.STORED)


@pytest.mark.parametrize("change", [{"bits_stored": 300}, {"planar_configuration": 999}], ids=str)
def test_native_frame_with_out_of_range_layout_values_is_sealed_with_zstd(
    change: dict[str, int],
) -> None:
    pixels, layout = ct_frame()
    codec, _ = round_trip(pixels, Hint(Content.NATIVE_FRAME, replace(layout, **change)))
    assert codec in (Codec.ZSTD, Codec.STORED)


def test_an_encoder_that_raises_falls_back_to_the_plain_path() -> None:
    pixels, _ = ct_frame()
    not_a_layout = object()  # a hint no image codec can use: the encoder raises on it
    codec, _ = round_trip(pixels, Hint(Content.NATIVE_FRAME, not_a_layout))
    assert codec in (Codec.ZSTD, Codec.STORED)


def test_a_flipped_bit_anywhere_raises_integrity_error() -> None:
    data = b"patient data " * 1000
    cid = KEY.chunk_id(data)
    sealed = blob.seal(KEY, cid, data)
    for where in (1, 10, len(sealed) // 2, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[where] ^= 0x80
        with pytest.raises(IntegrityError, match=cid.hex()):
            blob.open_blob(KEY, cid, bytes(tampered))


def test_wrong_chunk_id_as_associated_data_raises_integrity_error() -> None:
    a, b = b"first chunk" * 100, b"second chunk" * 100
    sealed_a = blob.seal(KEY, KEY.chunk_id(a), a)
    with pytest.raises(IntegrityError, match="authentication failed"):
        blob.open_blob(KEY, KEY.chunk_id(b), sealed_a)  # a server swapping blobs between chunks


def test_wrong_key_raises_integrity_error() -> None:
    data = b"secret" * 100
    cid = KEY.chunk_id(data)
    with pytest.raises(IntegrityError):
        blob.open_blob(MasterKey.generate(), cid, blob.seal(KEY, cid, data))


def test_truncated_or_unversioned_blob_raises_integrity_error() -> None:
    data = b"x" * 1000
    cid = KEY.chunk_id(data)
    sealed = blob.seal(KEY, cid, data)
    with pytest.raises(IntegrityError, match="malformed"):
        blob.open_blob(KEY, cid, sealed[:20])
    with pytest.raises(IntegrityError, match="malformed"):
        blob.open_blob(KEY, cid, b"\x09" + sealed[1:])


def test_sealing_twice_gives_different_ciphertext() -> None:
    data = b"same plaintext" * 10
    cid = KEY.chunk_id(data)
    assert blob.seal(KEY, cid, data) != blob.seal(KEY, cid, data)


def test_sealed_sizes_are_padded_with_padme() -> None:
    blobs = (os.urandom(n) for n in range(1000, 1060))
    sizes = {len(blob.seal(KEY, KEY.chunk_id(d), d)) for d in blobs}
    assert len(sizes) < 10  # 60 distinct lengths collapse into a few padded sizes


@pytest.mark.parametrize(
    ("length", "padded"),
    [
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 3),
        (9, 10),
        (100, 104),
        (1000, 1024),
        (1025, 1088),
        (1 << 20, 1 << 20),
        ((1 << 20) + 1, (1 << 20) + (1 << 15)),
    ],
)
def test_padme_sizes(length: int, padded: int) -> None:
    assert padme(length) == padded


def test_padme_never_shrinks_and_overhead_stays_below_12_percent() -> None:
    for length in [*range(0, 5000), *range(10**6, 10**6 + 5000, 7)]:
        p = padme(length)
        assert length <= p <= length * 1.12 + 1
