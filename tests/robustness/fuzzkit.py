"""A seeded generator of malformed files for the robustness tests and `benchmarks.fuzz`.

Owns the mutations (truncation, flipped bytes, absurd lengths, broken sequences, wrong transfer
syntax, pixel data of the wrong size, out-of-range image attributes, DICM on garbage, empty and
sparse files, odd names, symlink loops) applied to the real DICOM files of pydicom and
pydicom-data, and the check every fuzz run applies (`backup_and_check`): the real CLI backs
the files up and restores them, without a crash, bit-exact except for the files it reported.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import (
    MiB,
    Vault,
    pydicom_data_files,
    pydicom_test_files,
    restored,
    tree_state,
)

EXIT_PARTIAL = 3  # the CLI's exit code for a backup that skipped files
SEED_MAX_SIZE = 1 * MiB  # seed files up to this size keep a 500-file run to seconds
LONG_NAME_BYTES = 255  # NAME_MAX: restore's temp names stay short (client/restore_target.py)
PREAMBLE = 128

TAG_TRANSFER_SYNTAX = (0x0002, 0x0010)
TAG_PIXEL_DATA = (0x7FE0, 0x0010)
TAG_NUMBER_OF_FRAMES = (0x0028, 0x0008)
IMAGE_TAGS = {
    "SamplesPerPixel": (0x0028, 0x0002),
    "Rows": (0x0028, 0x0010),
    "Columns": (0x0028, 0x0011),
    "BitsAllocated": (0x0028, 0x0100),
    "BitsStored": (0x0028, 0x0101),
    "PixelRepresentation": (0x0028, 0x0103),
    "PlanarConfiguration": (0x0028, 0x0006),
}
ODD_US_VALUES = (0, 1, 2, 3, 7, 12, 17, 32, 255, 256, 300, 27400, 0x7FFF, 0xFFFF)
TRANSFER_SYNTAXES = (
    b"1.2.840.10008.1.2\x00",  # implicit VR little endian
    b"1.2.840.10008.1.2.1\x00",  # explicit VR little endian
    b"1.2.840.10008.1.2.2\x00",  # explicit VR big endian
    b"1.2.840.10008.1.2.1.99",  # deflated
    b"1.2.840.10008.1.2.4.50",  # JPEG baseline
    b"1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    b"1.2.840.10008.1.2.5\x00",  # RLE
    b"9.9.9\x00",  # nonsense
)
ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
UNDEFINED = 0xFFFFFFFF


def seed_files() -> list[Path]:
    """The real DICOM files the mutations start from (small ones only)."""
    files = pydicom_test_files() + pydicom_data_files()
    return [p for p in files if 0 < p.stat().st_size <= SEED_MAX_SIZE]


# --- locating elements in raw bytes ---------------------------------------------------------------


@dataclass(frozen=True)
class Element:
    """An element header found by searching for its tag: where it is and how it is encoded."""

    offset: int
    explicit: bool

    @property
    def length_at(self) -> int:
        return self.offset + 6 if self.explicit else self.offset + 4

    @property
    def value_at(self) -> int:
        return self.offset + 8  # short explicit VRs and implicit VR alike


def find(data: bytes | bytearray, tag: tuple[int, int]) -> Element | None:
    """The first element with `tag` after the preamble (a tag search, so it can be wrong)."""
    pos = bytes(data).find(struct.pack("<HH", *tag), PREAMBLE)
    if pos < 0 or pos + 8 > len(data):
        return None
    vr = bytes(data[pos + 4 : pos + 6])
    return Element(pos, vr.isalpha() and vr.isupper())


def set_us(data: bytearray, tag: tuple[int, int], value: int) -> bool:
    el = find(data, tag)
    if el is None or el.value_at + 2 > len(data):
        return False
    struct.pack_into("<H", data, el.value_at, value)
    return True


def set_length(data: bytearray, el: Element, length: int) -> None:
    if el.explicit and data[el.offset + 4 : el.offset + 6] in (b"OB", b"OW", b"SQ", b"UN"):
        struct.pack_into("<I", data, el.offset + 8, length & 0xFFFFFFFF)
    elif el.explicit:
        struct.pack_into("<H", data, el.length_at, length & 0xFFFF)
    else:
        struct.pack_into("<I", data, el.length_at, length & 0xFFFFFFFF)


def _random_element(rng: random.Random, data: bytearray) -> Element | None:
    """An element header near a random offset in the first 4 KiB (where headers are)."""
    for _ in range(20):
        pos = rng.randrange(PREAMBLE, max(PREAMBLE + 1, min(len(data) - 8, 4096)))
        if data[pos] % 2 == 0 and data[pos + 1] == 0 and data[pos + 2 : pos + 4] != b"\0\0":
            return find(data, struct.unpack_from("<HH", data, pos))
    return None


# --- mutations: each takes a seed file's bytes and returns new bytes ----------------------------


def truncate(rng: random.Random, data: bytearray) -> bytes:
    return bytes(data[: rng.randrange(len(data))])


def flip_bytes(rng: random.Random, data: bytearray) -> bytes:
    for _ in range(rng.randint(1, 8)):
        head = rng.random() < 0.8  # most flips where the headers are
        pos = rng.randrange(min(len(data), 4096) if head else len(data))
        data[pos] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
    return bytes(data)


def absurd_length(rng: random.Random, data: bytearray) -> bytes:
    el = _random_element(rng, data)
    if el is not None:
        set_length(data, el, rng.choice((UNDEFINED - 1, UNDEFINED, 1 << 31, 0xFFFF, 3, 1)))
    return bytes(data)


def unterminated_sequence(rng: random.Random, data: bytearray) -> bytes:
    """The file ends inside a sequence of undefined length (items never delimited)."""
    sq = struct.pack("<HH2sHI", 0x0008, 0x1115, b"SQ", 0, UNDEFINED)
    items = ITEM + struct.pack("<I", UNDEFINED) + struct.pack("<HH2sH", 8, 0x50, b"SH", 2) + b"AB"
    return bytes(data) + sq + items * rng.randint(1, 5)


def deep_nesting(rng: random.Random, data: bytearray) -> bytes:
    """Sequences nested hundreds deep, inserted before the pixel data."""
    depth = rng.choice((65, 200, 1000))
    opening = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, UNDEFINED) + ITEM
    opening += struct.pack("<I", UNDEFINED)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    el = find(data, TAG_PIXEL_DATA)
    at = el.offset if el is not None else len(data)
    return bytes(data[:at]) + opening * depth + closing * depth + bytes(data[at:])


def wrong_transfer_syntax(rng: random.Random, data: bytearray) -> bytes:
    el = find(data, TAG_TRANSFER_SYNTAX)
    if el is None or not el.explicit:
        return flip_bytes(rng, data)
    old = struct.unpack_from("<H", data, el.length_at)[0]
    new = rng.choice(TRANSFER_SYNTAXES)
    struct.pack_into("<H", data, el.length_at, len(new))
    return bytes(data[: el.value_at]) + new + bytes(data[el.value_at + old :])


def pixel_data_size(rng: random.Random, data: bytearray) -> bytes:
    """Pixel data whose declared length or actual bytes are too short or too long."""
    el = find(data, TAG_PIXEL_DATA)
    if el is None:
        return truncate(rng, data)
    change = rng.choice((-4096, -2, -1, 1, 2, 4096, 1 << 20))
    if rng.random() < 0.5:  # the bytes change, the declared length stays
        return bytes(data[:change]) if change < 0 else bytes(data) + rng.randbytes(change)
    value_len_at = el.offset + 8 if el.explicit else el.offset + 4
    (length,) = struct.unpack_from("<I", data, value_len_at)
    if length != UNDEFINED:
        struct.pack_into("<I", data, value_len_at, max(0, length + change) & 0xFFFFFFFF)
    return bytes(data)


def image_attribute(rng: random.Random, data: bytearray) -> bytes:
    """BitsStored, BitsAllocated, Rows, Columns, SamplesPerPixel, NumberOfFrames out of range."""
    for _ in range(rng.randint(1, 3)):
        tag = rng.choice(list(IMAGE_TAGS.values()))
        value = rng.choice(ODD_US_VALUES) if rng.random() < 0.8 else rng.randrange(1 << 16)
        set_us(data, tag, value)
    frames = find(data, TAG_NUMBER_OF_FRAMES)
    if frames is not None and frames.explicit and rng.random() < 0.5:
        (length,) = struct.unpack_from("<H", data, frames.length_at)
        digits = rng.choice((b"9", b"0", b"-", b"1"))
        data[frames.value_at : frames.value_at + length] = (digits * length)[:length]
    return bytes(data)


def dicm_on_garbage(rng: random.Random, data: bytearray) -> bytes:
    body = rng.randbytes(rng.randrange(0, 64 * 1024))
    if rng.random() < 0.3:
        body = bytes(len(body)) + b"\x01" * rng.randrange(1, 8)  # zeros, not a multiple of 8
    return bytes(PREAMBLE) + b"DICM" + body


MUTATIONS: dict[str, Callable[[random.Random, bytearray], bytes]] = {
    "truncate": truncate,
    "flip": flip_bytes,
    "length": absurd_length,
    "unterminated": unterminated_sequence,
    "nested": deep_nesting,
    "syntax": wrong_transfer_syntax,
    "pixels": pixel_data_size,
    "image": image_attribute,
    "garbage": dicm_on_garbage,
}


# --- the tree ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fuzzed:
    root: Path
    files: int  # regular files written


def build(root: Path, seed: int, count: int) -> Fuzzed:
    """Write `count` fuzzed files under `root` (plus the fixed odd cases), from `seed`."""
    rng = random.Random(seed)
    seeds = seed_files()
    names = list(MUTATIONS)
    for i in range(count):
        kind = names[i % len(names)]
        source = rng.choice(seeds)
        folder = root / kind / f"{i // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = MUTATIONS[kind](rng, bytearray(source.read_bytes()))
        (folder / f"{i:05d}-{source.stem}.dcm").write_bytes(data)
    return Fuzzed(root, count + _odd_cases(root / "odd", rng))


def _odd_cases(odd: Path, rng: random.Random) -> int:
    """Empty and sparse files, odd names and symlink loops; returns the regular files written."""
    odd.mkdir(parents=True)
    (odd / "empty.dcm").write_bytes(b"")
    (odd / "only-preamble.dcm").write_bytes(bytes(PREAMBLE) + b"DICM")
    with open(odd / "sparse-dicm.dcm", "wb") as f:  # a hole of 20 MiB after DICM, then data
        f.write(bytes(PREAMBLE) + b"DICM")
        f.seek(20 * MiB)
        f.write(b"end of a sparse file\n")
    with open(odd / "sparse-tail.bin", "wb") as f:
        f.truncate(3 * MiB + 5)
    long_name = "n" * (LONG_NAME_BYTES - len(".dcm")) + ".dcm"
    (odd / long_name).write_bytes(rng.randbytes(1000))
    os.makedirs(os.path.join(os.fsencode(odd), b"latin1-\xe9\xe8"), exist_ok=True)
    with open(os.path.join(os.fsencode(odd), b"latin1-\xe9\xe8", b"caf\xe9-\xff.dcm"), "wb") as f:
        f.write(rng.randbytes(500))
    (odd / 'name with spaces, commas; and "quotes" \\ back').write_bytes(b"x" * 10)
    (odd / "newline\nin name").write_bytes(b"y" * 10)
    (odd / "loop-a").symlink_to("loop-b")
    (odd / "loop-b").symlink_to("loop-a")
    (odd / "self").symlink_to("self")
    (odd / "up").symlink_to("..")
    (odd / "dangling").symlink_to("/nonexistent/target")
    return 8 + _large_cases(odd / "large", rng)


def _large_cases(folder: Path, rng: random.Random) -> int:
    """Files over the 16 MiB the client reads up front, so the segmenter works on a sparse
    copy: many fragments (intact, cut short, an absurd fragment length, no delimiter) and a
    native frame far longer than its rows and columns say, followed by 2 MiB of garbage."""
    folder.mkdir()
    encapsulated = _seed("emri_small_jpeg_ls_lossless.dcm")
    header = encapsulated[: encapsulated.index(ITEM, encapsulated.index(b"\xe0\x7f\x10\x00")) + 8]
    fragment = ITEM + struct.pack("<I", 65536) + b"\xff\xd8" + rng.randbytes(65534)
    body = header + fragment * 300  # header ends with an empty Basic Offset Table item
    delimiter = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    absurd = bytearray(body)
    struct.pack_into("<I", absurd, len(header) + 150 * len(fragment) + 4, 0xFFFFFFF0)
    cases = {
        "fragments.dcm": body + delimiter,
        "fragments-cut.dcm": body[: -rng.randrange(1, 65536)],
        "fragments-absurd.dcm": bytes(absurd) + delimiter,
        "fragments-no-delimiter.dcm": body,
    }
    native = bytearray(_seed("CT_small.dcm"))
    el = find(native, TAG_PIXEL_DATA)
    assert el is not None
    struct.pack_into("<I", native, el.offset + 8, 18 * MiB)  # OW: 32-bit length at +8
    cases["native-long.dcm"] = bytes(native[: el.offset + 12]) + rng.randbytes(20 * MiB)
    for name, data in cases.items():
        (folder / name).write_bytes(data)
    return len(cases)


def _seed(name: str) -> bytes:
    return next(p for p in seed_files() if p.name == name).read_bytes()


# --- the check ---------------------------------------------------------------------------------


def backup_and_check(vault: Vault, src: Path, out: Path) -> dict[str, Any]:
    """Back `src` up with the CLI and restore it; assert the robustness contract; return the
    summary."""
    result = vault.run("backup", str(src), "--json")
    assert result.rc in (0, EXIT_PARTIAL), f"exit {result.rc}: {result.err[-3000:]}"
    assert "Traceback" not in result.err
    summary = result.doc
    skipped = {e.split(": ", 1)[0] for e in summary["errors"]}
    vault.ok("restore", "latest", "--target", str(out))
    want = {k: v for k, v in tree_state(src).items() if str(src / k) not in skipped}
    got = tree_state(restored(out, src))
    assert got == want
    return summary
