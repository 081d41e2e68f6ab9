"""Train the zstd dictionary for DICOM headers (engine/assets/header-dict-vN.zstd), reproducibly.

Owns the choice of training files, the train/held-out split and the training parameters, and
reports header compression with and without the dictionary. Reads only the DICOM files that ship
with pydicom and pydicom-data; writes only the asset named on the command line.

    python -m benchmarks.train_header_dict            # train, compare with the shipped asset
    python -m benchmarks.train_header_dict --write    # train and overwrite the shipped asset

Training is deterministic for a given set of input files (fixed order, fixed k/d/f, one thread,
no parameter search); `--write` trains twice and refuses to write if the two runs differ. The input
set depends on the installed pydicom and pydicom-data versions, which are printed: if they change,
the shipped asset stays the reference and a new dictionary means a new HEADER_DICT_VERSION.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import statistics
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
import zstandard
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from engine.imagecodec import HEADER_DICT_ID, HEADER_DICT_VERSION

DICT_SIZE = 16 * 1024
ZSTD_LEVEL = 3
# fastCover parameters fixed so no parameter search (and no thread race) takes part.
TRAIN_K = 200
TRAIN_D = 8
TRAIN_F = 20
# Every HOLDOUT_EVERY-th file in the fixed order is kept out of training and used for evaluation.
HOLDOUT_EVERY = 5
# Files without Pixel Data are all header; cap them so a few large RT/SR objects do not dominate.
MAX_SAMPLE_BYTES = 64 * 1024
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # little, big endian
ASSET = Path(__file__).resolve().parent.parent / "engine" / "assets"


@dataclass(frozen=True, slots=True)
class Header:
    """The bytes before the top-level Pixel Data element of one file (the header segment)."""

    source: str  # "pydicom" or "pydicom-data"
    name: str  # path relative to the collection root, the sort key
    data: bytes


def collection_roots() -> list[tuple[str, Path]]:
    """The two collections, in training order."""
    import data_store  # pydicom-data's module

    pydicom_data = Path(pydicom.__file__).parent / "data"
    return [
        ("pydicom", pydicom_data / "test_files"),
        ("pydicom", pydicom_data / "charset_files"),
        ("pydicom-data", Path(data_store.__file__).parent / "data"),
    ]


def collect_headers() -> list[Header]:
    """Every parsable, non-deflated, non-DICOMDIR file's header, in a fixed order."""
    headers = []
    for source, root in collection_roots():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = header_bytes(path)
            if data:
                headers.append(Header(source, path.relative_to(root).as_posix(), data))
    return headers


def header_bytes(path: Path) -> bytes | None:
    """Bytes before the top-level (7FE0,0010) element, or None for files to leave out."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=256)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
        return None
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return None
    if meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        return None  # the dataset is one deflate stream; the segmenter does not cut these
    if meta.get("MediaStorageSOPClassUID") == DICOMDIR_SOP_CLASS:
        return None
    data = path.read_bytes()
    if 0x7FE00010 not in ds:
        return data[:MAX_SAMPLE_BYTES]
    item = ds.get_item(0x7FE00010)
    # a raw (deferred) element knows where its value starts; a converted one calls it file_tell
    value_start = getattr(item, "value_tell", None) or getattr(item, "file_tell", None)
    if not value_start:
        return None
    window_start = max(0, value_start - 12)  # element header: 8 (implicit) or 12 bytes (OB/OW)
    cut = max(data.rfind(tag, window_start, value_start) for tag in PIXEL_DATA_TAGS)
    return data[:cut] if cut > 0 else None


def split(headers: Sequence[Header]) -> tuple[list[Header], list[Header]]:
    """(training, held out): every HOLDOUT_EVERY-th header in the fixed order is held out."""
    train = [h for i, h in enumerate(headers) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    held_out = [h for i, h in enumerate(headers) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    return train, held_out


def train(samples: Iterable[Header]) -> bytes:
    """One deterministic fastCover training run."""
    dictionary = zstandard.train_dictionary(
        DICT_SIZE,
        [h.data for h in samples],
        k=TRAIN_K,
        d=TRAIN_D,
        f=TRAIN_F,
        dict_id=HEADER_DICT_ID,
        level=ZSTD_LEVEL,
        threads=1,
    )
    return dictionary.as_bytes()


def compressed_sizes(headers: Iterable[Header], dictionary: bytes | None) -> list[int]:
    """zstd size of each header compressed on its own, as the engine stores them."""
    zdict = zstandard.ZstdCompressionDict(dictionary) if dictionary else None
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=zdict)
    return [len(compressor.compress(h.data)) for h in headers]


def report(label: str, headers: Sequence[Header], dictionary: bytes) -> None:
    """Total ratio (weighted by size) and the median file's ratio, without and with the dict."""
    raw = [len(h.data) for h in headers]
    plain = compressed_sizes(headers, None)
    with_dict = compressed_sizes(headers, dictionary)
    median_plain = statistics.median(r / c for r, c in zip(raw, plain, strict=True))
    median_dict = statistics.median(r / c for r, c in zip(raw, with_dict, strict=True))
    print(
        f"{label:<32} {len(headers):3} files {sum(raw):>8} B | zstd-{ZSTD_LEVEL} total"
        f" {sum(raw) / sum(plain):5.2f}x median {median_plain:5.2f}x | +dict total"
        f" {sum(raw) / sum(with_dict):5.2f}x median {median_dict:5.2f}x"
    )


def versions() -> str:
    return ", ".join(
        f"{dist} {importlib.metadata.version(dist)}"
        for dist in ("pydicom", "pydicom-data", "zstandard")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="overwrite the shipped asset")
    args = parser.parse_args(argv)
    asset = ASSET / f"header-dict-v{HEADER_DICT_VERSION}.zstd"

    headers = collect_headers()
    train_set, held_out = split(headers)
    dictionary = train(train_set)
    deterministic = train(train_set) == dictionary
    print(f"{versions()}; zstd {zstandard.ZSTD_VERSION}")
    print(
        f"trained on {len(train_set)} headers, {len(held_out)} held out; deterministic: "
        f"{deterministic}; sha256 {hashlib.sha256(dictionary).hexdigest()}"
    )
    report("training headers", train_set, dictionary)
    report("held-out headers", held_out, dictionary)
    # A stricter check: a dictionary that has seen no pydicom-data file, scored on pydicom-data.
    foreign = [h for h in headers if h.source == "pydicom-data"]
    report(
        "pydicom-data, dict from pydicom",
        foreign,
        train([h for h in train_set if h.source == "pydicom"]),
    )

    if args.write:
        if not deterministic:
            print("two training runs differ; not writing", file=sys.stderr)
            return 1
        asset.write_bytes(dictionary)
        print(f"wrote {asset} ({len(dictionary)} bytes)")
        return 0
    shipped = asset.read_bytes() if asset.exists() else b""
    print(f"shipped asset {'matches' if shipped == dictionary else 'DIFFERS'}: {asset}")
    return 0 if shipped == dictionary else 1


if __name__ == "__main__":
    sys.exit(main())
