"""Shared benchmark helpers: a small seeded corpus of real DICOM, tree digests, measured child
processes (wall time, CPU time, peak RSS), a `restic` runner for same-run comparisons, and the
one home of a benchmark's report: its work folder, Markdown tables and JSON document.

The corpus is built only from DICOM files that ship with pydicom and pydicom-data; every copy has
a new SOPInstanceUID, and native images get deterministic pixel changes so copies do not dedupe.
`Dicomvault` and `Restic` drive the two command lines the same way, each with its own repository
and cache. Nothing here imports the engine or the client: it measures them from the outside.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import blake3
import numpy as np
import pydicom
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from benchmarks.clikit import cli_env

CORPUS_VERSION = 2  # bump when the copies' bytes change for the same seed and size
STAMP = "corpus.json"
NOISE_FRACTION = 1 / 200  # share of pixel samples whose lowest bit is flipped in each copy
MB = 1_000_000  # benchmark rates are decimal megabytes per second, as restic and dd print them
_DTYPES = {8: "u1", 16: "u2", 32: "u4"}


# --- sources -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    path: Path
    kind: str  # "native" (pixel bytes we may perturb), "compressed" or "other" (header only)
    size: int


def _candidate_paths() -> list[Path]:
    from pydicom.data import get_testdata_files

    paths = [Path(p) for p in get_testdata_files()]
    try:
        import data_store

        paths += [p for p in (Path(data_store.__file__).parent / "data").rglob("*")]
    except ImportError:
        pass
    return sorted({p for p in paths if p.is_file()})


def _kind(ds: FileDataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None)
    if ts is None or "SOPInstanceUID" not in ds:
        return None  # cannot save it like the original, or cannot give it a new identity
    if "PixelData" not in ds:
        return "other"
    return "compressed" if ts.is_compressed else "native"


def dicom_sources() -> list[Source]:
    """Every distinct, readable Part 10 file from pydicom's test files and pydicom-data."""
    seen: set[bytes] = set()
    out: list[Source] = []
    for path in _candidate_paths():
        data = path.read_bytes()
        digest = hashlib.sha256(data).digest()
        if digest in seen:
            continue
        seen.add(digest)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kind = _kind(pydicom.dcmread(path))
        except (InvalidDicomError, ValueError, TypeError, AttributeError, OSError):
            continue
        if kind is not None:
            out.append(Source(path, kind, len(data)))
    return [s for s in out if _copyable(s)]


# --- copies --------------------------------------------------------------------------------------


def _uid(seed: int, source: Path, copy: int, what: str) -> str:
    return generate_uid(entropy_srcs=[str(seed), source.name, str(copy), what])


def _perturb_pixels(ds: FileDataset, rng: np.random.Generator, flip: bool) -> None:
    """Flip the lowest bit of a few samples and, if asked, mirror every frame top to bottom."""
    raw = bytes(ds.PixelData)
    bits = _int(ds, "BitsAllocated", 8)
    dtype = np.dtype(_DTYPES.get(bits, "u1"))
    little = ds.file_meta.TransferSyntaxUID.is_little_endian
    dtype = dtype.newbyteorder("<" if little else ">")
    usable = len(raw) - len(raw) % dtype.itemsize
    arr = np.frombuffer(raw[:usable], dtype=dtype).copy()
    if flip:
        _flip_rows(ds, arr)
    if arr.size:
        idx = rng.integers(0, arr.size, max(1, int(arr.size * NOISE_FRACTION)))
        arr[idx] ^= 1
    ds.PixelData = arr.tobytes() + raw[usable:]


def _int(ds: FileDataset, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):  # test files include deliberately bad values
        return 0


def _flip_rows(ds: FileDataset, arr: np.ndarray) -> None:
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    spp, frames = _int(ds, "SamplesPerPixel", 1), _int(ds, "NumberOfFrames", 1)
    n = rows * cols * spp * frames
    if not n or arr.size < n or _int(ds, "BitsAllocated", 8) not in _DTYPES:
        return  # packed bits, subsampled colour or odd values: noise alone varies the copy
    planes = frames * spp if _int(ds, "PlanarConfiguration", 0) else frames
    view = arr[:n].reshape(planes, rows, -1)
    view[:] = view[:, ::-1, :].copy()


def copy_bytes(source: Source, seed: int, copy: int) -> bytes:
    """Copy number `copy` of `source`, deterministically: new UIDs, and new pixels if native."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(source.path)
        sop = _uid(seed, source.path, copy, "sop")
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        if "SeriesInstanceUID" in ds:
            ds.SeriesInstanceUID = _uid(seed, source.path, copy, "series")
        if source.kind == "native":
            rng = np.random.default_rng([seed, copy, int.from_bytes(sop.encode()[-8:], "big")])
            _perturb_pixels(ds, rng, flip=copy % 2 == 1)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def _copyable(source: Source) -> bool:
    """Whether pydicom can write this file back (a few test files are deliberately odd)."""
    try:
        copy_bytes(source, 0, 0)
        copy_bytes(source, 0, 1)  # odd copies also mirror the frames
    except Exception:  # any pydicom failure just leaves the file out of the corpus
        return False
    return True


# --- corpus --------------------------------------------------------------------------------------


@dataclass
class Corpus:
    root: Path
    seed: int
    target_bytes: int
    files: int = 0
    bytes: int = 0
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    sources: int = 0
    build_s: float = 0.0

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "root": str(self.root)}


def _plan(
    sources: Sequence[Source], target: int, seed: int, compressed_copies: int
) -> Iterator[tuple[int, Source]]:
    """Yield (copy, source) in seeded-shuffled rounds until the sizes reach `target` bytes.

    Shuffling each round keeps a corpus smaller than one round a fair sample of every kind.
    """
    total, copy = 0, 0
    while total < target:
        round_ = [s for s in sources if s.kind == "native" or copy < compressed_copies]
        if not round_:
            return
        random.Random(f"{seed}/{copy}").shuffle(round_)
        for s in round_:
            yield copy, s
            total += s.size
            if total >= target:
                return
        copy += 1


def _stamp(seed: int, target: int, compressed_copies: int) -> dict[str, object]:
    return {
        "version": CORPUS_VERSION,
        "seed": seed,
        "target_bytes": target,
        "compressed_copies": compressed_copies,
        "pydicom": pydicom.__version__,
    }


def build_corpus(
    root: Path, target_bytes: int, seed: int = 0, compressed_copies: int = 1
) -> Corpus:
    """Build (or reuse, if its stamp matches) a tree of about `target_bytes` of DICOM in `root`.

    Layout `root/tree/copy-NNNN/<source name>`: one folder per round, like one study per folder.
    Compressed and non-image files are copied at most `compressed_copies` times, because only
    their headers change and further copies would mostly dedupe.
    """
    stamp, tree = _stamp(seed, target_bytes, compressed_copies), root / "tree"
    stamp_path = root / STAMP
    if stamp_path.exists() and tree.is_dir():
        saved = json.loads(stamp_path.read_text())
        if saved.get("stamp") == stamp:
            return Corpus(**{**saved["corpus"], "root": tree})
    shutil.rmtree(tree, ignore_errors=True)
    start = time.perf_counter()
    sources = dicom_sources()
    corpus = Corpus(tree, seed, target_bytes, sources=len(sources))
    for copy, source in _plan(sources, target_bytes, seed, compressed_copies):
        dest = tree / f"copy-{copy:04d}" / _flat_name(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        size = dest.write_bytes(copy_bytes(source, seed, copy))
        kind = corpus.by_kind.setdefault(source.kind, {"files": 0, "bytes": 0})
        kind["files"], kind["bytes"] = kind["files"] + 1, kind["bytes"] + size
        corpus.files, corpus.bytes = corpus.files + 1, corpus.bytes + size
    corpus.build_s = round(time.perf_counter() - start, 2)
    stamp_path.write_text(json.dumps({"stamp": stamp, "corpus": corpus.as_json()}, indent=1))
    return corpus


def _flat_name(source: Source) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", source.path.name)
    return name if name.lower().endswith(".dcm") else name + ".dcm"


def corpus_files(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*") if p.is_file())


# --- digests and sizes ---------------------------------------------------------------------------


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path → BLAKE3 hex of every regular file under `root`."""
    out: dict[str, str] = {}
    for path in corpus_files(root):
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        h.update_mmap(path)
        out[str(path.relative_to(root))] = h.hexdigest()
    return out


def diff_digests(want: dict[str, str], got: dict[str, str]) -> list[str]:
    """Human-readable differences between two tree digests; empty when bit-exact."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = sorted(p for p in set(want) & set(got) if want[p] != got[p])
    return (
        [f"missing {p}" for p in missing]
        + [f"unexpected {p}" for p in extra]
        + [f"differs {p}" for p in changed]
    )


def dir_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / MB / seconds if seconds > 0 else float("inf")


# --- measured child processes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunStats:
    """One child process: wall seconds, CPU seconds and peak resident set size."""

    wall_s: float
    user_s: float
    sys_s: float
    max_rss_bytes: int
    stdout: str

    @property
    def cpu_share(self) -> float:
        """CPU seconds per wall second: 2.0 means two cores busy throughout."""
        return (self.user_s + self.sys_s) / self.wall_s if self.wall_s else 0.0


class CommandFailed(RuntimeError):
    pass


GNU_TIME = Path("/usr/bin/time")
_RUSAGE_WRAPPER = """
import json, resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(json.dumps([r.ru_utime, r.ru_stime, r.ru_maxrss]))
sys.exit(rc)
"""


def _parse_gnu_time(text: str) -> tuple[float, float, int]:
    def field_(label: str) -> str:
        m = re.search(rf"^\s*{re.escape(label)}: (.+)$", text, re.M)
        return m.group(1) if m else "0"

    rss_kib = int(field_("Maximum resident set size (kbytes)"))
    return float(field_("User time (seconds)")), float(field_("System time (seconds)")), rss_kib


def _measure_cmd(cmd: Sequence[str], report: Path) -> list[str]:
    if GNU_TIME.exists():
        return [str(GNU_TIME), "-v", "-o", str(report), *cmd]
    return [sys.executable, "-c", _RUSAGE_WRAPPER, str(report), *cmd]


def _read_report(report: Path) -> tuple[float, float, int]:
    text = report.read_text()
    if GNU_TIME.exists():
        return _parse_gnu_time(text)
    user, sys_, rss_kib = json.loads(text)
    return user, sys_, rss_kib


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None) -> RunStats:
    """Run `cmd` to completion; raise `CommandFailed` with its stderr if it exits non-zero."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage"
        start = time.perf_counter()
        proc = subprocess.run(
            _measure_cmd(cmd, report), env=env, capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise CommandFailed(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        user, sys_, rss_kib = _read_report(report)
    return RunStats(wall, user, sys_, rss_kib * 1024, proc.stdout)


def run_quiet(cmd: Sequence[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CommandFailed(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def drop_caches() -> None:
    """Write dirty pages and empty the page cache (root only), so reads come from the disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def machine_load() -> dict[str, float]:
    """Load average and CPU pressure (share of time some task waited for a CPU, last 60 s).

    Other work on the machine slows every figure; the report prints these so a reader can tell.
    """
    out = {"loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0])}
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        out["cpu_pressure_avg60_pct"] = float(re.search(r"avg60=([\d.]+)", some).group(1))  # type: ignore[union-attr]
    except (OSError, AttributeError, IndexError):
        pass
    return out


def can_drop_caches() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


# --- the tools compared ---------------------------------------------------------------------------


class Tool(Protocol):
    """A backup program driven through its command line, with one repository of its own."""

    name: str
    repo: Path

    def init(self) -> None: ...

    def backup(self, tree: Path) -> RunStats: ...

    def restore(self, target: Path) -> RunStats: ...


PASSWORD = "throughput-benchmark"


@dataclass
class Dicomvault:
    """The `dicomvault` CLI (this interpreter, `-m client`) with its own index cache folder."""

    repo: Path
    cache: Path
    name: str = "dicomvault"
    last_backup: dict[str, object] = field(default_factory=dict)

    def _env(self) -> dict[str, str]:
        return cli_env(
            DICOMVAULT_REPO=str(self.repo),
            DICOMVAULT_PASSWORD=PASSWORD,
            DICOMVAULT_CACHE_DIR=str(self.cache),
            DICOMVAULT_TEST_CHEAP_KDF="1",  # init's 8 MiB, 1 pass: KDF cost is not measured
        )

    def _cmd(self, command: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "client", command, "--json", *args]

    def init(self) -> None:
        run_quiet(self._cmd("init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"), self._env())

    def backup(self, tree: Path) -> RunStats:
        stats = run_measured(self._cmd("backup", str(tree)), self._env())
        self.last_backup = json.loads(stats.stdout)
        return stats

    def restore(self, target: Path) -> RunStats:
        return run_measured(self._cmd("restore", "latest", "--target", str(target)), self._env())

    def check(self) -> RunStats:
        """`check --read-data`: every pack read, every blob opened and checked against its id."""
        return run_measured(self._cmd("check", "--read-data"), self._env())


def restic_binary() -> str | None:
    return shutil.which("restic")


def restic_version() -> str:
    binary = restic_binary()
    return run_quiet([binary, "version"]).strip() if binary else ""


@dataclass
class Restic:
    """restic with its own cache folder; compression is restic's default for new repositories."""

    binary: str
    repo: Path
    cache: Path
    name: str = "restic"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RESTIC_REPOSITORY": str(self.repo),
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_CACHE_DIR": str(self.cache),
        }

    def init(self) -> None:
        run_quiet([self.binary, "init"], self._env())

    def backup(self, tree: Path) -> RunStats:
        return run_measured([self.binary, "backup", "--quiet", str(tree)], self._env())

    def restore(self, target: Path) -> RunStats:
        cmd = [self.binary, "restore", "latest", "--quiet", "--target", str(target)]
        return run_measured(cmd, self._env())

    def check(self) -> RunStats:
        return run_measured([self.binary, "check", "--read-data", "--quiet"], self._env())


@contextmanager
def work_folder(given: Path | None, prefix: str) -> Iterator[Path]:
    """`given` (kept afterwards), or a new temporary folder removed afterwards."""
    work = given or Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if given is None:
            shutil.rmtree(work, ignore_errors=True)


def print_report(
    doc: dict[str, Any], render: Callable[[dict[str, Any]], str], to: Path | None
) -> int:
    """A benchmark's last step: print `doc` rendered as Markdown, write it as JSON to `to` (if
    given); the exit code, 0."""
    print(render(doc))
    if to is not None:
        to.parent.mkdir(parents=True, exist_ok=True)
        to.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


def md_table(header: Sequence[str], align: str, rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table's lines; `align` has a letter a column: l (left) or r (right)."""
    assert len(align) == len(header), (header, align)
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    cells = ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return ["| " + " | ".join(header) + " |", rule, *cells]


def report_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The parser of `python -m benchmarks.NAME` whose `main` ends in `run_and_report`: its
    `--out` (the JSON document, default $TMPDIR/dv-NAME/NAME.json, outside the checkout) and
    `--work` options; the benchmark adds its own."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc.split("\n")[0])
    default = Path(tempfile.gettempdir()) / f"dv-{name}" / f"{name}.json"
    p.add_argument("--out", type=Path, default=default,
                   help=f"JSON results file (default: $TMPDIR/dv-{name}/{name}.json)")  # fmt: skip
    p.add_argument("--work", type=Path, help="work folder (default: a temp folder, removed)")
    return p


def run_and_report(
    args: argparse.Namespace,
    prefix: str,
    run: Callable[[argparse.Namespace, Path], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
) -> int:
    """A benchmark's `main` after parsing: `run` in `args.work` (default: a temp folder, removed
    afterwards), write the JSON document to `args.out` and print it rendered as Markdown."""
    with work_folder(args.work, prefix) as work:
        doc = run(args, work)
    return print_report(doc, render, args.out)
