"""A seeded, realistic practice archive built from the real images in pydicom-data, and the
day-by-day events that happen to it (new studies, corrections, exports, re-routes, duplicates,
reorganisations, transcodes, deletions).

Every instance is derived from a real image (crops, flips, resampling, gain, low noise — never
random bytes) and written with pydicom under realistic, varying headers. The generator knows what
each event adds, so it reports the genuinely new bytes and an ideal engine's lower bound (new
pixels with the best lossless codec available, new headers zstd-19). Same seed, same bytes.
Nothing here imports the engine or the client: benchmarks measure them from the outside.

    python -m benchmarks.corpus --out DIR --scale 1 --seed 0 --days 5
"""

from __future__ import annotations

import argparse
import copy
import functools
import io
import json
import os
import random
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import zstandard
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

CORPUS_VERSION = 1  # bump when the bytes change for the same seed and scale
MB = 1_000_000
PRIVATE_CREATOR = "DVBENCH PRACTICE 1.0"
DCMTK = (Path("/usr/bin/storescp"), Path("/usr/bin/storescu"))
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # ends encapsulated Pixel Data
ZSTD_FRAME_LIMIT = 1 << 20  # zstd-19 is tried on frames up to this size (it never wins above)
EVENT_TYPES = (
    "new",
    "header_fix",
    "anon_export",
    "reroute",
    "duplicate",
    "reorganise",
    "transcode",
    "delete",
)
# Which events happen on day d (cycled after the last row): every type by day 5.
SCHEDULE = (
    ("new", "header_fix", "duplicate"),
    ("new", "reroute", "anon_export"),
    ("new", "reorganise", "delete"),
    ("new", "transcode", "header_fix"),
    ("new", "reroute", "anon_export", "reorganise", "duplicate", "delete", "transcode"),
)
FIRST = ("Anna", "Maria", "Elena", "Sofia", "Laura", "Julia", "Clara", "Ines", "Rosa", "Marta")
LAST = ("Schmidt", "Rossi", "Dubois", "Novak", "Garcia", "Jansen", "Berg", "Moreau", "Costa")
REFERRING = ("Weber^Thomas^^Dr", "Martin^Claire^^Dr", "Silva^Joao^^Dr", "Keller^Eva^^Dr")
BASE_DATE = np.datetime64("2026-03-02")
# A new instance: its dataset, its frames (raw pixels), and its codestream if it is compressed.
Instance = tuple[Dataset, list[np.ndarray], bytes | None]


# --- sources ---------------------------------------------------------------------------------


def _data_dir() -> Path:
    import data_store

    return Path(data_store.__file__).parent / "data"


@functools.cache
def template(name: str) -> Dataset:
    """A real file's dataset without its pixel data (the header we derive instances from)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(_data_dir() / f"{name}.dcm")
    del ds.PixelData
    return ds


@functools.cache
def source_pixels(name: str) -> np.ndarray:
    """A real image's pixels as float32 (stored values), read once per process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(_data_dir() / f"{name}.dcm")
        return ds.pixel_array.astype(np.float32)


# --- pixel derivation ------------------------------------------------------------------------


def _axis_weights(n_in: int, n_out: int, lo: float, hi: float) -> tuple[np.ndarray, ...]:
    pos = np.linspace(lo * (n_in - 1), hi * (n_in - 1), n_out, dtype=np.float32)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def resample(a: np.ndarray, rows: int, cols: int, window: tuple[float, ...]) -> np.ndarray:
    """Separable bilinear resampling of the window (top, bottom, left, right as fractions)."""
    top, bottom, left, right = window
    r0, r1, fr = _axis_weights(a.shape[0], rows, top, bottom)
    c0, c1, fc = _axis_weights(a.shape[1], cols, left, right)
    extra = (1,) * (a.ndim - 2)
    fr, fc = fr.reshape(-1, 1, *extra), fc.reshape(1, -1, *extra)
    tmp = a[r0] * (1 - fr) + a[r1] * fr
    return tmp[:, c0] * (1 - fc) + tmp[:, c1] * fc


def _window(rng: np.random.Generator, zoom: float) -> tuple[float, ...]:
    """A crop window covering 1/zoom of each axis, at a seeded position."""
    span = min(1.0, 1.0 / zoom)
    top, left = rng.uniform(0, 1 - span, 2) if span < 1 else (0.0, 0.0)
    return (top, top + span, left, left + span)


def _finish(
    img: np.ndarray, rng: np.random.Generator, sigma: float, lo: int, hi: int, dtype: str
) -> np.ndarray:
    """Add low sensor-like noise, clip to the stored range and quantise."""
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(np.rint(img + noise), lo, hi).astype(dtype)


def mammo_view(rng: np.random.Generator, rows: int, cols: int, view: int) -> np.ndarray:
    """A 14-bit mammogram-like frame: real CR anatomy cropped, mirrored by laterality, resampled."""
    src = source_pixels("RG1_UNCI") * np.float32(0.5)  # 15 → 14 bits stored
    img = resample(src, rows, cols, _window(rng, rng.uniform(1.0, 1.15)))
    if view % 2:
        img = img[:, ::-1]
    img *= np.float32(rng.uniform(0.95, 1.05))
    return _finish(img, rng, 6.0, 0, 16383, "<u2")


def tomo_frames(rng: np.random.Generator, rows: int, cols: int, frames: int) -> np.ndarray:
    """Tomosynthesis slices: one anatomy, each slice slightly refocused and with its own noise."""
    src = source_pixels("RG3_UNCI") * np.float32(16)  # 10 → 14 bits stored
    base = _window(rng, rng.uniform(1.0, 1.1))
    out = np.empty((frames, rows, cols), "<u2")
    for k in range(frames):
        shrink = 0.004 * k
        win = (base[0] + shrink, base[1] - shrink, base[2] + shrink, base[3] - shrink)
        out[k] = _finish(resample(src, rows, cols, win), rng, 8.0, 0, 16383, "<u2")
    return out


def slice_series(
    rng: np.random.Generator, name: str, size: int, count: int, sigma: float
) -> Iterator[np.ndarray]:
    """Cross-sectional slices (CT, MR): a smooth zoom and drift through the volume, low noise."""
    src = source_pixels(name)
    lo, hi = int(src.min()), int(src.max())
    dtype = "<i2" if lo < 0 else "<u2"
    phase = rng.uniform(0, np.pi)
    for k in range(count):
        zoom = 1.0 + 0.12 * np.sin(phase + k / max(count, 1) * np.pi)
        img = resample(src, size, size, _window(rng, zoom))
        shift = (int(rng.integers(-3, 4)), int(rng.integers(-3, 4)))
        yield _finish(np.roll(img, shift, axis=(0, 1)), rng, sigma, lo, hi, dtype)


def us_image(rng: np.random.Generator) -> np.ndarray:
    """An RGB ultrasound frame: the real sector image, shifted, re-gained, with speckle."""
    src = source_pixels("US1_UNCI")
    img = resample(src, src.shape[0], src.shape[1], _window(rng, rng.uniform(1.0, 1.08)))
    img *= np.float32(rng.uniform(0.9, 1.1))
    speckle = rng.standard_normal(img.shape[:2], dtype=np.float32)[..., None] * np.float32(3)
    img = np.where(img > 4, img + speckle, img)  # the black surround stays black
    return np.clip(np.rint(img), 0, 255).astype("u1")


def j2k_encode(img: np.ndarray) -> bytes:
    """Reversible (lossless) JPEG 2000 codestream, as DICOM's JPEG 2000 Lossless stores it."""
    return bytes(imagecodecs.jpeg2k_encode(img, level=0, codecformat="J2K", reversible=True))


# --- the ideal engine's lower bound ----------------------------------------------------------


def best_frame_size(frame: np.ndarray) -> int:
    """Smallest lossless encoding of one frame: min(JPEG-LS, JPEG-XL, zstd-19 on small frames)."""
    word = frame.view(np.uint16) if frame.dtype.kind == "i" else frame
    sizes = [frame.nbytes]
    for encode in (
        lambda a: imagecodecs.jpegls_encode(a),
        lambda a: imagecodecs.jpegxl_encode(a, lossless=True, effort=1),
    ):
        try:
            sizes.append(len(encode(word)))
        except Exception:  # a codec refusing a layout just drops out of the minimum
            continue
    if frame.nbytes <= ZSTD_FRAME_LIMIT:
        sizes.append(len(zstandard.ZstdCompressor(level=19).compress(frame.tobytes())))
    return min(sizes)


@dataclass
class DayLog:
    """What one day's events wrote, and what an ideal engine would have to send for it."""

    day: int
    events: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    files_written: int = 0
    bytes_written: int = 0
    new_pixel_bytes: int = 0
    new_header_bytes: int = 0
    ideal_pixel_bytes: int = 0
    ideal_header_bytes: int = 0
    archive_files: int = 0
    archive_bytes: int = 0
    build_s: float = 0.0
    _headers: list[bytes] = field(default_factory=list, repr=False)

    @property
    def new_bytes(self) -> int:
        return self.new_pixel_bytes + self.new_header_bytes

    @property
    def ideal_bytes(self) -> int:
        return self.ideal_pixel_bytes + self.ideal_header_bytes

    def as_json(self) -> dict[str, object]:
        doc = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        return {**doc, "new_bytes": self.new_bytes, "ideal_bytes": self.ideal_bytes}


# --- studies and instances -------------------------------------------------------------------


@dataclass
class Study:
    key: str
    kind: str
    folder: str  # relative to the archive root
    files: list[str]  # relative to `folder`
    patient: dict[str, str]
    native: bool = True


@dataclass(frozen=True)
class Profile:
    """How much of each modality a scale means: counts scale linearly, series shrink below 0.25."""

    scale: float

    def n(self, base: float) -> int:
        return max(1, round(base * self.scale))

    def series(self, base: int) -> int:
        return max(2, round(base * min(1.0, self.scale * 4)))

    @property
    def pixel(self) -> float:
        """Linear factor on image sizes: full size from scale 0.25, a quarter below."""
        return 1.0 if self.scale >= 0.25 else 0.25

    def dim(self, n: int) -> int:
        return max(16, int(n * self.pixel) // 16 * 16)


# Day 0 at scale 1 (≈ 375 MB, 292 files): a breast-imaging and general practice.
DAY0_STUDIES = {"MG": 2, "DBT": 1, "CT": 1, "MR": 2, "US": 2, "CRJ2K": 1, "MRJ2K": 1}
# Each later day (≈ 100 MB at scale 1): screening mammography, ultrasound, and CT or MR.
DAILY_STUDIES = ({"MG": 1, "US": 1, "MR": 1}, {"MG": 1, "US": 1, "CTS": 1})


def _header_of(data: bytes, pixel: bytes) -> bytes:
    """Everything but the pixel data value, which every file here carries as its last element."""
    tail = SEQUENCE_DELIMITER if data.endswith(pixel + SEQUENCE_DELIMITER) else b""
    if not data.endswith(pixel + tail):
        raise ValueError("Pixel Data is not the last element")
    return data[: len(data) - len(pixel) - len(tail)] + tail


class Archive:
    """The practice archive under `root`, its studies, and the events that change it."""

    def __init__(self, root: Path, scale: float = 1.0, seed: int = 0, measure: bool = True):
        self.root, self.seed, self.measure = root, seed, measure
        self.profile = Profile(scale)
        self.studies: dict[str, Study] = {}
        self.logs: list[DayLog] = []
        self._next_study = 0
        self._hop = "dcmtk" if all(p.exists() for p in DCMTK) else "pydicom"
        self._zstd = zstandard.ZstdCompressor(level=19)

    @property
    def hop(self) -> str:
        """How re-routed studies travel: a real dcmtk storescu → storescp hop, or pydicom."""
        return self._hop

    def rng(self, *parts: object) -> np.random.Generator:
        words = [self.seed, *(int.from_bytes(str(p).encode()[:8], "little") for p in parts)]
        return np.random.default_rng(words)

    def uid(self, *parts: object) -> UID:
        return generate_uid(entropy_srcs=[f"dvbench/{self.seed}", *map(str, parts)])

    # days

    def build_day0(self) -> DayLog:
        log = self._begin(0)
        for kind, count in DAY0_STUDIES.items():
            for _ in range(self.profile.n(count)):
                self._new_study(
                    kind, log, days_ago=int(self.rng("age", self._next_study).integers(30, 900))
                )
        log.events.append(f"archive of {len(self.studies)} studies")
        log.kinds.append("new")
        return self._end(log)

    def apply_day(self, day: int) -> DayLog:
        log = self._begin(day)
        for kind in SCHEDULE[(day - 1) % len(SCHEDULE)]:
            EVENTS[kind](self, log)
            log.kinds.append(kind)
        return self._end(log)

    def _begin(self, day: int) -> DayLog:
        self._t0 = time.perf_counter()
        return DayLog(day)

    def _end(self, log: DayLog) -> DayLog:
        if log._headers and self.measure:
            log.ideal_header_bytes = len(self._zstd.compress(b"".join(log._headers)))
        log._headers.clear()
        files = [p for p in self.root.rglob("*") if p.is_file()]
        log.archive_files, log.archive_bytes = len(files), sum(p.stat().st_size for p in files)
        log.build_s = round(time.perf_counter() - self._t0, 2)
        self.logs.append(log)
        return log

    # recording

    def _write(self, path: Path, data: bytes, log: DayLog) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        log.files_written += 1
        log.bytes_written += len(data)

    def _new_header(self, header: bytes, log: DayLog) -> None:
        log.new_header_bytes += len(header)
        log._headers.append(header)

    def _new_frames(self, frames: list[np.ndarray], log: DayLog) -> None:
        for f in frames:
            log.new_pixel_bytes += f.nbytes
            log.ideal_pixel_bytes += best_frame_size(f) if self.measure else 0

    def _new_stream(self, stream: bytes, log: DayLog) -> None:
        """Compressed pixel data: an ideal engine keeps the codestream bit for bit, as it is."""
        log.new_pixel_bytes += len(stream)
        log.ideal_pixel_bytes += len(stream)

    # new studies

    def _patient(self, key: str) -> dict[str, str]:
        r = random.Random(f"{self.seed}/patient/{key}")
        birth = BASE_DATE - np.timedelta64(r.randint(35 * 365, 80 * 365), "D")
        return {
            "name": f"{r.choice(LAST)}^{r.choice(FIRST)}",
            "id": f"P{r.randint(100000, 999999)}",
            "birth": str(birth).replace("-", ""),
            "sex": "F" if r.random() < 0.85 else "M",
            "referring": r.choice(REFERRING),
            "accession": f"A{r.randint(10**7, 10**8 - 1)}",
        }

    def _new_study(self, kind: str, log: DayLog, days_ago: int = 0) -> Study:
        key = f"s{self._next_study:04d}"
        self._next_study += 1
        date = str(BASE_DATE + np.timedelta64(log.day - days_ago, "D")).replace("-", "")
        patient = {**self._patient(key), "date": date, "study_uid": self.uid(key, "study")}
        folder = f"archive/{date[:4]}/{date[4:6]}/{date[6:]}/{patient['id']}_{patient['accession']}"
        study = Study(key, kind, folder, [], patient, native=not kind.endswith("J2K"))
        for series, ds_list in enumerate(BUILDERS[kind](self, study), start=1):
            for number, (ds, frames, stream) in enumerate(ds_list, start=1):
                self._stamp(ds, study, series, number)
                name = f"{series:03d}_{ds.Modality}/IM{number:05d}.dcm"
                self._store(study, name, ds, frames, stream, log)
        self.studies[key] = study
        return study

    def _store(
        self,
        study: Study,
        name: str,
        ds: Dataset,
        frames: list[np.ndarray],
        stream: bytes | None,
        log: DayLog,
    ) -> None:
        data = to_bytes(ds)
        self._write(self.root / study.folder / name, data, log)
        study.files.append(name)
        self._new_header(_header_of(data, ds.PixelData), log)
        if stream is not None:
            self._new_stream(stream, log)
        else:
            self._new_frames(frames, log)

    def _stamp(self, ds: Dataset, study: Study, series: int, number: int) -> None:
        """Identity and realistic per-instance variation, plus a private block."""
        p, r = study.patient, random.Random(f"{self.seed}/{study.key}/{series}/{number}")
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = p["name"], p["id"], p["birth"]
        ds.PatientSex, ds.ReferringPhysicianName = p["sex"], p["referring"]
        ds.AccessionNumber, ds.StudyInstanceUID, ds.StudyID = p["accession"], p["study_uid"], "1"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = p["date"]
        ds.StudyTime = f"{8 + int(study.key[1:]) % 10:02d}{r.randint(0, 59):02d}00"
        ds.ContentTime = f"{ds.StudyTime[:4]}{r.randint(0, 59):02d}.{r.randint(0, 999999):06d}"
        ds.SeriesInstanceUID = self.uid(study.key, series, "series")
        ds.SOPInstanceUID = self.uid(study.key, series, number, "sop")
        ds.SeriesNumber, ds.InstanceNumber = series, number
        ds.InstitutionName, ds.StationName = "Praxis am Markt Radiologie", f"MOD{series:02d}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        block = ds.private_block(0x0029, PRIVATE_CREATOR, create=True)
        block.add_new(0x01, "LO", f"protocol {r.randint(1, 40)}")
        block.add_new(0x02, "DS", f"{r.uniform(0.5, 9.5):.3f}")
        block.add_new(0x03, "OB", r.randbytes(64))


def to_bytes(ds: Dataset) -> bytes:
    """A Part 10 file with the dataset's transfer syntax; Pixel Data is the last element."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _instance(name: str, img: np.ndarray, *, frames: int = 1, j2k: bool = False) -> Instance:
    """A new dataset from template `name` carrying `img` (frames stacked on axis 0 if > 1)."""
    ds = copy.deepcopy(template(name))
    if "DerivationDescription" in ds:
        del ds.DerivationDescription
    shape = img.shape[1:] if frames > 1 else img.shape
    ds.Rows, ds.Columns = shape[0], shape[1]
    if frames > 1:
        ds.NumberOfFrames = frames
    frame_list = list(img) if frames > 1 else [img]
    if j2k:
        stream = j2k_encode(img)
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([stream])
        ds["PixelData"].VR = "OB"
        return ds, frame_list, bytes(ds.PixelData)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = img.tobytes()
    ds["PixelData"].VR = "OW" if img.dtype.itemsize > 1 else "OB"
    return ds, frame_list, None


def _as_mammo(ds: Dataset, view: int, tomo: bool) -> Dataset:
    ds.Modality = "MG"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.13.1.3" if tomo else "1.2.840.10008.5.1.4.1.1.1.2"
    ds.ImageLaterality = "LR"[view % 2]
    ds.ViewPosition = ("CC", "MLO")[view // 2 % 2]
    ds.BodyPartExamined, ds.BitsStored, ds.HighBit = "BREAST", 14, 13
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.StudyDescription = "Tomosynthesis bilateral" if tomo else "Screening mammography"
    return ds


def _build_mg(a: Archive, s: Study) -> Iterator[list[Instance]]:
    rows, cols = a.profile.dim(3328), a.profile.dim(2560)
    out = []
    for view in range(4):
        ds, frames, st = _instance("RG1_UNCI", mammo_view(a.rng(s.key, view), rows, cols, view))
        out.append((_as_mammo(ds, view, tomo=False), frames, st))
    yield out


def _build_dbt(a: Archive, s: Study) -> Iterator[list[Instance]]:
    rows, cols, n = a.profile.dim(1664), a.profile.dim(1280), a.profile.series(10)
    out = []
    for view in range(2):
        stack = tomo_frames(a.rng(s.key, view), rows, cols, n)
        ds, frames, st = _instance("RG3_UNCI", stack, frames=n)
        out.append((_as_mammo(ds, view, tomo=True), frames, st))
    yield out


def _build_slices(
    source: str, tmpl: str, base: int, size: int, sigma: float, j2k: bool = False
) -> Callable[[Archive, Study], Iterator[list[Instance]]]:
    """Series of slices from `source`'s pixels under `tmpl`'s header (one series if long)."""

    def build(a: Archive, s: Study) -> Iterator[list[Instance]]:
        count, dim = a.profile.series(base), a.profile.dim(size)
        for series in range(1 if base > 40 else 2):
            imgs = slice_series(a.rng(s.key, series), source, dim, count, sigma)
            yield [_instance(tmpl, img, j2k=j2k) for img in imgs]

    return build


def _build_us(a: Archive, s: Study) -> Iterator[list[Instance]]:
    rng = a.rng(s.key)
    yield [_instance("US1_UNCI", us_image(rng)) for _ in range(a.profile.series(12))]


def _build_cr_j2k(a: Archive, s: Study) -> Iterator[list[Instance]]:
    rows, cols = a.profile.dim(1760), a.profile.dim(1760)
    out = []
    for view in range(2):
        rng = a.rng(s.key, view)
        src = source_pixels("RG3_UNCI")
        img = resample(src, rows, cols, _window(rng, rng.uniform(1.0, 1.1)))
        out.append(_instance("RG3_J2KR", _finish(img, rng, 1.5, 0, 1023, "<u2"), j2k=True))
    yield out


BUILDERS: dict[str, Callable[[Archive, Study], Iterator[list[Instance]]]] = {
    "MG": _build_mg,
    "DBT": _build_dbt,
    "CT": _build_slices("693_UNCI", "693_UNCI", 160, 512, 4.0),
    "CTS": _build_slices("693_UNCI", "693_UNCI", 41, 512, 4.0),
    "MR": _build_slices("MR2_UNCI", "MR2_UNCI", 20, 512, 3.0),
    "US": _build_us,
    "CRJ2K": _build_cr_j2k,
    "MRJ2K": _build_slices("MR2_UNCI", "MR2_J2KR", 8, 512, 3.0, j2k=True),
}


# --- day events ------------------------------------------------------------------------------


def _pick(a: Archive, log: DayLog, what: str, ok: Callable[[Study], bool] = bool) -> Study | None:
    """A seeded choice among the live studies that `ok` accepts."""
    keys = sorted(k for k, s in a.studies.items() if ok(s))
    if not keys:
        return None
    return a.studies[random.Random(f"{a.seed}/{log.day}/{what}/{len(log.events)}").choice(keys)]


def _read(path: Path) -> FileDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _rewrite(a: Archive, study: Study, log: DayLog, change: Callable[[FileDataset], None]) -> None:
    """Re-encode every file of `study` in place after `change`; the headers are new content."""
    for name in study.files:
        path = a.root / study.folder / name
        ds = _read(path)
        change(ds)
        data = to_bytes(ds)
        a._write(path, data, log)
        a._new_header(_header_of(data, ds.PixelData), log)


def _prune(root: Path, folder: Path) -> None:
    """Remove folders left empty by a move or a deletion, up to `root`."""
    while folder != root and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def ev_new(a: Archive, log: DayLog) -> None:
    made = [
        a._new_study(kind, log)
        for kind, count in DAILY_STUDIES[log.day % 2].items()
        for _ in range(a.profile.n(count))
    ]
    log.events.append(f"new: {', '.join(f'{s.key} {s.kind}' for s in made)}")


def ev_header_fix(a: Archive, log: DayLog) -> None:
    study = _pick(a, log, "fix")
    assert study is not None
    fixed = study.patient["name"] + "^M"  # the middle name the modality left out

    def change(ds: FileDataset) -> None:
        ds.PatientName = fixed
        ds.PatientBirthDate = study.patient["birth"][:6] + "15"

    _rewrite(a, study, log, change)
    study.patient = {**study.patient, "name": fixed}
    log.events.append(f"header fix: {study.key} ({len(study.files)} files)")


def _anonymise(a: Archive, key: str, ds: FileDataset) -> None:
    uids = {t: a.uid("anon", ds[t].value) for t in ("StudyInstanceUID", "SeriesInstanceUID")}
    sop = a.uid("anon", ds.SOPInstanceUID)
    ds.remove_private_tags()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = f"ANON^{key}", f"ANON{key}", ""
    ds.ReferringPhysicianName = ds.AccessionNumber = ds.InstitutionName = ""
    ds.PatientIdentityRemoved, ds.DeidentificationMethod = "YES", "DVBENCH basic profile"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["StudyInstanceUID"], uids["SeriesInstanceUID"]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop


def ev_anon_export(a: Archive, log: DayLog) -> None:
    src = _pick(a, log, "anon", lambda s: s.folder.startswith("archive/"))
    assert src is not None
    key = f"{src.key}x{log.day}"
    study = Study(key, src.kind, f"exports/teaching/{key}", [], {**src.patient}, src.native)
    for i, name in enumerate(src.files):
        ds = _read(a.root / src.folder / name)
        _anonymise(a, key, ds)
        data = to_bytes(ds)
        study.files.append(f"{i:05d}.dcm")
        a._write(a.root / study.folder / study.files[-1], data, log)
        a._new_header(_header_of(data, ds.PixelData), log)
    a.studies[key] = study
    log.events.append(f"anonymised export: {src.key} → {study.folder}")


def ev_reroute(a: Archive, log: DayLog) -> None:
    src = _pick(a, log, "hop", lambda s: s.native and s.kind in ("CT", "CTS", "MR", "US", "MG"))
    assert src is not None
    key = f"{src.key}r{log.day}"
    folder = a.root / "incoming" / f"router-d{log.day}" / src.key
    folder.mkdir(parents=True, exist_ok=True)
    paths = [a.root / src.folder / n for n in src.files]
    if a.hop == "dcmtk":
        _dcmtk_hop(paths, folder)
    else:
        for path in paths:
            (folder / path.name).write_bytes(_pydicom_hop(_read(path)))
    study = Study(key, src.kind, str(folder.relative_to(a.root)), [], {**src.patient}, True)
    for path in sorted(folder.iterdir()):
        data, ds = path.read_bytes(), _read(path)
        log.files_written, log.bytes_written = log.files_written + 1, log.bytes_written + len(data)
        a._new_header(_header_of(data, ds.PixelData), log)
        study.files.append(path.name)
    a.studies[key] = study
    log.events.append(f"re-routed ({a.hop}, explicit → implicit VR): {src.key} → {study.folder}")


def _pydicom_hop(ds: FileDataset) -> bytes:
    """What a DICOM router does to an instance: new meta group, implicit VR, same pixels."""
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = UID("1.2.276.0.7230010.3.0.3.6.7")
    ds.file_meta.ImplementationVersionName = "OFFIS_DCMTK_367"
    ds.file_meta.SourceApplicationEntityTitle = "PACS"
    return to_bytes(ds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dcmtk_hop(paths: list[Path], out: Path) -> None:
    """A real hop: dcmtk storescu → storescp accepting implicit VR little endian only."""
    port = _free_port()
    scp = subprocess.Popen(
        [str(DCMTK[0]), "-aet", "ROUTER", "+xi", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        subprocess.run(
            [str(DCMTK[1]), "-aet", "PACS", "-aec", "ROUTER", "127.0.0.1", str(port)]
            + [str(p) for p in paths],
            check=True,
            capture_output=True,
        )
    finally:
        scp.terminate()
        scp.wait(10)


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"storescp did not listen on port {port}")


def ev_duplicate(a: Archive, log: DayLog) -> None:
    src = _pick(a, log, "dup", lambda s: s.folder.startswith("archive/"))
    assert src is not None
    key = f"{src.key}d{log.day}"
    folder = f"incoming/resent-d{log.day}/{src.patient['accession']}"
    shutil.copytree(a.root / src.folder, a.root / folder)
    log.files_written += len(src.files)
    log.bytes_written += sum((a.root / folder / n).stat().st_size for n in src.files)
    a.studies[key] = Study(key, src.kind, folder, list(src.files), {**src.patient}, src.native)
    log.events.append(f"duplicate: {src.key} resent to {folder}")


def ev_reorganise(a: Archive, log: DayLog) -> None:
    moved = []
    for _ in range(a.profile.n(2)):
        study = _pick(a, log, "move", lambda s: s.folder.startswith("archive/2"))
        if study is None:
            break
        _move_study(a, study)
        moved.append(study.key)
        log.events.append(f"reorganised: {study.key} → {study.folder}")


def _move_study(a: Archive, study: Study) -> None:
    """Move a study under archive/by-patient/ and name each file by its SOP Instance UID."""
    p = study.patient
    old = a.root / study.folder
    study.folder = f"archive/by-patient/{p['id']}/{p['date']}_{p['accession']}"
    new = a.root / study.folder
    new.mkdir(parents=True, exist_ok=True)
    names = []
    for name in study.files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sop = pydicom.dcmread(old / name, stop_before_pixels=True).SOPInstanceUID
        os.rename(old / name, new / f"{sop}.dcm")
        names.append(f"{sop}.dcm")
        _prune(old, (old / name).parent)
    study.files = names
    _prune(a.root, old)


def ev_transcode(a: Archive, log: DayLog) -> None:
    study = _pick(a, log, "j2k", lambda s: s.native and s.kind in ("CT", "CTS", "MR"))
    assert study is not None
    for name in study.files:
        path = a.root / study.folder / name
        ds = _read(path)
        stream = j2k_encode(ds.pixel_array)
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([stream])
        ds["PixelData"].VR = "OB"
        data = to_bytes(ds)
        a._write(path, data, log)
        a._new_header(_header_of(data, ds.PixelData), log)
        a._new_stream(bytes(ds.PixelData), log)
    study.native = False
    log.events.append(f"transcoded to JPEG 2000 lossless: {study.key} ({len(study.files)} files)")


def ev_delete(a: Archive, log: DayLog) -> None:
    study = _pick(a, log, "delete")
    assert study is not None
    shutil.rmtree(a.root / study.folder)
    _prune(a.root, (a.root / study.folder).parent)
    del a.studies[study.key]
    log.events.append(f"deleted: {study.key} ({study.kind}, {len(study.files)} files)")


EVENTS: dict[str, Callable[[Archive, DayLog], None]] = {
    "new": ev_new,
    "header_fix": ev_header_fix,
    "anon_export": ev_anon_export,
    "reroute": ev_reroute,
    "duplicate": ev_duplicate,
    "reorganise": ev_reorganise,
    "transcode": ev_transcode,
    "delete": ev_delete,
}


# --- command line ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.corpus", description=__doc__)
    p.add_argument("--out", type=Path, required=True, help="folder to build the practice in")
    p.add_argument("--scale", type=float, default=1.0, help="1 ≈ 375 MB on day 0 (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--days", type=int, default=5, help="days of events after day 0 (default 5)")
    p.add_argument("--no-measure", action="store_true", help="skip the ideal-engine codecs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root = args.out / "practice"
    if root.exists():
        shutil.rmtree(root)
    archive = Archive(root, args.scale, args.seed, measure=not args.no_measure)
    logs = [archive.build_day0()] + [archive.apply_day(d) for d in range(1, args.days + 1)]
    for log in logs:
        print(
            f"day {log.day}: {log.archive_files} files, {log.archive_bytes / MB:.1f} MB; "
            f"new {log.new_bytes / MB:.1f} MB, ideal {log.ideal_bytes / MB:.1f} MB; "
            + "; ".join(log.events)
        )
    doc = {"version": CORPUS_VERSION, "seed": args.seed, "scale": args.scale, "hop": archive.hop}
    (args.out / "corpus.json").write_text(
        json.dumps({**doc, "days": [log.as_json() for log in logs]}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
