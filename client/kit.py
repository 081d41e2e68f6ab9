"""The recovery kit: one printed page that, with the passphrase, brings a repository back.

Owns the kit's content (version 1: repository id, every site's URL, the restore token, the
wrapped key object, the date), its split into QR codes (`segno`) and a one-page PDF (`fpdf2`),
and reading the QR codes back from a photo, a scan or the PDF (`zxing-cpp`; a PDF is first
rasterised with Debian's `pdftoppm`). Does no cryptography: the key object stays wrapped by
its passphrase. Must not write anything: `client.cli_key` decides where a kit goes.

QR payload: ASCII text `DVKIT1 <i>/<n> <check> <piece>`, where the pieces joined are the kit's
JSON and `check` the first 16 hex digits of BLAKE3 of that JSON, so a kit whose codes were
printed from two different kits, or one altered past the codes' own error correction, is
refused as damaged.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from engine.errors import FormatError, KitError, UsageError
from engine.keyobject import KeyObject

KIT_VERSION = 1
PIECE_SIZE = 700  # characters of kit JSON per QR code: version ~20 at level M, easy to scan
RASTER_DPI = 200
_PART = re.compile(r"^DVKIT1 (\d+)/(\d+) ([0-9a-f]{16}) (.*)$", re.S)


@dataclass(frozen=True, slots=True)
class Kit:
    repository: str
    sites: tuple[str, ...]
    token: str
    key_object: bytes
    created: str  # YYYY-MM-DD

    def to_json(self) -> str:
        doc = {
            "kit": KIT_VERSION,
            "repository": self.repository,
            "sites": list(self.sites),
            "token": self.token,
            "key_object": self.key_object.decode(),
            "created": self.created,
        }
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Kit:
        try:
            doc = json.loads(text)
            if doc["kit"] != KIT_VERSION:
                raise KitError(f"recovery kit version {doc['kit']!r} is not supported")
            key_object = str(doc["key_object"]).encode()
            KeyObject.decode(key_object)
            sites = tuple(str(s) for s in doc["sites"])
            return cls(str(doc["repository"]), sites, str(doc["token"]), key_object,
                       str(doc["created"]))  # fmt: skip
        except (ValueError, KeyError, TypeError, FormatError) as e:
            raise KitError(f"the recovery kit's content is malformed: {e}") from None

    def qr_payloads(self) -> list[str]:
        text = self.to_json()
        check = blake3.blake3(text.encode()).hexdigest()[:16]
        pieces = [text[i : i + PIECE_SIZE] for i in range(0, len(text), PIECE_SIZE)]
        return [f"DVKIT1 {i}/{len(pieces)} {check} {p}" for i, p in enumerate(pieces, 1)]


def from_payloads(payloads: list[str]) -> Kit:
    """The kit the QR codes carry; `KitError` if none is a kit's, some are missing, or the
    pieces do not add up to what the codes' check says."""
    parts: dict[str, dict[int, str]] = {}
    totals: dict[str, int] = {}
    for text in payloads:
        m = _PART.match(text)
        if m is None:
            continue
        index, total, check, piece = int(m[1]), int(m[2]), m[3], m[4]
        parts.setdefault(check, {})[index] = piece
        totals[check] = total
    if not parts:
        raise KitError("no recovery-kit QR code could be read (damaged, or not a kit)")
    if len(parts) > 1:
        raise KitError("QR codes of more than one recovery kit: scan one kit at a time")
    ((check, pieces),) = parts.items()
    lacking = sorted(set(range(1, totals[check] + 1)) - set(pieces))
    if lacking:
        raise KitError(f"QR codes {lacking} of {totals[check]} could not be read (damaged?)")
    text = "".join(pieces[i] for i in range(1, totals[check] + 1))
    if blake3.blake3(text.encode()).hexdigest()[:16] != check:
        raise KitError("the recovery kit's QR codes do not match their check: damaged or altered")
    return Kit.from_json(text)


INSTRUCTIONS = (
    "Keep this page in the safe. With it and the passphrase, which is NOT on this page, the "
    "practice gets its images back even if its own machines and one data centre are gone.",
    "1. On any computer, install dicomvault (pip install dicomvault, or the practice's copy).",
    "2. Scan or photograph this page, then run:  dicomvault key import-kit PHOTO_OR_PDF",
    "   It reads the QR codes and writes the client configuration with every site below.",
    "3. Restore:  dicomvault restore latest --target FOLDER   and type the passphrase.",
    "   The first site that answers is used; if one is down the next is tried by itself.",
    "4. Studies only:  dicomvault find ...  and  dicomvault restore --study UID --to-pacs ...",
    "Anyone holding this page AND the passphrase can read every image: store them apart.",
)


def render_pdf(kit: Kit, out: Path) -> None:
    """One A4 page: the text of the kit and its QR codes, readable by eye and by camera."""
    import segno
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(False)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 9, "dicomvault recovery kit", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    for label, value in _fields(kit):
        pdf.multi_cell(0, 4.5, f"{label}: {value}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    pdf.set_font("Courier", "", 6)
    pdf.multi_cell(0, 3, "key object: " + kit.key_object.decode(), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    pdf.set_font("Helvetica", "", 8.5)
    for line in INSTRUCTIONS:
        pdf.multi_cell(0, 4.2, line, new_x="LMARGIN", new_y="NEXT")
    payloads = kit.qr_payloads()
    size = 85.0 if len(payloads) <= 2 else 60.0
    top, x = pdf.get_y() + 3, 10.0
    for text in payloads:
        if x + size > 200:
            x, top = 10.0, top + size + 3
        if top + size > 290:
            raise KitError("the kit does not fit on one page: too many sites or a long token")
        png = io.BytesIO()
        segno.make(text, error="m", mode="byte").save(png, kind="png", scale=8, border=4)
        png.seek(0)
        pdf.image(png, x=x, y=top, w=size, h=size)
        x += size + 5
    pdf.output(str(out))


def _fields(kit: Kit) -> list[tuple[str, str]]:
    return [
        ("created", kit.created),
        ("repository id", kit.repository),
        *((f"site {i}", url) for i, url in enumerate(kit.sites, 1)),
        ("restore token", kit.token),
    ]


def read_payloads(path: Path) -> list[str]:
    """The text of every QR code in an image (PNG, JPEG, …) or a PDF."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if path.read_bytes()[:5] == b"%PDF-":
        with tempfile.TemporaryDirectory(prefix="dicomvault-kit-") as tmp:
            return [t for page in _rasterise(path, Path(tmp)) for t in _decode_image(page)]
    return _decode_image(path)


def _rasterise(pdf: Path, folder: Path) -> list[Path]:
    exe = shutil.which("pdftoppm")
    if exe is None:
        raise UsageError(
            "reading a PDF kit needs pdftoppm (Debian: poppler-utils); or give a photo or scan"
        )
    done = subprocess.run(
        [exe, "-r", str(RASTER_DPI), "-png", str(pdf), str(folder / "page")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise KitError(f"{pdf}: cannot be read as a PDF: {done.stderr.strip()}")
    return sorted(folder.glob("page*.png"))


def _decode_image(path: Path) -> list[str]:
    import zxingcpp
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            codes: list[Any] = zxingcpp.read_barcodes(image.convert("L"))
    except (UnidentifiedImageError, OSError) as e:
        raise KitError(f"{path}: not an image or PDF: {e}") from None
    return [c.text for c in codes if c.valid]
