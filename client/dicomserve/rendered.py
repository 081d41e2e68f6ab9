"""WADO-RS rendered resources (PS3.18 §10.4.1.1.4, §8.3.5): one frame of an instance as a
consumer image, `image/jpeg` (the default), `image/png` or `image/gif` (grey lossless; colour
reduced to 256 colours by Pillow).

Owns the request's rendering parameters (the `Accept` header, `window=center,width,function`,
`quality`) and the pipeline: decode the frame with pydicom (colour converted to RGB), then for
monochrome the modality LUT (`apply_modality_lut`; Rescale or a LUT, from the enhanced
multi-frame functional groups too), the VOI (`apply_voi_lut`: the `window` parameter, else the
instance's VOI LUT or first window, else the frame's own range) mapped to 8 bits, MONOCHROME1
inverted; palette colour through its LUT; deeper colour scaled to 8 bits. Must not know HTTP
or the archive: web.py hands it an instance's bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from client.dicomserve.frames import (
    NATIVE,
    FrameError,
    frame_count,
    read_instance,
    transfer_syntax,
)

JPEG, PNG, GIF = "image/jpeg", "image/png", "image/gif"
FORMATS = {JPEG: JPEG, PNG: PNG, GIF: GIF, "image/*": JPEG, "*/*": JPEG}  # Accept → sent
PILLOW = {JPEG: "JPEG", PNG: "PNG", GIF: "GIF"}
DEFAULT_QUALITY = 90  # Pillow's JPEG quality when the request names none (Orthanc's default too)
VOI_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
HANDLED = frozenset({"window", "quality"})
# Attribute macros of the enhanced multi-frame functional groups that rendering reads.
FRAME_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window: center, width and the DICOM VOI LUT Function (LINEAR, …)."""

    center: float
    width: float
    function: str


@dataclass(frozen=True, slots=True)
class Rendering:
    """What a rendered request asks: media type, window (None: the instance's), JPEG quality,
    and the query parameters not supported here (ignored; web.py says so in a Warning)."""

    media_type: str
    window: Window | None = None
    quality: int = DEFAULT_QUALITY
    ignored: tuple[str, ...] = ()


def parse_rendering(accept: str, query: Mapping[str, str]) -> Rendering:
    window = query.get("window")
    return Rendering(
        media_type=parse_media_type(accept),
        window=parse_window(window) if window is not None else None,
        quality=_quality(query.get("quality")),
        ignored=tuple(sorted(set(query) - HANDLED)),
    )


def parse_media_type(header: str) -> str:
    """The image type to send: the supported one with the highest q (JPEG on a tie). JPEG
    is the default (PS3.18 table 8.7.4-1, "D"): sent for `image/*`, `*/*`, no header, or a
    header naming only types not made here; only a DICOM media type is refused (406)."""
    best: tuple[float, str] | None = None
    ranges = [r.split(";") for r in header.lower().split(",") if r.strip()]
    for kind, q in ((FORMATS.get(r[0].strip()), _q(r[1:])) for r in ranges):
        if kind and q > 0 and (best is None or q > best[0] or (q == best[0] and kind == JPEG)):
            best = (q, kind)
    if best is None and any(r[0].strip().startswith("application/dicom") for r in ranges):
        raise FrameError(406, f"a rendered resource is an image, not {header[:120]!r}")
    return best[1] if best else JPEG


def _q(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def parse_window(text: str) -> Window:
    """`center,width,function` (function `linear` if left out), as PS3.18 §8.3.5.1.4 gives it."""
    parts = [p.strip() for p in text.split(",")]
    function = VOI_FUNCTIONS.get(parts[2].lower() if len(parts) == 3 else "linear")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        center = width = math.nan
    if len(parts) > 3 or function is None or not math.isfinite(center + width):
        raise FrameError(
            400, f"window {text[:80]!r}: give center,width,linear|linear-exact|sigmoid"
        )
    if width < (1 if function == "LINEAR" else 0) or width == 0:
        raise FrameError(400, f"window {text[:80]!r}: width must be ≥ 1 (linear) or > 0")
    return Window(center, width, function)


def _quality(text: str | None) -> int:
    if text is None:
        return DEFAULT_QUALITY
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise FrameError(400, f"quality {text[:20]!r}: give an integer from 1 to 100")
    return int(text)


def render(data: bytes, frame: int, rendering: Rendering) -> bytes:
    """Frame `frame` (from 1) of a Part 10 instance as an encoded image."""
    ds = read_instance(data)
    count = frame_count(ds)
    if frame > count:
        raise FrameError(404, f"frame {frame} asked, the instance has {count}")
    pixels = _decode(ds, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith("MONOCHROME"):
        _frame_groups(ds, frame)
        try:
            image = _grey(pixels, ds, rendering.window, invert=photometric == "MONOCHROME1")
        except (ValueError, NotImplementedError, AttributeError) as e:  # a malformed LUT or window
            raise FrameError(422, f"the instance's LUTs cannot be applied ({e})") from None
    else:
        image = _colour(pixels, ds, photometric)
    return _encode(image, rendering)


def _decode(ds: Any, frame: int) -> Any:
    from pydicom.pixels import pixel_array

    ts = transfer_syntax(ds)
    try:
        return pixel_array(ds, index=frame - 1)  # YBR converted to RGB
    except Exception as e:  # no decoder installed for this syntax, or damaged pixel data
        if ts in NATIVE or not ts:
            raise FrameError(422, f"the pixel data cannot be read ({_line(e)})") from None
        raise FrameError(
            406, f"the instance is stored as {ts}, which cannot be decoded here ({_line(e)})"
        ) from None


def _line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _frame_groups(ds: Any, frame: int) -> None:
    """Copy the frame's rescale and window from the functional groups (shared, then the
    frame's own, which wins) to the top level, where pydicom's LUT functions read them."""
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    groups: list[Any] = [*shared[:1], *per_frame[frame - 1 : frame]]
    for group in groups:
        for macro in FRAME_MACROS:
            for elem in group[macro][0] if group.get(macro) else ():
                ds[elem.tag] = elem


def _grey(pixels: Any, ds: Any, window: Window | None, invert: bool) -> Any:
    import numpy as np
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(pixels, ds)
    if window is not None:
        _set_window(ds, window)
    if ds.get("VOILUTSequence"):
        low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        values = apply_voi_lut(values, ds)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_voi_lut(values, _eight_bit_window(ds))
        low, high = 0.0, 255.0  # the stand-in's output range
    else:  # no VOI in the instance: the frame's own range
        low, high = float(values.min()), float(values.max())
    scaled = (np.asarray(values, dtype=np.float64) - low) * (255 / max(high - low, 1e-9))
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return 255 - grey if invert else grey


def _set_window(ds: Any, window: Window) -> None:
    ds.WindowCenter, ds.WindowWidth = window.center, window.width
    ds.VOILUTFunction = window.function
    if "VOILUTSequence" in ds:
        del ds.VOILUTSequence  # the request's window overrides the instance's VOI LUT


def _eight_bit_window(ds: Any) -> Any:
    """The instance's first window on a stand-in dataset whose VOI output range is 0–255
    (pydicom scales a window's output to the stored bit depth; the image wants 8 bits)."""
    from pydicom.dataset import Dataset

    stand_in = Dataset()
    stand_in.PhotometricInterpretation = "MONOCHROME2"
    stand_in.BitsStored, stand_in.PixelRepresentation = 8, 0
    stand_in.WindowCenter = _first(ds.WindowCenter)
    stand_in.WindowWidth = _first(ds.WindowWidth)
    stand_in.VOILUTFunction = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
    return stand_in


def _first(value: Any) -> float:
    """A window value's first (VM 1-n: one window per alternative view)."""
    return float(value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value)


def _colour(pixels: Any, ds: Any, photometric: str) -> Any:
    import numpy as np

    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, ds)
        bits = pixels.dtype.itemsize * 8
    else:
        bits = int(ds.get("BitsStored", 8) or 8)
    if bits <= 8:
        return pixels.astype(np.uint8)
    return np.rint(pixels.astype(np.float64) * (255 / (2**bits - 1))).astype(np.uint8)


def _encode(image: Any, rendering: Rendering) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    options = {"quality": rendering.quality} if rendering.media_type == JPEG else {}
    Image.fromarray(image).save(out, format=PILLOW[rendering.media_type], **options)
    return out.getvalue()
