"""Blob format, version 1: encode (codec), pad, and seal one chunk; and the reverse.

    plaintext  codec u8 ‖ raw_len u32 LE ‖ payload_len u32 LE ‖ payload ‖ zero padding
    blob       version u8 ‖ salt (24 random bytes) ‖ AES-256-GCM ciphertext ‖ tag (16)

The blob key is BLAKE3(key=encryption subkey, salt) and the nonce is fixed at zero: every blob
gets a fresh key, so nonces never repeat under one key and the only bound is a 192-bit salt
collision (negligible for any number of blobs; see docs/design.md). The associated data binds the
format version and the chunk id, so a server cannot swap blobs between chunks. Padding rounds the
plaintext up with Padmé, so exact sizes of small files do not fingerprint them.
Pure functions over bytes: no storage, no DICOM parsing.
"""

from __future__ import annotations

import enum
import os
import struct
import threading
from dataclasses import dataclass

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.errors import FormatError, IntegrityError
from engine.ids import ChunkId
from engine.keys import MasterKey

VERSION = 1
SALT_SIZE = 24
TAG_SIZE = 16
_NONCE = bytes(12)  # safe: the key is unique per blob
_FRAME = struct.Struct("<BII")  # codec, raw_len, payload_len: 9 bytes
_LAYOUT = struct.Struct("<IIBBBBBB")  # image layout prefix for image codecs: 14 bytes
BLOB_OVERHEAD = 1 + SALT_SIZE + TAG_SIZE + _FRAME.size
ZSTD_LEVEL = 3
PROBE_SIZE = 16 * 1024  # bytes compressed at level 1 to decide whether zstd is worth it
PROBE_MIN_SAVING = 0.03  # store as is when the probe saves less than 3 %
IMAGE_TRY_ZSTD_RATIO = 5  # below 5x from the image codec, also try zstd and keep the smaller
ZSTD_ESTIMATE_MARGIN = 0.8  # ...if zstd's sampled estimate comes within 25 % of the image codec


class Codec(enum.IntEnum):
    STORED = 0
    ZSTD = 1
    ZSTD_HEADER_DICT = 2  # zstd with the shipped DICOM header dictionary (engine/assets)
    JPEGLS = 3
    JPEGXL = 4


class Content(enum.IntEnum):
    """What a chunk holds, as a hint for the encoder and a note in the pack header."""

    DATA = 0
    TREE = 1  # catalogue chunks
    DICOM_HEADER = 2
    NATIVE_FRAME = 3
    COMPRESSED_FRAME = 4


@dataclass(frozen=True, slots=True)
class Hint:
    content: Content = Content.DATA
    layout: object | None = None  # engine.dicom.PixelLayout for native frames
    image_codec: Codec | None = None  # None: the measured policy, `frame_codec`


_local = threading.local()  # zstd contexts are not thread-safe; one set per worker thread


def _zstd(dict_: bool = False) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    attr = "zd" if dict_ else "z"
    pair = getattr(_local, attr, None)
    if pair is None:
        if dict_:
            from engine.imagecodec import header_dictionary

            d = header_dictionary()
            pair = (
                zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=d),
                zstandard.ZstdDecompressor(dict_data=d),
            )
        else:
            pair = (zstandard.ZstdCompressor(level=ZSTD_LEVEL), zstandard.ZstdDecompressor())
        setattr(_local, attr, pair)
    return pair


def _probe_says_store(data: bytes | memoryview) -> bool:
    if len(data) <= 64:
        return True
    sample = data[:PROBE_SIZE]
    probe = getattr(_local, "probe", None) or zstandard.ZstdCompressor(level=1)
    _local.probe = probe
    return len(probe.compress(sample)) > len(sample) * (1 - PROBE_MIN_SAVING)


def _zstd_may_beat(data: bytes | memoryview, image_len: int) -> bool:
    """Estimate zstd's size from three 16 KiB samples (start, middle, end): a whole-frame zstd
    pass costs ~15 % of encoding, and on real acquisitions it rarely wins."""
    n = len(data)
    if n <= 3 * PROBE_SIZE:
        return True
    starts = (0, n // 2 - PROBE_SIZE // 2, n - PROBE_SIZE)
    sampled = sum(len(_zstd()[0].compress(data[i : i + PROBE_SIZE])) for i in starts)
    estimate = sampled * n / (3 * PROBE_SIZE)
    return estimate * ZSTD_ESTIMATE_MARGIN < image_len


def frame_codec(layout: object) -> Codec:
    """The default image codec for a native frame, from the measured frontier (docs/design.md
    §3.5, benchmarks/throughput_codecs.py): 8-bit colour frames (ultrasound, secondary capture)
    take JPEG-XL at effort 1, which there is both smaller and faster than JPEG-LS; everything
    else (16-bit and 8-bit grey, palette indices) takes JPEG-LS, the smallest there."""
    colour = getattr(layout, "samples_per_pixel", 1) == 3
    return Codec.JPEGXL if colour and getattr(layout, "bits_allocated", 0) == 8 else Codec.JPEGLS


def _encode_image(data: bytes | memoryview, hint: Hint) -> tuple[Codec, bytes] | None:
    from engine.imagecodec import ImageCodec, encode_frame

    layout = hint.layout
    chosen = frame_codec(layout) if hint.image_codec is None else hint.image_codec
    # Any other `image_codec` (e.g. ZSTD for `--image-codec none`) means no image codec: the
    # blob's codec byte must name the codec that made the payload, or restore cannot decode it.
    if layout is None or chosen not in (Codec.JPEGLS, Codec.JPEGXL):
        return None
    codec = ImageCodec.JPEGXL if chosen == Codec.JPEGXL else ImageCodec.JPEGLS
    encoded = encode_frame(codec, data, layout)  # type: ignore[arg-type]
    if encoded is None:
        return None
    prefix = _LAYOUT.pack(*(getattr(layout, f) for f in _LAYOUT_FIELDS))
    return Codec(chosen), prefix + encoded


_LAYOUT_FIELDS = (
    "rows",
    "columns",
    "samples_per_pixel",
    "bits_allocated",
    "bits_stored",
    "pixel_representation",
    "planar_configuration",
    "little_endian",
)


def encode(data: bytes | memoryview, hint: Hint = Hint()) -> tuple[Codec, bytes]:
    """Pick the codec for `data` and return (codec, payload); always lossless.

    Invariant 6: whatever a hint carries (it comes from a file that may be damaged), an encoder
    that raises on it leaves the chunk to the plain path (zstd or stored), never to the caller.
    """
    if hint.content in (Content.NATIVE_FRAME, Content.DICOM_HEADER):
        try:
            hinted = _encode_hinted(data, hint)
        except Exception:
            hinted = None
        if hinted is not None:
            return hinted
    return _encode_plain(data)


def _encode_hinted(data: bytes | memoryview, hint: Hint) -> tuple[Codec, bytes] | None:
    """The header dictionary or image codec a hint asks for; None: use the plain path."""
    if hint.content == Content.DICOM_HEADER:
        return Codec.ZSTD_HEADER_DICT, _zstd(dict_=True)[0].compress(data)
    image = _encode_image(data, hint)
    if image is None:
        return None
    # Smooth, synthetic or small frames can favour zstd; the image codec wins on real
    # acquisitions by 1.5-2x (docs/design.md), so zstd is tried only when it plausibly wins.
    if len(image[1]) * IMAGE_TRY_ZSTD_RATIO < len(data) or not _zstd_may_beat(data, len(image[1])):
        return image
    payload = _zstd()[0].compress(data)
    return image if len(image[1]) <= len(payload) else (Codec.ZSTD, payload)


def _encode_plain(data: bytes | memoryview) -> tuple[Codec, bytes]:
    if _probe_says_store(data):
        return Codec.STORED, bytes(data)
    payload = _zstd()[0].compress(data)
    if len(payload) >= len(data):
        return Codec.STORED, bytes(data)
    return Codec.ZSTD, payload


def decode(codec: int, payload: bytes | memoryview, raw_len: int) -> bytes | bytearray:
    if codec == Codec.STORED:
        return bytes(payload)
    if codec == Codec.ZSTD:
        return _zstd()[1].decompress(payload, max_output_size=raw_len)
    if codec == Codec.ZSTD_HEADER_DICT:
        return _zstd(dict_=True)[1].decompress(payload, max_output_size=raw_len)
    if codec in (Codec.JPEGLS, Codec.JPEGXL):
        from engine.dicom.segment import PixelLayout
        from engine.imagecodec import ImageCodec, decode_frame

        rows, cols, spp, alloc, stored, rep, planar, little = _LAYOUT.unpack_from(payload)
        layout = PixelLayout(rows, cols, spp, alloc, stored, rep, planar, bool(little))
        image = ImageCodec.JPEGLS if codec == Codec.JPEGLS else ImageCodec.JPEGXL
        return decode_frame(image, payload[_LAYOUT.size :], layout, raw_len)
    raise FormatError(f"unknown codec {codec}")


def padme(length: int) -> int:
    """Padmé padding (Nikitin et al., PETS 2019): leaks O(log log L) bits, overhead ≤ 12 %."""
    if length < 2:
        return length
    e = length.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask


def _aad(chunk_id: bytes) -> bytes:
    return b"DVBL" + bytes([VERSION]) + chunk_id


def _blob_key(key: MasterKey, salt: bytes) -> AESGCM:
    return AESGCM(blake3.blake3(salt, key=key.encryption_key).digest())


def seal_plaintext(key: MasterKey, chunk_id: bytes, plaintext: bytes | bytearray) -> bytes:
    salt = os.urandom(SALT_SIZE)
    out = bytearray(1 + SALT_SIZE + len(plaintext) + TAG_SIZE)
    out[0], out[1 : 1 + SALT_SIZE] = VERSION, salt
    # Straight into place: no separate ciphertext to copy behind the version and salt.
    _blob_key(key, salt).encrypt_into(
        _NONCE, plaintext, _aad(chunk_id), memoryview(out)[1 + SALT_SIZE :]
    )
    return bytes(out)


def open_plaintext(key: MasterKey, chunk_id: bytes, blob: bytes | memoryview) -> bytes:
    if len(blob) < 1 + SALT_SIZE + TAG_SIZE or blob[0] != VERSION:
        raise IntegrityError(f"chunk {chunk_id.hex()}: malformed blob")
    salt = bytes(blob[1 : 1 + SALT_SIZE])
    try:
        # A view: slicing bytes would copy the ciphertext, a third encoded copy per worker.
        ciphertext = memoryview(blob)[1 + SALT_SIZE :]
        return _blob_key(key, salt).decrypt(_NONCE, ciphertext, _aad(chunk_id))
    except InvalidTag:
        raise IntegrityError(
            f"chunk {chunk_id.hex()}: authentication failed (tampered or corrupt)"
        ) from None


def seal(key: MasterKey, chunk_id: ChunkId, data: bytes | memoryview, hint: Hint = Hint()) -> bytes:
    """Encode, pad and encrypt one chunk into a blob."""
    codec, payload = encode(data, hint)
    framed_len = _FRAME.size + len(payload)
    plaintext = bytearray(padme(framed_len))  # zero padding included
    _FRAME.pack_into(plaintext, 0, codec, len(data), len(payload))
    plaintext[_FRAME.size : framed_len] = payload
    del payload  # a worker holds at most two copies of an encoded chunk at once
    return seal_plaintext(key, chunk_id, plaintext)


def open_blob(key: MasterKey, chunk_id: ChunkId, blob: bytes | memoryview) -> bytes | bytearray:
    """Decrypt and decode a blob; verify the plaintext hashes to `chunk_id`. The blob is let go
    once decrypted, so a caller that hands over its only reference (`Repository.read_chunk`)
    does not hold the sealed copy while the frame decodes."""
    plaintext = open_plaintext(key, chunk_id, blob)
    del blob
    codec, raw_len, payload_len = _FRAME.unpack_from(plaintext)
    payload = memoryview(plaintext)[_FRAME.size : _FRAME.size + payload_len]
    try:
        data = decode(codec, payload, raw_len)
    except (zstandard.ZstdError, ValueError, RuntimeError) as e:
        raise IntegrityError(f"chunk {chunk_id.hex()}: cannot decode: {e}") from None
    if len(data) != raw_len or key.chunk_id(data) != chunk_id:
        raise IntegrityError(f"chunk {chunk_id.hex()}: content does not match its id")
    return data
