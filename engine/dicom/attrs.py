"""Catalogue attributes of a DICOM file: which ones the snapshot records, and decoding them.

Owns the attribute list (PatientID … SOPInstanceUID, TransferSyntaxUID), decoding the raw values
the fast walker in `engine.dicom.segment` collected (with the file's character set), and reading
them through pydicom for files the walker leaves alone. Never raises on bad values: an attribute
that cannot be decoded is kept as latin-1 or left out. pydicom is imported only where it is used
(it costs ~0.5 s at start-up; ASCII values never need it).
"""

from __future__ import annotations

import io
import warnings

TAG_TRANSFER_SYNTAX = 0x00020010
TAG_CHARSET = 0x00080005
TAG_NUMBER_OF_FRAMES = 0x00280008
PYDICOM_DEFER_SIZE = 64 << 10  # bytes; larger values stay unread in the pydicom fallback
_ESC = 0x1B  # ISO 2022 escape: ASCII bytes that still need the charset to decode

# Catalogue attributes: tag -> (keyword, how the value is decoded).
CATALOGUE: dict[int, tuple[str, str]] = {
    0x00100020: ("PatientID", "text"),
    0x00100010: ("PatientName", "pn"),
    0x00100030: ("PatientBirthDate", "ascii"),
    0x0020000D: ("StudyInstanceUID", "ascii"),
    0x00080020: ("StudyDate", "ascii"),
    0x00080050: ("AccessionNumber", "text"),
    0x00081030: ("StudyDescription", "text"),
    0x00080060: ("Modality", "ascii"),
    0x0020000E: ("SeriesInstanceUID", "ascii"),
    0x00080018: ("SOPInstanceUID", "ascii"),
    TAG_TRANSFER_SYNTAX: ("TransferSyntaxUID", "ascii"),
    TAG_NUMBER_OF_FRAMES: ("NumberOfFrames", "ascii"),
}


def decode_attrs(collected: dict[int, bytes]) -> dict[str, str]:
    attrs = {}
    encodings: list[str] | None = None
    for tag, (keyword, kind) in CATALOGUE.items():
        raw = collected.get(tag)
        if raw is None:
            continue
        if kind == "ascii" or (raw.isascii() and _ESC not in raw):
            value = ascii_value(raw)  # the default repertoire needs no charset (and no pydicom)
        else:
            encodings = encodings or _encodings(collected.get(TAG_CHARSET))
            value = _person_name(raw, encodings) if kind == "pn" else _text(raw, encodings)
        if value:
            attrs[keyword] = value
    return attrs


def ascii_value(raw: bytes) -> str:
    """A value in the default repertoire, without its padding."""
    return raw.decode("latin-1").rstrip("\x00 ")


def _encodings(raw: bytes | None) -> list[str]:
    from pydicom.charset import convert_encodings

    terms = [t.strip() for t in ascii_value(raw).split("\\")] if raw else [""]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert_encodings(terms)
    except Exception:  # an unknown charset must not lose the catalogue entry
        return ["iso8859"]


def _text(raw: bytes, encodings: list[str]) -> str:
    from pydicom.charset import decode_bytes
    from pydicom.valuerep import TEXT_VR_DELIMS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decoded = decode_bytes(raw, encodings, TEXT_VR_DELIMS)
    except Exception:
        decoded = raw.decode("latin-1")
    return "\\".join(v.rstrip("\x00 ") for v in decoded.split("\\")).rstrip("\x00 ")


def _person_name(raw: bytes, encodings: list[str]) -> str:
    from pydicom.valuerep import PersonName
    from pydicom.values import convert_PN

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = convert_PN(raw, encodings)
    except Exception:
        return _text(raw, encodings)
    names = [value] if isinstance(value, PersonName) else list(value)
    return "\\".join(str(name) for name in names).rstrip("\x00 ")


# --- pydicom fallback ----------------------------------------------------------------------------


class _MemoryReader(io.RawIOBase):
    """A read-only, seekable file over a memoryview, so pydicom never gets a copy of the buffer."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self._view[self._pos : self._pos + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def pydicom_attrs(view: memoryview) -> tuple[str | None, dict[str, str]]:
    """(transfer syntax, catalogue attributes) through pydicom, for files the fast walker left
    alone (deflated, big endian, odd); ({}, None) when pydicom cannot read them either."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = _MemoryReader(view)
            ds = pydicom.dcmread(
                reader, stop_before_pixels=True, force=True, defer_size=PYDICOM_DEFER_SIZE
            )
            attrs = {keyword: _pydicom_str(ds.get(keyword)) for keyword, _ in CATALOGUE.values()}
            ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    except Exception:
        return None, {}
    attrs = {k: v for k, v in attrs.items() if v}
    if ts:
        attrs["TransferSyntaxUID"] = str(ts)
    return (str(ts) if ts else None), attrs


def _pydicom_str(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).rstrip("\x00 ")  # type: ignore[attr-defined]
    return str(value).rstrip("\x00 ")
