"""The codec frontier: compressed size against backup and restore speed, per codec and per kind of
native frame, on the frames backup really cuts from a corpus (`client.walk.pieces`).

    python -m benchmarks.throughput_codecs --corpus DIR [--json FILE] [--max-mb 200]

Every candidate runs single-threaded on the same frames. "backup MB/s" is encode plus the
verify-decode and comparison that backup does before it seals an image-codec payload; "restore
MB/s" is one decode. A candidate that does not restore a frame bit for bit is marked lossy and
never recommended. Measures codecs; changes nothing.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import zstandard

from benchmarks.common import md_table, print_report
from client.walk import pieces
from engine.blob import Codec, Content
from engine.chunker import Chunker
from engine.dicom import segment
from engine.dicom.segment import PixelLayout
from engine.imagecodec import _from_codec_array, _to_codec_array

MB = 1_000_000
Encode = Callable[[np.ndarray, bytes], bytes]
Decode = Callable[[bytes, np.ndarray], bytes]


def _zstd_enc(level: int) -> Encode:
    c = zstandard.ZstdCompressor(level=level)
    return lambda a, raw: c.compress(raw)


def _zstd_dec(encoded: bytes, like: np.ndarray) -> bytes:
    return zstandard.ZstdDecompressor().decompress(encoded)


def _image(decode: Callable[[bytes], Any]) -> Decode:
    return lambda encoded, like: np.asarray(decode(encoded)).tobytes()


CANDIDATES: dict[str, tuple[Encode, Decode]] = {
    "jpegls": (
        lambda a, raw: bytes(imagecodecs.jpegls_encode(a)),
        _image(imagecodecs.jpegls_decode),
    ),
    "jpegxl-e1": (
        lambda a, raw: bytes(imagecodecs.jpegxl_encode(a, lossless=True, effort=1)),
        _image(imagecodecs.jpegxl_decode),
    ),
    "htj2k": (
        lambda a, raw: bytes(imagecodecs.htj2k_encode(a, level=0, reversible=True)),
        _image(imagecodecs.htj2k_decode),
    ),
    "zstd-3": (_zstd_enc(3), _zstd_dec),
    "zstd-1": (_zstd_enc(1), _zstd_dec),
}


@dataclass
class Frame:
    kind: str
    layout: PixelLayout
    raw: bytes


@dataclass
class Figure:
    raw: int = 0
    encoded: int = 0
    backup_s: float = 0.0
    restore_s: float = 0.0
    lossy: int = 0
    frames: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "raw_mb": round(self.raw / MB, 1),
            "ratio": round(self.encoded / self.raw, 4) if self.raw else None,
            "backup_mb_s": round(self.raw / MB / self.backup_s, 1) if self.backup_s else None,
            "restore_mb_s": round(self.raw / MB / self.restore_s, 1) if self.restore_s else None,
            "lossy_frames": self.lossy,
        }


@dataclass
class Frontier:
    figures: dict[str, dict[str, Figure]] = field(default_factory=dict)  # kind → codec → figure

    def add(self, kind: str, codec: str) -> Figure:
        return self.figures.setdefault(kind, {}).setdefault(codec, Figure())


def frame_kind(layout: PixelLayout, modality: str) -> str:
    colour = "RGB" if layout.samples_per_pixel == 3 else "mono"
    return f"{modality or '?'} {layout.bits_allocated}-bit {colour}"


def native_frames(root: Path, max_bytes: int) -> Iterator[Frame]:
    """Every native frame (or row band) that backup would hand an image codec."""
    chunker, seen = Chunker(0), 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        f = io.BytesIO(data)
        layout = segment(data)
        if layout is None:
            continue
        modality = (layout.attrs or {}).get("Modality", "")
        for piece, hint in pieces(chunker, f, layout, len(data), Codec.JPEGLS):
            if hint.content != Content.NATIVE_FRAME or not isinstance(hint.layout, PixelLayout):
                continue
            yield Frame(frame_kind(hint.layout, modality), hint.layout, piece.data)
            seen += len(piece.data)
            if seen >= max_bytes:
                return


def measure(frames: list[Frame]) -> Frontier:
    out = Frontier()
    for frame in frames:
        array = _to_codec_array(frame.raw, frame.layout)
        for name, (encode, decode) in CANDIDATES.items():
            fig = out.add(frame.kind, name)
            fig.frames += 1
            fig.raw += len(frame.raw)
            try:
                start = time.perf_counter()
                encoded = encode(array, frame.raw)
                decoded = decode(encoded, array)
                if name.startswith("zstd"):
                    ok = decoded == frame.raw
                else:
                    words = np.frombuffer(decoded, array.dtype).reshape(array.shape)
                    ok = _from_codec_array(words, frame.layout).tobytes() == frame.raw
                fig.backup_s += time.perf_counter() - start
                start = time.perf_counter()
                decode(encoded, array)
                fig.restore_s += time.perf_counter() - start
            except Exception:
                ok, encoded = False, frame.raw
            fig.encoded += len(encoded)
            fig.lossy += not ok
    return out


def report(frontier: Frontier) -> dict[str, Any]:
    return {
        kind: {codec: fig.as_json() for codec, fig in codecs.items()}
        for kind, codecs in sorted(frontier.figures.items())
    }


def markdown(doc: dict[str, Any]) -> str:
    header = ("frame kind", "codec", "frames", "raw MB", "compressed ÷ raw", "backup MB/s",
              "restore MB/s")  # fmt: skip
    rows = [
        (
            kind,
            f"{codec}{' (not lossless!)' if f['lossy_frames'] else ''}",
            f["frames"],
            f["raw_mb"],
            f["ratio"],
            f["backup_mb_s"],
            f["restore_mb_s"],
        )
        for kind, codecs in doc.items()
        for codec, f in codecs.items()
    ]
    return "\n".join(md_table(header, "llrrrrr", rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput_codecs", description=__doc__)
    p.add_argument("--corpus", type=Path, required=True, help="a folder of DICOM files")
    p.add_argument("--max-mb", type=float, default=200, help="frames measured, MB (default 200)")
    p.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    args = p.parse_args(argv)
    frames = list(native_frames(args.corpus, int(args.max_mb * MB)))
    return print_report(report(measure(frames)), markdown, args.json)


if __name__ == "__main__":
    sys.exit(main())
