"""WADO-RS bulk data (PS3.18 §8.6.2, §10.4.1.1.3): which values of an instance's metadata go as
a `BulkDataURI`, and the bytes a GET on that URI returns.

Owns the URI scheme `…/instances/{sop}/bulkdata/{path}` (path: the attribute's tag, and for
one inside a sequence the sequence's tag and item index before it, `00540016/0/00181072`;
items count from 0 as in the JSON `Value` array) and reading a value back by that path. Pixel
Data (7FE00010 of the top-level dataset) goes through `client.dicomserve.frames`, so the
`Accept` rules of frames hold for it too; any other value goes as its stored bytes in little
endian. Must not know HTTP or the archive: web.py hands it an instance's bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from client.dicomserve.frames import (
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    Accepted,
    FrameError,
    cut_dataset,
    frame_count,
    read_instance,
    transfer_syntax,
)

# A value whose base64 text would be longer than this many characters goes as a BulkDataURI
# (pydicom's rule: more than 768 bytes); dcm4chee and Orthanc draw the line near 1 KiB too.
BULK_THRESHOLD = 1024
PIXEL_DATA = 0x7FE00010
WORD_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}  # byte-swapped from big endian
BINARY_VRS = frozenset({"OB", "UN", *WORD_BYTES})
_PATH = re.compile(r"[0-9A-Fa-f]{8}(/\d{1,6}/[0-9A-Fa-f]{8}){0,16}")


@dataclass(frozen=True, slots=True)
class Bulk:
    """A bulk data value as octet-stream parts: one part, or one per frame for pixel data
    sent encapsulated as stored."""

    transfer_syntax: str
    parts: list[bytes]


def metadata_json(data: bytes, instance_uri: str) -> dict[str, Any]:
    """An instance's attributes as DICOM JSON, each value over the threshold as a URI."""
    ds = read_instance(data)
    paths = _paths(ds)
    doc: dict[str, Any] = ds.to_json_dict(
        bulk_data_threshold=BULK_THRESHOLD,
        bulk_data_element_handler=lambda elem: f"{instance_uri}/bulkdata/{paths[id(elem)]}",
    )
    return doc


def _paths(ds: Any, prefix: str = "") -> dict[int, str]:
    """Every element's bulk data path, keyed by the element object pydicom hands the URI
    handler (a dataset keeps the element it converted, so the object is the same)."""
    out: dict[int, str] = {}
    for elem in ds:
        path = f"{prefix}{elem.tag:08X}"
        if elem.VR == "SQ":
            for n, item in enumerate(elem.value):
                out.update(_paths(item, f"{path}/{n}/"))
        else:
            out[id(elem)] = path
    return out


def read_bulk(data: bytes, path: str, accepted: Accepted) -> Bulk:
    """The value at `path` of a Part 10 instance, in an encoding `accepted` takes."""
    if not _PATH.fullmatch(path):
        raise FrameError(404, f"bulk data path {path[:80]!r}: give TAG or TAG/ITEM/TAG…")
    ds = read_instance(data)
    if path.upper() == f"{PIXEL_DATA:08X}":
        return _pixel_data(ds, accepted)
    elem = _element(ds, path)
    if elem.VR not in BINARY_VRS or elem.value is None:
        raise FrameError(404, f"{path} is no bulk data value (VR {elem.VR})")
    if not accepted.takes(EXPLICIT_VR_LE):
        raise FrameError(406, f"bulk data values are sent as {EXPLICIT_VR_LE} octets only")
    return Bulk(EXPLICIT_VR_LE, [_little_endian(bytes(elem.value), elem.VR, transfer_syntax(ds))])


def _pixel_data(ds: Any, accepted: Accepted) -> Bulk:
    count = frame_count(ds)
    cut = cut_dataset(ds, list(range(1, count + 1)), accepted)
    if cut.transfer_syntax == EXPLICIT_VR_LE:  # native, stored so or decoded: the whole value
        return Bulk(EXPLICIT_VR_LE, [b"".join(cut.frames)])
    return Bulk(cut.transfer_syntax, cut.frames)  # encapsulated as stored: a part per frame


def _element(ds: Any, path: str) -> Any:
    steps = path.split("/")
    try:
        for seq_tag, item in zip(steps[:-1:2], steps[1:-1:2], strict=True):
            ds = ds[int(seq_tag, 16)].value[int(item)]
        return ds[int(steps[-1], 16)]
    except (KeyError, IndexError, TypeError, AttributeError):
        raise FrameError(404, f"this instance has no value at {path}") from None


def _little_endian(value: bytes, vr: str, ts: str) -> bytes:
    size = WORD_BYTES.get(vr, 1)
    if ts != EXPLICIT_VR_BE or size == 1 or len(value) % size:
        return value
    import numpy as np

    return np.frombuffer(value, f">u{size}").astype(f"<u{size}").tobytes()
