"""WADO-RS frames (PS3.18 §10.4.1.1.4): which frames a client asks for, which encodings it
takes, and the frames' bytes out of an instance as stored.

Owns parsing the frame list and the `Accept` header of a frame request, and cutting frames:
native pixel data is cut into frames of Rows × Columns × SamplesPerPixel × BitsAllocated / 8
bytes and sent as explicit VR little endian (`application/octet-stream`, big endian swapped);
encapsulated pixel data is sent frame by frame as stored when the client takes that transfer
syntax (or `transfer-syntax=*`, as OHIF asks), else decoded to native by pydicom's decoders when
one is installed, else refused as not acceptable (406) with the stored syntax named. Must not
know HTTP or the archive: web.py hands it an instance's bytes and the header.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

OCTET = "application/octet-stream"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
NATIVE = frozenset({EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE})
MAX_FRAMES_ASKED = 10_000  # more numbers than any instance has frames: a malformed request


class FrameError(ValueError):
    """The request cannot be answered: `status` is the HTTP status to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Accepted:
    """The transfer syntaxes a frame request takes: `any` for `transfer-syntax=*`."""

    syntaxes: frozenset[str]
    any: bool = False

    def takes(self, ts: str) -> bool:
        return self.any or ts in self.syntaxes


@dataclass(frozen=True, slots=True)
class Frames:
    transfer_syntax: str
    frames: list[bytes]


def parse_frame_list(text: str) -> list[int]:
    """`1,3,5` → [1, 3, 5]; frame numbers start at 1."""
    parts = text.split(",")
    if len(parts) > MAX_FRAMES_ASKED or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise FrameError(
            400, f"frame list {text[:80]!r}: give frame numbers from 1, comma-separated"
        )
    return [int(p) for p in parts]


def parse_accept(header: str) -> Accepted:
    """The syntaxes an `Accept` header takes for frames. No header, `*/*` or a bare
    `multipart/related` mean the default: explicit VR little endian octets."""
    syntaxes: set[str] = set()
    any_ts = False
    for media_range in header.split(",") if header.strip() else ["*/*"]:
        fields = [f.strip() for f in media_range.split(";")]
        params = dict(_param(f) for f in fields[1:] if "=" in f)
        kind = fields[0].lower()
        part = params.get("type", OCTET if kind in ("multipart/related", "*/*") else kind)
        if kind not in ("multipart/related", "*/*", OCTET) or part not in (OCTET, "*/*", "*"):
            continue  # a rendered or image/* media type: frames are sent as octets only
        ts = params.get("transfer-syntax", EXPLICIT_VR_LE)
        if ts == "*":
            any_ts = True
        else:
            syntaxes.add(ts)
    if not syntaxes and not any_ts:
        raise FrameError(406, f"frames are sent as {OCTET} only (Accept: {header[:120]!r})")
    return Accepted(frozenset(syntaxes), any_ts)


def _param(field: str) -> tuple[str, str]:
    name, _, value = field.partition("=")
    return name.strip().lower(), value.strip().strip('"')


def read_instance(data: bytes) -> Any:
    """A Part 10 instance as a pydicom dataset (pixel data included, not decoded)."""
    import pydicom

    return pydicom.dcmread(io.BytesIO(data), force=True)


def transfer_syntax(ds: Any) -> str:
    return str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""


def frame_count(ds: Any) -> int:
    """NumberOfFrames of an instance with pixel data (404 for one without)."""
    if "PixelData" not in ds:
        raise FrameError(404, "this instance has no pixel data")
    return int(ds.get("NumberOfFrames", 1) or 1)


def cut_frames(data: bytes, numbers: list[int], accepted: Accepted) -> Frames:
    """The asked frames of a Part 10 instance, in the order asked."""
    return cut_dataset(read_instance(data), numbers, accepted)


def cut_dataset(ds: Any, numbers: list[int], accepted: Accepted) -> Frames:
    """The asked frames of a read instance, in the order asked."""
    ts = transfer_syntax(ds)
    count = frame_count(ds)
    beyond = [n for n in numbers if n > count]
    if beyond:
        raise FrameError(404, f"frame {beyond[0]} asked, the instance has {count}")
    if ts in NATIVE or not ts:
        if not accepted.takes(EXPLICIT_VR_LE):
            raise FrameError(406, f"native frames are sent as {EXPLICIT_VR_LE} only")
        return Frames(EXPLICIT_VR_LE, _native(ds, ts, count, numbers))
    if accepted.takes(ts):
        from pydicom.encaps import generate_frames

        stored = list(generate_frames(ds.PixelData, number_of_frames=count))
        return Frames(ts, [stored[n - 1] for n in numbers])
    if accepted.takes(EXPLICIT_VR_LE):
        return Frames(EXPLICIT_VR_LE, _decoded(ds, ts, numbers))
    raise FrameError(406, f"the instance is stored as {ts}: ask for it or for transfer-syntax=*")


def _native(ds: object, ts: str, count: int, numbers: list[int]) -> list[bytes]:
    rows, cols = int(ds.Rows), int(ds.Columns)  # type: ignore[attr-defined]
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    bits = int(ds.BitsAllocated)  # type: ignore[attr-defined]
    if bits % 8:
        raise FrameError(406, f"BitsAllocated {bits}: frames are not byte-aligned")
    size = rows * cols * samples * bits // 8
    pixels = bytes(ds.PixelData)  # type: ignore[attr-defined]
    if len(pixels) < size * count:
        raise FrameError(
            422, f"pixel data holds {len(pixels)} bytes, {count} frames need {size * count}"
        )
    out = [pixels[(n - 1) * size : n * size] for n in numbers]
    if ts == EXPLICIT_VR_BE and bits > 8:
        import numpy as np

        dtype = np.dtype(f">u{bits // 8}")
        out = [np.frombuffer(f, dtype).astype(dtype.newbyteorder("<")).tobytes() for f in out]
    return out


def _decoded(ds: object, ts: str, numbers: list[int]) -> list[bytes]:
    from pydicom.pixels import pixel_array

    out = []
    for n in numbers:
        try:
            frame = pixel_array(ds, index=n - 1, raw=True)  # type: ignore[arg-type]
        except Exception as e:  # no decoder installed for this syntax, or damaged frame data
            raise FrameError(
                406, f"the instance is stored as {ts} and cannot be decoded here ({e}); "
                "ask for transfer-syntax=* to get the frames as stored",
            ) from None  # fmt: skip
        out.append(frame.astype(frame.dtype.newbyteorder("<")).tobytes())
    return out
